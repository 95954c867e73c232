"""Queue benchmark: bare Procrastinate no-op tasks vs SoundForge stage tasks with the engines
replaced by no-ops (so it measures the queue and the job-row bookkeeping, not audio).

SoundForge runs in two modes: as in production, each engine call in a warm engine child process
(`soundforge.engine_process`), and, as the baseline for what the child costs, with the engine
called in the worker's own thread (`InProcessEngines`, a bench-only stand-in that keeps no
cancel or time-limit guarantee). In one run, each round on a fresh database with the three
sides in a rotating order: jobs per second for each (same worker, same concurrency; timed from
the first defer to the last job's end, so every defer is counted on every side) and the
same-round ratios; the CPU each side spent per job in that window (this process, the engine
children, the database backends: a figure that, unlike jobs/s, barely moves with what else runs
on a shared machine); then defer-to-start latency p50/p95 with an idle listening worker, one job
at a time, for each (from the defer's commit to the start of the engine's work).

    python bench/queue.py [--jobs 1500] [--concurrency 4] [--latency-samples 100] [--rounds 3]

bench/queue_floor.py runs the same comparison with the SQL alone (pgbench, no Python).
"""

from __future__ import annotations

import os
import sys

# Run as `python bench/queue.py`, this folder comes first on sys.path and this file would
# shadow the standard library's `queue` (which asyncio and procrastinate import).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse
import asyncio
import contextlib
import dataclasses
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import psycopg
from procrastinate import App, PsycopgConnector
from psycopg import sql

from bench.noop_engines import AUDIO_RELPATH, STARTS_FILE
from soundforge import queue, workflow
from soundforge.app import build_app
from soundforge.db import connect
from soundforge.engine_process import EngineCall, EngineProcesses, load_factory
from soundforge.errors import ProgressCallback
from soundforge.migrations import migrate
from soundforge.models import Stage
from soundforge.runtime import Runtime, set_runtime
from soundforge.settings import Settings, load_settings
from soundforge.sources import TrackMetadata
from soundforge.storage import Storage, download_relpath

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
started_at: dict[str, float] = {}


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    name = f"sf_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def worker_running(app: App, concurrency: int) -> Iterator[None]:
    holder: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with app.open_async():
            task = asyncio.create_task(app.run_worker_async(
                concurrency=concurrency, install_signal_handlers=False,
                fetch_job_polling_interval=5.0, shutdown_graceful_timeout=10,
            ))  # fmt: skip
            ready.set()
            await holder["stop"].wait()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    ready.wait()
    time.sleep(0.5)  # the listener is up
    try:
        yield
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(30)


def wait_until(condition: Callable[[], bool], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark jobs did not finish")
        time.sleep(0.02)


def count_done(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def started(key: str) -> Callable[[], bool]:
    return lambda: key in started_at


def _process_cpu_s(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of a timed window, by where they were spent."""

    worker: float  # this process: the worker's threads and the defers
    engines: float  # the engine children
    database: float  # the bench database's backends

    @property
    def total(self) -> float:
        return self.worker + self.engines + self.database

    def per_job_ms(self, jobs: int) -> CpuSplit:
        return CpuSplit(*(1000 * value / jobs for value in dataclasses.astuple(self)))


class CpuMeter:
    """CPU seconds a timed window cost: this process (the worker and the defers), its engine
    children (alive, or ended and reaped meanwhile) and the bench database's backends. Unlike
    jobs/s it barely moves with what else runs on a shared machine."""

    def __init__(self, conn: psycopg.Connection[Any], children: Callable[[], list[int]]):
        self.conn, self.children = conn, children
        times = os.times()
        self.reaped_start = times.children_user + times.children_system
        self.start = self._sample()

    def _sample(self) -> tuple[float, dict[int, float], dict[int, float]]:
        times = os.times()
        own = times.user + times.system + times.children_user + times.children_system
        backends = [row["pid"] for row in self.conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")]  # fmt: skip
        return own, self._cpu(self.children()), self._cpu(backends)

    @staticmethod
    def _cpu(pids: list[int]) -> dict[int, float]:
        return {pid: cpu for pid in pids if (cpu := _process_cpu_s(pid)) is not None}

    def seconds(self) -> CpuSplit:
        (own_start, children_start, backends_start), (own, children, backends) = (
            self.start, self._sample())  # fmt: skip
        reaped = os.times()  # reaped children's whole lives are in `own`: moved to theirs
        engines = sum(cpu - children_start.get(pid, 0.0) for pid, cpu in children.items())
        engines -= sum(cpu for pid, cpu in children_start.items() if pid not in children)
        engines_reaped = reaped.children_user + reaped.children_system - self.reaped_start
        return CpuSplit(
            worker=own - own_start - engines_reaped,
            engines=engines + engines_reaped,
            database=sum(cpu - backends_start.get(pid, 0.0) for pid, cpu in backends.items()),
        )  # fmt: skip


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


# -- bare Procrastinate ---------------------------------------------------------------------


def bare_app(database_url: str) -> App:
    """A plain Procrastinate app with one sync no-op task (SoundForge's tasks are sync too)."""
    app = App(connector=PsycopgConnector(conninfo=database_url, min_size=1, max_size=8))

    @app.task(name="bench.noop", queue="download")
    def noop(key: str = "") -> None:
        if key:
            started_at[key] = time.perf_counter()

    return app


def bench_bare(
    database_url: str, jobs: int, concurrency: int, samples: int
) -> tuple[float, list[float], CpuSplit]:
    started_at.clear()  # keys repeat from round to round
    app = bare_app(database_url)
    with connect(database_url, autocommit=True) as conn, worker_running(app, concurrency):
        # Timed: each job's whole life, from its defer (the same SQL path SoundForge uses)
        # to its end, with the worker running meanwhile.
        meter = CpuMeter(conn, list)
        start = time.perf_counter()
        for _ in range(jobs):
            queue.defer(conn, "bench.noop", "download", {})
        wait_until(lambda: count_done(conn) >= jobs)
        elapsed = time.perf_counter() - start
        cpu_s = meter.seconds()
        latencies = []
        for index in range(samples):
            key = f"bare-{index}"
            queue.defer(conn, "bench.noop", "download", {"key": key})
            deferred = time.perf_counter()  # committed: the NOTIFY is on its way
            wait_until(started(key))
            latencies.append(started_at[key] - deferred)
            time.sleep(0.02)
        conn.execute("DELETE FROM procrastinate_events; DELETE FROM procrastinate_jobs")
    return jobs / elapsed, latencies, cpu_s.per_job_ms(jobs)


# -- SoundForge stage tasks with no-op engines ------------------------------------------------


NOOP_FACTORY = "bench.noop_engines:noop_engines"


class InProcessEngines(EngineProcesses):
    """Bench only: the engine called in the worker's thread, as before engine child processes
    (the baseline of what a child costs per job; nothing here can stop a running engine)."""

    def __init__(self, settings: Settings, factory: str) -> None:
        super().__init__(settings, factory)
        self.engines = load_factory(factory)(settings)

    def start(self, count: int, warm_stages: Iterable[Stage] | None = None) -> None:
        self.engines.warm_up(warm_stages or ())

    def run(
        self,
        call: EngineCall,
        progress: ProgressCallback,
        should_abort: Callable[[], bool],
        *,
        limit_s: float | None = None,
        limit_message: str = "time limit exceeded",
    ) -> Any:
        engine: Callable[..., Any] = getattr(self.engines, call.name)
        if call.name == "separate":
            return engine(*call.args, progress, should_abort)
        return engine(*call.args, progress)


@dataclasses.dataclass
class InProcessRuntime(Runtime):
    """Bench only: a runtime whose engine calls run in the worker's thread."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._in_process = InProcessEngines(self.settings, self.engine_factory)

    @property
    def engine_processes(self) -> EngineProcesses:
        return self._in_process


def warm_up(processes: EngineProcesses, count: int) -> None:
    """`count` engine calls at once, so that every child has started and answered (a worker's
    children warm up while it registers; the bench times warm children, not their start)."""
    call = EngineCall("analyze", (Path(os.devnull),))
    threads = [threading.Thread(target=processes.run, args=(call, _ignore, _never))
               for _ in range(count)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _ignore(percent: float) -> None:
    pass


def _never() -> bool:
    return False


def started_in_child(key: str, starts: Path) -> Callable[[], bool]:
    def check() -> bool:
        for line in starts.read_text().splitlines():
            name, _, at = line.partition(" ")
            started_at[name] = float(at)
        return key in started_at

    return check


def bench_soundforge(database_url: str, jobs: int, concurrency: int, samples: int,
                     *, in_process: bool) -> tuple[float, list[float], CpuSplit]:  # fmt: skip
    with TemporaryDirectory() as store:
        settings = load_settings(database_url=database_url, storage_path=Path(store))
        storage = Storage(store)
        audio_relpath = download_relpath(uuid.uuid4(), "wav")
        with storage.atomic_write(audio_relpath) as handle:
            handle.write(b"\0" * 2048)
        starts = Path(store) / "starts.txt"
        starts.touch()
        os.environ[AUDIO_RELPATH], os.environ[STARTS_FILE] = audio_relpath, str(starts)
        runtime_class = InProcessRuntime if in_process else Runtime
        runtime = runtime_class(settings, NOOP_FACTORY)
        runtime.engine_processes.start(concurrency)  # one per slot, as `soundforge worker` has
        warm_up(runtime.engine_processes, concurrency)
        set_runtime(runtime)
        app = build_app(settings)
        # Tracks go through all three stages: jobs/3 tracks make `jobs` stage tasks. Timed as
        # for the bare side: from the imports (each defers its download) until every stage
        # ended, so every defer, including the fan-out's, is inside the window on both sides.
        tracks = jobs // 3
        options = workflow.PipelineOptions()

        def metadata(index: int) -> TrackMetadata:
            return TrackMetadata(title=f"t{index}", artist=None, album=None,
                                 album_art_url=None, duration=1, spotify_id=None,
                                 spotify_url=None, origin="/dev/null")  # fmt: skip

        with connect(database_url, autocommit=True) as conn:
            with worker_running(app, concurrency):
                meter = CpuMeter(conn, runtime.engine_processes.pids)
                start = time.perf_counter()
                for index in range(tracks):
                    workflow.import_track(conn, metadata(index), options)
                wait_until(lambda: count_done(conn) >= tracks * 3)
                elapsed = time.perf_counter() - start
                cpu_s = meter.seconds()
                latencies = []
                quick = workflow.PipelineOptions(stems=False, analysis=False)
                for index in range(samples):
                    imported = workflow.import_track(conn, metadata(tracks + index), quick)
                    deferred = time.perf_counter()  # committed: the NOTIFY is on its way
                    key = str(imported.track.id)
                    wait_until(started_in_child(key, starts))
                    latencies.append(started_at[key] - deferred)
                    time.sleep(0.02)
            failed = conn.execute(
                "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'failed'"
            ).fetchone()
            assert failed is not None and failed["n"] == 0, "stage tasks failed"
            conn.execute("DELETE FROM procrastinate_events; DELETE FROM procrastinate_jobs")
        runtime.close()
        set_runtime(None)
    return tracks * 3 / elapsed, latencies, cpu_s.per_job_ms(tracks * 3)


SIDES = ("bare", "child", "in-process")


def run_side(
    side: str, database_url: str, args: argparse.Namespace
) -> tuple[float, list[float], CpuSplit]:
    if side == "bare":
        return bench_bare(database_url, args.jobs, args.concurrency, args.latency_samples)
    return bench_soundforge(database_url, args.jobs, args.concurrency, args.latency_samples,
                            in_process=side == "in-process")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--latency-samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="which to run, of " + ", ".join(SIDES))  # fmt: skip
    args = parser.parse_args()
    sides = tuple(side for side in SIDES if side in args.sides.split(","))
    rates: dict[str, list[float]] = {side: [] for side in sides}
    latencies: dict[str, list[float]] = {side: [] for side in sides}
    cpu_ms: dict[str, list[CpuSplit]] = {side: [] for side in sides}
    for round_index in range(args.rounds):  # every side in every round: drift hits them all
        turn = round_index % len(sides)
        order = sides[turn:] + sides[:turn]
        with bench_database() as database_url:
            migrate(database_url)
            for side in order:
                rate, latency, cpu = run_side(side, database_url, args)
                rates[side].append(rate)
                latencies[side] += latency
                cpu_ms[side].append(cpu)
    print(f"jobs: {args.jobs}  concurrency: {args.concurrency}  rounds: {args.rounds}  "
          f"CPUs: {os.cpu_count()}  load average: {os.getloadavg()[0]:.2f}")  # fmt: skip
    labels = {"bare": "bare procrastinate no-op ", "child": "stage tasks, engine child",
              "in-process": "stage tasks, in-process "}  # fmt: skip
    for side in sides:
        values = rates[side]
        print(f"{labels[side]} : median {statistics.median(values):8.1f} jobs/s  "
              f"({', '.join(f'{value:.0f}' for value in values)})")  # fmt: skip
    for label, top, bottom, goal in (
        ("child / in-process      ", "child", "in-process", "goal >= 0.90"),
        ("child / bare            ", "child", "bare", "goal >= 0.9 x queue_floor's ratio"),
        ("in-process / bare       ", "in-process", "bare", "reference"),
    ):
        if top not in sides or bottom not in sides:
            continue
        ratios = [a / b for a, b in zip(rates[top], rates[bottom], strict=True)]
        print(f"ratio {label}: median {statistics.median(ratios):6.2f}   "
              f"({', '.join(f'{ratio:.2f}' for ratio in ratios)}; {goal})")  # fmt: skip
    for side in sides:
        splits = cpu_ms[side]
        parts = {name: statistics.median(getattr(split, name) for split in splits)
                 for name in ("worker", "engines", "database")}  # fmt: skip
        print(f"CPU per job {side:10}: median {statistics.median(s.total for s in splits):5.2f} ms"
              f"  ({', '.join(f'{split.total:.2f}' for split in splits)}); medians: worker "
              f"process {parts['worker']:.2f}, engine children {parts['engines']:.2f}, "
              f"database backends {parts['database']:.2f}")  # fmt: skip
    if "child" in sides and "in-process" in sides:
        ratios = [a.total / b.total
                  for a, b in zip(cpu_ms["in-process"], cpu_ms["child"], strict=True)]
        print(f"CPU ratio in-process / child: median {statistics.median(ratios):5.2f}   "
              f"({', '.join(f'{ratio:.2f}' for ratio in ratios)}; the jobs/s ratio on a "
              "saturated machine)")  # fmt: skip
    for side in sides:
        values = latencies[side]
        print(f"defer-to-start {side:10}: p50 {1000 * statistics.median(values):6.1f} ms  "
              f"p95 {1000 * percentile(values, 0.95):6.1f} ms  (n={len(values)})")  # fmt: skip


if __name__ == "__main__":
    main()
