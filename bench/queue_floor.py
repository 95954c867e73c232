"""The database floor under bench/queue.py: the statements one bare Procrastinate job makes
(defer, fetch, finish) against the statements one SoundForge stage job makes (its row created
with the queue job, fetch, start, completion, finish), each sequence run by pgbench as one
transaction per job, with no Python in the loop, on a fresh database, in one run.

The statements are the real ones (Procrastinate's `fetch_job`/`finish_job`, SoundForge's named
queries), their parameters filled with pgbench expressions; each client uses a queue of its
own so every fetch finds the job it deferred. The analysis stage stands for the three (the
download's completion also creates two rows, the separation's writes stems). Two design
options are measured beside it: without the separate start write (the row would be moved to
its active status some other way) and without the per-change NOTIFY trigger.

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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Variant:
    """One job sequence to measure; `notify` False runs it with the stage table's NOTIFY
    trigger disabled (what the job-row bookkeeping would cost without live progress)."""

    label: str
    script: str
    notify: bool = True


def variants(database_url: str) -> list[Variant]:
    fetch = {"queues": f"ARRAY[{QUEUE}]", "worker_id": "NULL"}
    finish = {"job_id": ":queue_id", "status": "'succeeded'", "delete_job": "false"}
    with connect(database_url, autocommit=True) as conn:
        ours = {name: query(name, table=Stage.ANALYZE.table).as_string(conn) for name in
                ("defer_job", "insert_queued_analysis_job", "start_job",
                 "complete_analysis_job")}  # fmt: skip
    defer = statement(ours["defer_job"], {
        "queue": QUEUE, "task_name": "'bench.noop'", "queueing_lock": "NULL",
        "args": "'{}'::jsonb",
    })  # fmt: skip
    create = statement(ours["insert_queued_analysis_job"], {
        "id": "gen_random_uuid()", "track_id": f"'{TRACK_ID}'", "queue": QUEUE,
        "task_name": "'soundforge.analyze'", "queueing_lock": "NULL", "args": "'{}'::jsonb",
    }, gset="row_")  # fmt: skip
    fetch_job = statement(procrastinate_sql.queries["fetch_job"], fetch, gset="queue_")
    start = statement(ours["start_job"], {"id": ":row_id", "status": "'processing'",
                                          "procrastinate_job_id": ":queue_id", "attempts": "1"},
                      gset="row_")  # fmt: skip
    complete = statement(ours["complete_analysis_job"], {
        "id": ":row_id", "lock_version": ":row_lock_version", "result_id": "gen_random_uuid()",
        "results": "'{}'::jsonb", "features": "'{}'::jsonb", "tempo": "120.0",
        "key": "'C major'", "energy": "0.1", "spectral_centroid": "1000.0",
        "spectral_rolloff": "2000.0", "zero_crossing_rate": "0.05",
    })  # fmt: skip
    finish_job = statement(procrastinate_sql.queries["finish_job"], finish)
    stage = [create, fetch_job, start, complete, finish_job]
    without_start = [create, fetch_job, complete, finish_job]
    return [
        Variant("bare procrastinate job", script_text([defer, fetch_job, finish_job])),
        Variant("soundforge stage job", script_text(stage)),
        Variant("  without its start write", script_text(without_start)),
        Variant("  without NOTIFY trigger", script_text(stage), notify=False),
        Variant("  without both", script_text(without_start), notify=False),
    ]


def script_text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def set_notify(database_url: str, enabled: bool) -> None:
    action = "ENABLE" if enabled else "DISABLE"
    with connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} {} TRIGGER {}").format(
            sql.Identifier(Stage.ANALYZE.table), sql.SQL(action),
            sql.Identifier(f"{Stage.ANALYZE.table}_notify_progress"),
        ))  # fmt: skip


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
        conn.execute("TRUNCATE procrastinate_events, procrastinate_jobs, analysis_jobs CASCADE")
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
    with bench_database() as database_url, TemporaryDirectory() as work:
        migrate(database_url)
        prepare(database_url)
        measured = variants(database_url)
        rates: list[list[float]] = [[] for _ in measured]
        for _ in range(args.rounds):  # interleaved, so drift on a shared machine hits all
            for index, variant in enumerate(measured):
                script = Path(work) / f"{index}.pgb"
                script.write_text(variant.script, encoding="utf-8")
                reset(database_url)
                set_notify(database_url, variant.notify)
                rates[index].append(run_pgbench(database_url, script, args.clients,
                                                args.seconds))  # fmt: skip
                set_notify(database_url, True)
    print(f"pgbench, {args.clients} clients, {args.seconds} s x {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs; ratio = median of per-round ratios to the bare job")  # fmt: skip
    for variant, values in zip(measured, rates, strict=True):
        ratios = [value / bare for value, bare in zip(values, rates[0], strict=True)]
        print(f"{variant.label:28}: median {statistics.median(values):7.1f} jobs/s  "
              f"ratio {statistics.median(ratios):5.2f}  "
              f"({', '.join(f'{value:.0f}' for value in values)})")  # fmt: skip


if __name__ == "__main__":
    main()
