"""Pipeline benchmark: N songs through the daemon (`soundforge run`: download, separation and
analysis workers) against the engines alone on the same cores.

    python -m bench.pipeline [--songs 4] [--seconds 30] [--size tiny] [--rounds 1] [--shifts 1]

Per round, interleaved: the baseline, a child process that builds the engines exactly as a worker
does (`soundforge.engines.default_engines`), warms them up, then separates and analyses each song
one after the other, timing only those calls; then the daemon, started on a fresh database and
storage, warmed up (timing starts once the supervisor reports READY), fed all N songs with
`soundforge add` and timed until every pipeline has ended. It prints songs per hour for both and
the daemon's efficiency: the sum of the engines' standalone times over the daemon's wall time
(1.0: the queue costs nothing; above 1: separation and analysis overlapped; the goal is >= 0.9).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from bench.queue import bench_database
from bench.separation import MODEL, write_song

SOUNDFORGE = [sys.executable, "-m", "soundforge.cli.main"]
DONE = ("completed", "failed")


def songs(work: Path, count: int) -> list[Path]:
    return [work / f"song-{index}.wav" for index in range(count)]


def prepare(work: Path, size: str, count: int, seconds: float) -> None:
    """Model repo and songs, in a child process (torch stays out of this one)."""
    code = (f"from soundforge.separation import write_local_repo; "
            f"write_local_repo({str(work / 'repo')!r}, {MODEL!r}, size={size!r})")
    subprocess.run([sys.executable, "-c", code], check=True)
    for index, path in enumerate(songs(work, count)):
        write_song(path, seconds, seed=index + 1)


def engines_alone(args: argparse.Namespace) -> None:
    """Child process: the engines' standalone time for the songs (JSON on stdout)."""
    from soundforge.engines import default_engines
    from soundforge.models import Stage
    from soundforge.settings import load_settings

    settings = load_settings()
    engines = default_engines(settings)
    engines.warm_up([Stage.SEPARATE, Stage.ANALYZE])
    times = []
    for index, song in enumerate(songs(args.work, args.songs)):
        started = time.perf_counter()
        engines.separate(song, args.work / "alone" / str(index), settings.demucs_model,
                         lambda percent: None, lambda: False)  # fmt: skip
        separated = time.perf_counter()
        engines.analyze(song, lambda percent: None)
        times.append((separated - started, time.perf_counter() - separated))
    print(json.dumps(times))


def environment(work: Path, database_url: str, shifts: int, tag: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update({
        "DATABASE_URL": database_url, "SOUNDFORGE_STORAGE_PATH": str(work / f"storage-{tag}"),
        "SOUNDFORGE_DEMUCS_REPO": str(work / "repo"), "SOUNDFORGE_SHIFTS": str(shifts),
        "SOUNDFORGE_POLL_INTERVAL_S": "0.5", "SOUNDFORGE_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


@contextlib.contextmanager
def notify_socket(work: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's, to hear the supervisor's READY=1."""
    path = work / "notify.sock"
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    try:
        yield listener
    finally:
        listener.close()
        path.unlink(missing_ok=True)


def wait_ready(listener: socket.socket, daemon: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    listener.settimeout(1.0)
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"soundforge run exited with {daemon.returncode} before READY")
        with contextlib.suppress(TimeoutError):
            if b"READY=1" in listener.recv(4096).split(b"\n"):
                return
    raise SystemExit("soundforge run did not report READY in time")


def daemon_round(work: Path, count: int, seconds: float, shifts: int, tag: str) -> float:
    """Wall seconds from `soundforge add` to the end of every pipeline."""
    with bench_database() as database_url:
        env = environment(work, database_url, shifts, tag)
        subprocess.run([*SOUNDFORGE, "migrate"], env=env, check=True, capture_output=True)
        with notify_socket(work) as listener, open(work / f"run-{tag}.log", "wb") as log:
            env["NOTIFY_SOCKET"] = str(work / "notify.sock")
            daemon = subprocess.Popen([*SOUNDFORGE, "run"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            try:
                wait_ready(listener, daemon, timeout_s=900)
                started = time.perf_counter()
                subprocess.run([*SOUNDFORGE, "add", *map(str, songs(work, count))],
                               env=env, check=True, capture_output=True)  # fmt: skip
                wait_done(database_url, count)
                elapsed = time.perf_counter() - started
            finally:
                daemon.send_signal(signal.SIGTERM)
                daemon.wait(timeout=120)
        check_no_failures(database_url)
    return elapsed


def wait_done(database_url: str, count: int, timeout_s: float = 7200) -> None:
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM soundforge_pipeline"
                " WHERE separate_status = ANY(%s) AND analyze_status = ANY(%s)",
                (list(DONE), list(DONE)),
            ).fetchone()
            if row is not None and row[0] >= count:
                return
            time.sleep(0.2)
    raise SystemExit("the daemon did not finish the songs in time")


def check_no_failures(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        failed = conn.execute(
            "SELECT separate_error, analyze_error FROM soundforge_pipeline"
            " WHERE separate_status = 'failed' OR analyze_status = 'failed'"
        ).fetchall()
    if failed:
        raise SystemExit(f"pipelines failed: {failed}")


def engines_round(work: Path, args: argparse.Namespace) -> list[tuple[float, float]]:
    env = environment(work, "postgresql://unused", args.shifts, "alone")  # no database needed
    result = subprocess.run(
        [sys.executable, "-m", "bench.pipeline", "--engines-alone", "--work", str(work),
         "--songs", str(args.songs), "--seconds", str(args.seconds)],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    times: list[tuple[float, float]] = json.loads(result.stdout.strip().splitlines()[-1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each song")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny")
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engines-alone", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engines_alone:
        engines_alone(args)
        return
    with tempfile.TemporaryDirectory(prefix="sf-bench-pipeline-") as directory:
        work = Path(directory)
        prepare(work, args.size, args.songs, args.seconds)
        print(f"{args.songs} songs of {args.seconds:g} s, {MODEL} {args.size}, "
              f"shifts={args.shifts}, {os.cpu_count()} CPUs")
        print(f"{'round':<7}{'separate s':>12}{'analyze s':>11}{'engines s':>11}"
              f"{'daemon s':>10}{'songs/h alone':>15}{'songs/h daemon':>16}{'efficiency':>12}")
        efficiencies = []
        for round_ in range(1, args.rounds + 1):
            times = engines_round(work, args)
            separate_s = sum(t[0] for t in times)
            analyze_s = sum(t[1] for t in times)
            alone = separate_s + analyze_s
            daemon = daemon_round(work, args.songs, args.seconds, args.shifts, str(round_))
            efficiencies.append(alone / daemon)
            print(f"{round_:<7}{separate_s:>12.1f}{analyze_s:>11.1f}{alone:>11.1f}{daemon:>10.1f}"
                  f"{args.songs * 3600 / alone:>15.0f}{args.songs * 3600 / daemon:>16.0f}"
                  f"{alone / daemon:>12.2f}")
        print(f"daemon efficiency (engines' standalone time / daemon wall time), median: "
              f"{statistics.median(efficiencies):.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
