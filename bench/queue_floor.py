"""The database floor under bench/queue.py: the statements one bare Procrastinate job makes
(defer, fetch, finish) against the statements one SoundForge stage job makes (its row created
with the queue job, fetch, start, completion, finish), each sequence run by pgbench as one
transaction per job, with no Python in the loop, on a fresh database, in one run.

The statements are the real ones (Procrastinate's `fetch_job`/`finish_job`, SoundForge's named
queries), their parameters filled with pgbench expressions; each client uses a queue of its
own so every fetch finds the job it deferred. The analysis stage stands for the three (the
download's completion also creates two rows, the separation's writes stems).

    python bench/queue_floor.py [--clients 4] [--seconds 8] [--rounds 3]
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/queue_floor.py`, this folder comes first on sys.path and `queue.py`
# beside this file would shadow the standard library's `queue`.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import glob
import re
import statistics
import subprocess
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory

from procrastinate import sql as procrastinate_sql
from psycopg import sql

from bench.queue import bench_database
from soundforge.db import connect
from soundforge.migrations import migrate
from soundforge.models import Stage
from soundforge.queries import query

TRACK_ID = uuid.UUID(int=1)
QUEUE = "'bench' || :client_id"
_PARAM = re.compile(r"%\((\w+)\)s")


def pgbench_binary() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))
    if not found:
        raise SystemExit("pgbench not found (Debian: the postgresql-<version> package has it)")
    return found[-1]


def statement(text: str, values: dict[str, str], gset: str | None = None) -> str:
    """One line of a pgbench script: `text` with each %(name)s replaced by its expression."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    filled = _PARAM.sub(lambda match: values[match.group(1)], code)
    line = " ".join(filled.split()).rstrip(";")
    return f"{line} \\gset {gset}" if gset else f"{line};"  # \gset ends a command too


def scripts(database_url: str) -> dict[str, str]:
    fetch = {"queues": f"ARRAY[{QUEUE}]", "worker_id": "NULL"}
    finish = {"job_id": ":queue_id", "status": "'succeeded'", "delete_job": "false"}
    with connect(database_url, autocommit=True) as conn:
        ours = {name: query(name, table=Stage.ANALYZE.table).as_string(conn) for name in
                ("defer_job", "insert_queued_analysis_job", "start_job",
                 "complete_analysis_job")}  # fmt: skip
    bare = [
        statement(ours["defer_job"], {"queue": QUEUE, "task_name": "'bench.noop'",
                                       "queueing_lock": "NULL", "args": "'{}'::jsonb"}),
        statement(procrastinate_sql.queries["fetch_job"], fetch, gset="queue_"),
        statement(procrastinate_sql.queries["finish_job"], finish),
    ]  # fmt: skip
    stage = [
        statement(ours["insert_queued_analysis_job"], {
            "id": "gen_random_uuid()", "track_id": f"'{TRACK_ID}'", "queue": QUEUE,
            "task_name": "'soundforge.analyze'", "queueing_lock": "NULL",
            "args": "'{}'::jsonb"}, gset="row_"),
        statement(procrastinate_sql.queries["fetch_job"], fetch, gset="queue_"),
        statement(ours["start_job"], {"id": ":row_id", "status": "'processing'",
                              "procrastinate_job_id": ":queue_id", "attempts": "1"},
                  gset="started_"),
        statement(ours["complete_analysis_job"], {
            "id": ":row_id", "lock_version": ":started_lock_version",
            "result_id": "gen_random_uuid()", "results": "'{}'::jsonb",
            "features": "'{}'::jsonb", "tempo": "120.0", "key": "'C major'", "energy": "0.1",
            "spectral_centroid": "1000.0", "spectral_rolloff": "2000.0",
            "zero_crossing_rate": "0.05"}),
        statement(procrastinate_sql.queries["finish_job"], finish),
    ]  # fmt: skip
    return {"bare": "\n".join(bare) + "\n", "stage": "\n".join(stage) + "\n"}


def prepare(database_url: str) -> None:
    """A track with a completed download, so the start statement finds its audio."""
    with connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO tracks (id, title, inserted_at, updated_at) "
            "VALUES (%s, 'bench', now(), now())", (TRACK_ID,),
        )  # fmt: skip
        conn.execute(
            "INSERT INTO download_jobs (id, track_id, status, progress, output_path, "
            "inserted_at, updated_at) VALUES (%s, %s, 'completed', 100, 'downloads/x.wav', "
            "now(), now())", (uuid.uuid4(), TRACK_ID),
        )  # fmt: skip


def reset(database_url: str) -> None:
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE procrastinate_events, procrastinate_jobs, analysis_jobs "
                             "CASCADE"))  # fmt: skip
        conn.execute("VACUUM ANALYZE procrastinate_jobs")
        conn.execute("VACUUM ANALYZE analysis_jobs")


def run_pgbench(database_url: str, script: Path, clients: int, seconds: int) -> float:
    result = subprocess.run(
        [pgbench_binary(), "--no-vacuum", "--protocol=prepared", f"--client={clients}",
         f"--jobs={min(clients, os.cpu_count() or 1)}", f"--time={seconds}",
         f"--file={script}", database_url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0 or "aborted" in result.stderr:
        raise SystemExit(f"pgbench failed:\n{result.stderr}{result.stdout}")
    match = re.search(r"^tps = ([\d.]+)", result.stdout, re.MULTILINE)
    if match is None:
        raise SystemExit(f"pgbench printed no tps:\n{result.stdout}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"bare": [], "stage": []}
    with bench_database() as database_url, TemporaryDirectory() as work:
        migrate(database_url)
        prepare(database_url)
        for name, text in scripts(database_url).items():
            (Path(work) / f"{name}.pgb").write_text(text, encoding="utf-8")
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits both
            for name, measured in rates.items():
                reset(database_url)
                measured.append(run_pgbench(database_url, Path(work) / f"{name}.pgb",
                                               args.clients, args.seconds))  # fmt: skip
    ratios = [stage / bare for stage, bare in zip(rates["stage"], rates["bare"], strict=True)]
    print(f"pgbench, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    for name, label in (("bare", "bare procrastinate job "), ("stage", "soundforge stage job   ")):
        print(f"{label}: median {statistics.median(rates[name]):8.1f} jobs/s  "
              f"({', '.join(f'{rate:.0f}' for rate in rates[name])})")  # fmt: skip
    print(f"ratio (stage / bare)   : median {statistics.median(ratios):8.2f}  "
          f"({', '.join(f'{ratio:.2f}' for ratio in ratios)})")  # fmt: skip


if __name__ == "__main__":
    main()
