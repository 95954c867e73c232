"""Helpers for tests that run the real service as processes: an environment with short grace
periods and heartbeats for the test database, starting and stopping `soundforge run` and
`soundforge worker`, finding a supervisor's worker processes, a loopback route that drips a file
slowly (a download that lasts long enough to be interrupted), a recorder that checks no job row
ever moves backwards, and polling for row states with a deadline."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from soundforge import live
from soundforge.db import connect
from soundforge.status import RANK, Status
from tests.cli_runner import SOUNDFORGE, run_cli
from tests.support.loopback_http import LoopbackServer
from tests.support.worker_thread import wait_for

__all__ = ["ServiceProcesses", "serve_slowly", "service_env", "wait_for"]

# Short enough for tests, and consistent: stalled_after_s > grace + 2 heartbeats.
FAST_SETTINGS = {
    "SOUNDFORGE_SHUTDOWN_GRACE_S": "2",
    "SOUNDFORGE_HEARTBEAT_INTERVAL_S": "0.5",
    "SOUNDFORGE_STALLED_AFTER_S": "4",
    "SOUNDFORGE_POLL_INTERVAL_S": "0.3",
    "SOUNDFORGE_RESCUE_CRON": "* * * * * *",  # every second (6th field: seconds)
    "SOUNDFORGE_RETRY_WAIT_S": "0",
    "SOUNDFORGE_RESTART_BACKOFF_S": "0.2",
    "SOUNDFORGE_RESTART_BACKOFF_MAX_S": "2",
    "SOUNDFORGE_SHIFTS": "0",
    "SOUNDFORGE_LOG_LEVEL": "INFO",
}


def service_env(base_env: dict[str, str], **settings: object) -> dict[str, str]:
    """`base_env` (the `cli_env` fixture) plus the fast settings and `SOUNDFORGE_<NAME>`
    overrides given as keyword arguments (`processing_processes=0`)."""
    env = {k: v for k, v in base_env.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(FAST_SETTINGS)
    for name, value in settings.items():
        env[f"SOUNDFORGE_{name.upper()}"] = str(value)
    return env


def child_pids(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append(int(entry))
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class ServiceProcesses:
    """Starts real service processes with output in log files, and ends every one of them
    (and their workers) when the test ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []
        self.worker_pids: set[int] = set()

    def start(self, *args: str, env: dict[str, str], label: str) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{label}-{len(self.started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [SOUNDFORGE, *args], env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        self.started.append(process)
        return process

    def supervisor(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        return self.start("run", env=env, label="supervisor")

    def worker_pid(self, supervisor: subprocess.Popen[bytes], name: str) -> int | None:
        """The pid of the supervisor's live worker called `name` (`download-0`), if any."""
        for pid in child_pids(supervisor.pid):
            command = command_line(pid)
            if "--name" in command and command[command.index("--name") + 1] == name:
                self.worker_pids.add(pid)
                if pid_alive(pid):
                    return pid
        return None

    def wait_worker(self, supervisor: subprocess.Popen[bytes], name: str,
                    not_pid: int | None = None, timeout_s: float = 90) -> int:  # fmt: skip
        pid: int = wait_for(
            lambda: (found := self.worker_pid(supervisor, name)) != not_pid and found,
            timeout_s=timeout_s, message=f"worker {name} of supervisor {supervisor.pid}",
        )  # fmt: skip
        return pid

    def all_worker_pids(self, supervisor: subprocess.Popen[bytes]) -> list[int]:
        pids = child_pids(supervisor.pid)
        self.worker_pids.update(pids)
        return pids

    @staticmethod
    def log_text(process: subprocess.Popen[bytes]) -> str:
        path: Path = process.log_path  # type: ignore[attr-defined]
        return path.read_text(errors="replace")

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
        """SIGTERM and wait; returns the exit code."""
        if process.poll() is None:
            self.all_worker_pids(process)
            process.send_signal(signal.SIGTERM)
        return process.wait(timeout_s)

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                self.worker_pids.update(child_pids(process.pid))
                process.kill()
                process.wait(10)
        for pid in self.worker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def serve_slowly(
    server: LoopbackServer, path: str, body: bytes, seconds: float, steps: int = 50
) -> str:
    """Serve `body` (whole, status 200, ignoring Range) in `steps` pieces over `seconds`: a
    download that takes that long and reports progress all along."""
    piece = max(1, -(-len(body) // steps))

    def handler(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "audio/wav")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command == "HEAD":
            return
        for offset in range(0, len(body), piece):
            if server.stop.wait(seconds / steps):
                return
            try:
                request.wfile.write(body[offset : offset + piece])
                request.wfile.flush()
            except OSError:  # the client went away (a killed worker)
                return

    return server.add(path, handler)


class RowHistory:
    """Every `soundforge_progress` event, from a LISTEN thread that reconnects after the
    database restarts; `assert_never_backwards` checks each job row's status rank and progress
    only ever grew."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.events: list[live.ProgressEvent] = []
        self._stop = threading.Event()
        self._listening = threading.Event()
        self._thread = threading.Thread(target=self._run, name="row-history", daemon=True)
        self._thread.start()
        if not self._listening.wait(10):
            raise AssertionError("the LISTEN connection did not open")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with live.open_listener(self.database_url) as conn:
                    self._listening.set()
                    for event in live.events(conn, 0.2):
                        if self._stop.is_set():
                            return
                        if event is not None:
                            self.events.append(event)
            except (psycopg.Error, Exception):  # the server restarted: listen again
                time.sleep(0.2)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def assert_never_backwards(self) -> None:
        last: dict[str, tuple[int, int]] = {}
        for event in self.events:
            rank, progress = RANK[Status(event.status)], event.progress
            before = last.get(event.job_id)
            if before is not None:
                assert rank >= before[0], f"job {event.job_id} moved back to {event.status}"
                assert progress >= before[1], f"job {event.job_id} progress fell to {progress}"
            last[event.job_id] = (rank, progress)


@contextlib.contextmanager
def row_history(database_url: str) -> Iterator[RowHistory]:
    history = RowHistory(database_url)
    try:
        yield history
    finally:
        history.close()


def pipeline_row(database_url: str, track_id: uuid.UUID | str) -> dict[str, Any] | None:
    """The track's row of the `soundforge_pipeline` view (a fresh connection: it survives a
    database restart); None when the database cannot be reached right now."""
    try:
        with connect(database_url, autocommit=True, connect_timeout=2) as conn:
            rows = live.pipeline_rows(conn, [uuid.UUID(str(track_id))])
    except Exception:
        return None
    return rows[0] if rows else None


def wait_for_pipeline(database_url: str, track_id: uuid.UUID | str,
                      timeout_s: float = 180) -> dict[str, Any]:  # fmt: skip
    """Poll until every stage of the track's pipeline ended; returns its row."""

    def finished() -> dict[str, Any] | None:
        row = pipeline_row(database_url, track_id)
        return row if row is not None and live.pipeline_finished(row) else None

    row: dict[str, Any] = wait_for(
        finished, timeout_s=timeout_s, interval_s=0.2, message=f"pipeline of track {track_id}"
    )
    return row


def wait_for_stage_status(database_url: str, track_id: uuid.UUID | str, stage: str,
                          status: str, timeout_s: float = 120) -> dict[str, Any]:  # fmt: skip
    """Poll (every 20 ms) until the track's newest `stage` row has `status`."""

    def reached() -> dict[str, Any] | None:
        row = pipeline_row(database_url, track_id)
        return row if row is not None and row[f"{stage}_status"] == status else None

    row: dict[str, Any] = wait_for(
        reached, timeout_s=timeout_s, interval_s=0.02,
        message=f"{stage} of track {track_id} to be {status}",
    )  # fmt: skip
    return row


def add_track(env: dict[str, str], source: str, *options: str) -> str:
    """`soundforge add --json SOURCE`; the new track's id."""
    result = run_cli("add", "--json", *options, source, env=env)
    assert result.returncode == 0, result.stderr
    [item] = json.loads(result.stdout)
    return str(item["track_id"])
