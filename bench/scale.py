"""Scale-out benchmark: K `soundforge run` supervisors on this machine stand for K hosts, all
on one PostgreSQL and one S3 bucket (moto's server on loopback), each with its own local
cache, the tiny separation model and the real analysis. For K = 1 and K = --hosts it measures
tracks per minute through the whole pipeline (download, separate, analyze) and the database's
cost: PostgreSQL backend CPU seconds, transactions and rows written per stage job, the idle
load a host puts on the database (polling, heartbeats), and connections per host.

    python -m bench.scale [--hosts 2] [--tracks 4] [--seconds 3]

On a shared 2-core machine K hosts share the same two cores, so the throughput ratio says how
much the queue and the storage get in each other's way, not how GPU hosts would scale; the
database cost per job is what sizes one PostgreSQL for many hosts (see README, "Many hosts").
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psycopg

from bench.queue import bench_database
from soundforge import workflow
from soundforge.db import connect
from soundforge.engines import default_engines
from soundforge.migrations import migrate
from soundforge.settings import load_settings
from tests.audio_synth import write_test_song
from tests.support.s3_server import moto_s3, s3_env

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GROUPS_PER_HOST = 3
IDLE_S = 15.0
STAGE_JOBS_PER_TRACK = 3


def backend_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


class DatabaseMeter:
    """Samples the CPU time of every PostgreSQL backend serving the bench database (they are
    local processes), plus the database's transaction and row counters."""

    def __init__(self, database_url: str) -> None:
        self.conn = psycopg.connect(database_url, autocommit=True)
        self.dbname = self.conn.info.dbname
        self.cpu: dict[int, float] = {}
        self.connections = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.conn.info.dsn, autocommit=True) as conn:
            while not self._stop.wait(0.25):
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.dbname,)
                ).fetchall()
                with self._lock:
                    self.connections = len(rows)
                    for (pid,) in rows:
                        value = backend_cpu_s(pid)
                        if value is not None:
                            self.cpu[pid] = value

    def snapshot(self) -> dict[str, float]:
        self.conn.execute("SELECT pg_stat_clear_snapshot()")
        row = self.conn.execute(
            "SELECT xact_commit + xact_rollback, tup_inserted + tup_updated + tup_deleted"
            " FROM pg_stat_database WHERE datname = %s", (self.dbname,),
        ).fetchone()  # fmt: skip
        assert row is not None
        time.sleep(0.3)  # one more CPU sample
        with self._lock:
            cpu = sum(self.cpu.values())
        return {"xacts": float(row[0]), "rows": float(row[1]), "cpu_s": cpu}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.conn.close()


@dataclass
class Result:
    hosts: int
    tracks: int
    elapsed_s: float
    load: dict[str, float]
    idle: dict[str, float]
    connections: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tracks_per_min(self) -> float:
        return 60 * self.tracks / self.elapsed_s

    def per_job(self, name: str) -> float:
        """A counter per stage job, the idle rate over the same time taken out."""
        idle_rate = self.idle[name] / IDLE_S
        return (self.load[name] - idle_rate * self.elapsed_s) / (STAGE_JOBS_PER_TRACK * self.tracks)

    def idle_per_host_s(self, name: str) -> float:
        return self.idle[name] / IDLE_S / self.hosts


def run_hosts(hosts: int, tracks: int, song: Path, repo: Path, workdir: Path) -> Result:
    with bench_database() as database_url, moto_s3() as s3:
        migrate(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDFORGE_")}
        env.update(s3_env(s3.endpoint, s3.bucket()), DATABASE_URL=database_url,
                   SOUNDFORGE_DEMUCS_REPO=str(repo), SOUNDFORGE_SHIFTS="0",
                   SOUNDFORGE_LOG_LEVEL="WARNING",
                   SOUNDFORGE_IMPORT_ROOTS=str(song.parent))  # fmt: skip
        supervisors = []
        meter = DatabaseMeter(database_url)
        try:
            for index in range(hosts):
                name = f"{hosts}-{index}"
                host_env = {**env, "SOUNDFORGE_CACHE_PATH": str(workdir / f"cache-{name}")}
                log = open(workdir / f"host-{name}.log", "wb")  # noqa: SIM115
                supervisors.append(subprocess.Popen(
                    [sys.executable, "-m", "soundforge.cli.main", "run"], env=host_env,
                    stdout=log, stderr=subprocess.STDOUT,
                ))  # fmt: skip
            _wait_workers(meter.conn, hosts * GROUPS_PER_HOST)
            before_idle = meter.snapshot()
            time.sleep(IDLE_S)
            after_idle = meter.snapshot()
            local = load_settings(import_roots=str(song.parent))
            [metadata] = default_engines(local).expand(str(song))  # a local file
            started = time.perf_counter()
            with connect(database_url, autocommit=True) as conn:
                for _ in range(tracks):
                    workflow.import_track(conn, metadata, workflow.PipelineOptions(), force=True)
                _wait_done(conn, tracks)
            elapsed = time.perf_counter() - started
            after_load = meter.snapshot()
            connections = meter.connections - 1  # the meter's own
        finally:
            for supervisor in supervisors:
                supervisor.send_signal(signal.SIGTERM)
            for supervisor in supervisors:
                supervisor.wait(120)
            meter.close()
    return Result(hosts, tracks, elapsed, _delta(after_idle, after_load),
                  _delta(before_idle, after_idle), connections)  # fmt: skip


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def _wait_workers(conn: psycopg.Connection[Any], count: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute("SELECT count(*) FROM procrastinate_workers").fetchone()
        if row and row[0] >= count:
            return
        time.sleep(0.5)
    raise SystemExit(f"the hosts' {count} workers did not register in time")


def _wait_done(conn: psycopg.Connection[Any], tracks: int, timeout_s: float = 1800) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'completed') AS done,"
            " count(*) FILTER (WHERE status = 'failed') AS failed FROM ("
            " SELECT status FROM processing_jobs UNION ALL SELECT status FROM analysis_jobs"
            ") AS stages"
        ).fetchone()  # fmt: skip
        assert row is not None
        if row["failed"]:
            raise SystemExit("a stage failed; see the host logs")
        if row["done"] >= 2 * tracks:
            return
        time.sleep(0.2)
    raise SystemExit("the pipelines did not finish in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0, help="song length")
    args = parser.parse_args()
    from soundforge.separation import write_local_repo

    with TemporaryDirectory() as temp:
        workdir = Path(temp)
        repo = write_local_repo(workdir / "models", "htdemucs", size="tiny")
        song = write_test_song(workdir / "song.wav", seconds=args.seconds)
        results = [run_hosts(k, args.tracks, song, repo, workdir) for k in (1, args.hosts)]
    print(f"{args.tracks} tracks of {args.seconds:g} s, tiny model, S3 on loopback, "
          f"CPUs: {os.cpu_count()}")  # fmt: skip
    for result in results:
        print(f"hosts {result.hosts}: {result.tracks_per_min:6.2f} tracks/min "
              f"({result.elapsed_s:.1f} s); per stage job: PostgreSQL CPU "
              f"{1000 * result.per_job('cpu_s'):.1f} ms, {result.per_job('xacts'):.1f} xacts, "
              f"{result.per_job('rows'):.1f} rows written; idle per host: "
              f"{1000 * result.idle_per_host_s('cpu_s'):.1f} ms CPU/s, "
              f"{result.idle_per_host_s('xacts'):.1f} xacts/s; "
              f"connections {result.connections} ({result.connections / result.hosts:.0f}/host)")
    base, scaled = results
    print(f"throughput ratio ({scaled.hosts} hosts / 1): "
          f"{scaled.tracks_per_min / base.tracks_per_min:.2f}")


if __name__ == "__main__":
    main()
