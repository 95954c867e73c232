"""`soundforge run` as a real process against the test database, with a real NOTIFY_SOCKET
datagram socket standing in for systemd: READY=1 only once the workers registered, STATUS=
lines, WATCHDOG=1 when WATCHDOG_USEC is set, a drain on SIGTERM that ends with exit 0, a killed
worker restarted, a worker recycled after N jobs, and one clear line when the database is
unreachable. Also the sd_notify sender on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import queue
from soundforge.sd_notify import SENDER_PID, Notifier, NotifyReceiver, watchdog_interval_s
from soundforge.settings import load_settings
from soundforge.supervisor import Supervisor
from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.loopback_http import loopback_server
from tests.support.pipeline import (
    ServiceProcesses,
    add_track,
    pipeline_row,
    serve_slowly,
    service_env,
    wait_for,
    wait_for_stage_status,
)

pytestmark = pytest.mark.timeout(240)
Connection = psycopg.Connection[Any]
NEVER = "0 0 1 1 *"  # a cron that does not fire during a test


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[NotifyReceiver]:
    """A datagram socket bound where the supervisor's NOTIFY_SOCKET points."""
    with NotifyReceiver(str(tmp_path / "notify.sock")) as receiver:
        yield receiver


def _download_only(cli_env: dict[str, str], systemd: NotifyReceiver,
                   **settings: object) -> dict[str, str]:  # fmt: skip
    env = service_env(cli_env, processing_processes=0, analysis_processes=0, **settings)
    env["NOTIFY_SOCKET"] = systemd.address
    return env


def _messages_until(receiver: NotifyReceiver, key: str, timeout_s: float = 120
                    ) -> list[dict[str, str]]:  # fmt: skip
    """Every message up to and including the first one carrying `key`."""
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = receiver.receive(0.5)
        if message is not None:
            seen.append(message)
            if key in message:
                return seen
    raise AssertionError(f"no {key}= message in {timeout_s} s; got {seen}")


def _statuses(messages: list[dict[str, str]]) -> list[str]:
    return [m["STATUS"] for m in messages if "STATUS" in m]


def test_ready_comes_after_the_workers_registered_then_status_and_watchdog(
    conn: Connection, cli_env: dict[str, str], systemd: NotifyReceiver,
    services: ServiceProcesses,
) -> None:  # fmt: skip
    env = _download_only(cli_env, systemd, download_processes=2)
    env["WATCHDOG_USEC"] = "400000"
    supervisor = services.supervisor(env)

    before_ready = _messages_until(systemd, "READY")

    registered = conn.execute("SELECT count(*) AS n FROM procrastinate_workers").fetchone()
    assert registered is not None and registered["n"] == 2
    assert before_ready[-1]["READY"] == "1"
    assert "workers 2/2 ready" in before_ready[-1]["STATUS"]
    assert any("workers 0/2 ready" in line for line in _statuses(before_ready))
    watchdogs = [m for m in _messages_until(systemd, "WATCHDOG") if "WATCHDOG" in m]
    assert watchdogs and watchdogs[0]["WATCHDOG"] == "1"
    assert services.stop(supervisor) == 0
    assert any(m.get("STOPPING") == "1" for m in systemd.drain())


def test_sigterm_drains_a_running_job_then_exits_zero(
    conn: Connection, cli_env: dict[str, str], systemd: NotifyReceiver,
    services: ServiceProcesses, database_url: str,
) -> None:  # fmt: skip
    env = _download_only(cli_env, systemd, shutdown_grace_s=30, stalled_after_s=40)
    with loopback_server() as server:
        url = serve_slowly(server, "/song.wav", tone_bytes(2.0), seconds=3.0)
        supervisor = services.supervisor(env)
        _messages_until(systemd, "READY")
        track_id = add_track(env, url, "--no-stems", "--no-analysis")
        wait_for_stage_status(database_url, track_id, "download", "downloading")

        assert services.stop(supervisor) == 0

    row = pipeline_row(database_url, track_id)
    assert row is not None and row["download_status"] == "completed"
    assert "stopped cleanly" in services.log_text(supervisor)


def test_a_killed_worker_is_restarted(
    cli_env: dict[str, str], systemd: NotifyReceiver, services: ServiceProcesses
) -> None:
    supervisor = services.supervisor(_download_only(cli_env, systemd))
    _messages_until(systemd, "READY")
    first = services.wait_worker(supervisor, "download-0")

    services.all_worker_pids(supervisor)
    os.kill(first, signal.SIGKILL)

    second = services.wait_worker(supervisor, "download-0", not_pid=first)
    assert second != first
    wait_for(lambda: any("restarts 1" in s for s in _statuses(systemd.drain())),
             timeout_s=60, message="STATUS with one restart")  # fmt: skip
    assert "worker download-0 died" in services.log_text(supervisor)
    assert services.stop(supervisor) == 0


def test_the_jobs_of_a_worker_killed_with_sigkill_go_back_to_the_queue_at_once(
    conn: Connection, cli_env: dict[str, str], systemd: NotifyReceiver,
    services: ServiceProcesses, database_url: str,
) -> None:  # fmt: skip
    # The periodic rescue is off and its threshold is long: only the supervisor can do it.
    env = _download_only(cli_env, systemd, download_concurrency=4, stalled_after_s=600,
                         rescue_cron=NEVER)  # fmt: skip
    with loopback_server() as server:
        urls = [serve_slowly(server, f"/song-{n}.wav", tone_bytes(2.0), seconds=20.0)
                for n in range(4)]  # fmt: skip
        supervisor = services.supervisor(env)
        _messages_until(systemd, "READY")
        worker = services.wait_worker(supervisor, "download-0")
        tracks = [add_track(env, url, "--no-stems", "--no-analysis") for url in urls]
        running = wait_for(
            lambda: len(rows := conn.execute(
                "SELECT id FROM procrastinate_jobs WHERE status = 'doing'"
                " AND task_name = 'soundforge.download'").fetchall()) == 4 and rows,
            timeout_s=120, message="4 downloads running",
        )  # fmt: skip

        os.kill(worker, signal.SIGKILL)

        def requeued() -> bool:  # back to todo, or already taken again by the new worker
            rows = conn.execute(
                "SELECT status, attempts FROM procrastinate_jobs WHERE id = ANY(%s)",
                ([row["id"] for row in running],),
            ).fetchall()  # fmt: skip
            return all(row["attempts"] == 1 and row["status"] in ("todo", "doing", "succeeded")
                       for row in rows)  # fmt: skip

        wait_for(requeued, timeout_s=30, message="the 4 jobs back in the queue")
        for track_id in tracks:
            wait_for_stage_status(database_url, track_id, "download", "completed")
    assert "4 job(s) put back" in services.log_text(supervisor)
    assert services.stop(supervisor) == 0


def test_a_worker_recycles_itself_after_n_jobs(
    conn: Connection, cli_env: dict[str, str], systemd: NotifyReceiver,
    services: ServiceProcesses,
) -> None:  # fmt: skip
    env = _download_only(cli_env, systemd, recycle_after_jobs=2, rescue_cron=NEVER,
                         prune_cron=NEVER, cleanup_cron=NEVER)  # fmt: skip
    supervisor = services.supervisor(env)
    _messages_until(systemd, "READY")
    first = services.wait_worker(supervisor, "download-0")

    for _ in range(3):
        queue.defer(conn, "soundforge.prune_jobs", "maintenance", {})

    second = services.wait_worker(supervisor, "download-0", not_pid=first)
    assert second != first
    wait_for(lambda: conn.execute("SELECT count(*) AS n FROM procrastinate_jobs "
                                  "WHERE status = 'succeeded'").fetchone()["n"] == 3,  # type: ignore[index]
             timeout_s=60, message="all three jobs done")  # fmt: skip
    log = services.log_text(supervisor)
    assert "worker download-0 recycled" in log
    assert "died" not in log
    assert services.stop(supervisor) == 0


def test_an_unreachable_database_fails_at_start_with_one_clear_line(
    cli_env: dict[str, str],
) -> None:
    env = service_env(cli_env) | {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"}

    result = run_cli("run", env=env, timeout=60)

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("soundforge: error: cannot connect to PostgreSQL at host=127.0.0.1")


def test_a_rescue_threshold_shorter_than_the_drain_is_refused_at_start(
    cli_env: dict[str, str],
) -> None:
    env = service_env(cli_env, shutdown_grace_s=60, stalled_after_s=30)

    result = run_cli("run", env=env, timeout=60)

    assert result.returncode == 2
    assert "SOUNDFORGE_STALLED_AFTER_S=30 is too short" in result.stderr


@pytest.mark.parametrize("address", ["@soundforge-test-{pid}", "{tmp}/notify.sock"])
def test_notifier_sends_to_abstract_and_path_sockets(tmp_path: Path, address: str) -> None:
    name = address.format(pid=os.getpid(), tmp=tmp_path)
    with NotifyReceiver(name) as receiver:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": name})
        assert notifier.ready(status="up\nand running")
        assert notifier.watchdog()
        me = str(os.getpid())  # the kernel's word for the sender (SO_PASSCRED)
        assert receiver.receive(5) == {"READY": "1", "MAINPID": me, "STATUS": "up and running",
                                       SENDER_PID: me}  # fmt: skip
        assert receiver.receive(5) == {"WATCHDOG": "1", SENDER_PID: me}
        notifier.close()


def test_notifier_without_notify_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000"}) == 1.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, pid=2) is None
    assert watchdog_interval_s({}) is None


@pytest.mark.parametrize(
    ("serving", "error"),
    [
        ("drip", "time limit exceeded: download ran longer than 1 s"),
        ("stall", "time limit exceeded: download ran longer than 1 s"),
    ],
    ids=["reporting-progress", "silent"],
)
def test_a_job_past_its_stage_time_limit_is_stopped_and_failed_when_out_of_attempts(
    cli_env: dict[str, str], systemd: NotifyReceiver, services: ServiceProcesses,
    database_url: str, serving: str, error: str,
) -> None:  # fmt: skip
    # "drip" reports progress all along; "stall" sends nothing for a long while: either way
    # the worker kills the engine process at the limit, and the worker itself lives on.
    env = _download_only(cli_env, systemd, download_time_limit_s=1, download_attempts=1)
    with loopback_server() as server:
        body = tone_bytes(2.0)
        if serving == "drip":
            url = serve_slowly(server, "/song.wav", body, seconds=20.0)
        else:
            url = server.serve_bytes("/song.wav", body, "audio/wav", stall_s=30.0)
        supervisor = services.supervisor(env)
        _messages_until(systemd, "READY")
        track_id = add_track(env, url, "--no-stems", "--no-analysis")

        row = wait_for(
            lambda: (r := pipeline_row(database_url, track_id)) is not None
            and r["download_status"] == "failed" and r,
            timeout_s=60, message="the download to fail on its time limit",
        )  # fmt: skip
    assert row["download_error"].startswith(error)
    assert services.stop(supervisor) == 0


@pytest.mark.timeout(60)
def test_notifying_a_manager_that_stopped_reading_drops_messages_instead_of_hanging(
    tmp_path: Path,
) -> None:
    with NotifyReceiver(str(tmp_path / "full.sock")) as receiver:
        notifier = Notifier(receiver.address, send_timeout_s=0.0)
        results = [notifier.status(f"line {n}") for n in range(200)]  # nobody reads
        notifier.close()
    assert results[0] is True
    assert results.count(False) > 0  # the queue filled up: later lines were dropped


def _idle_supervisor(database_url: str, notifier: Notifier) -> Supervisor:
    """A supervisor with one download worker slot, not running its loop (the test drives it)."""
    settings = load_settings(database_url=database_url, processing_processes=0,
                             analysis_processes=0)  # fmt: skip
    supervisor = Supervisor(settings, notifier=notifier, environ={})
    supervisor.receiver = NotifyReceiver()
    return supervisor


@pytest.mark.timeout(60)
def test_ready_is_sent_again_when_the_first_send_was_dropped(
    tmp_path: Path, database_url: str
) -> None:
    with NotifyReceiver(str(tmp_path / "systemd.sock")) as systemd_socket:
        supervisor = _idle_supervisor(database_url, Notifier(systemd_socket.address, 0.0))
        try:
            filler = Notifier(systemd_socket.address, send_timeout_s=0.0)
            while filler.status("filling the queue"):  # a manager busy elsewhere
                pass
            filler.close()
            for worker in supervisor.workers:
                worker.ready = True
            supervisor._maybe_announce_ready()  # dropped: the queue is full
            assert not supervisor.announced_ready
            systemd_socket.drain()  # the manager reads again
            supervisor._maybe_announce_ready()
            assert supervisor.announced_ready
            assert any(m.get("READY") == "1" for m in systemd_socket.drain())
        finally:
            assert supervisor.receiver is not None
            supervisor.receiver.close()


@pytest.mark.timeout(60)
def test_a_message_naming_a_workers_pid_counts_only_from_that_worker(
    tmp_path: Path, database_url: str
) -> None:
    supervisor = _idle_supervisor(database_url, Notifier(None))
    assert supervisor.receiver is not None
    [worker] = supervisor.workers
    speak = ("import os, time; from soundforge.sd_notify import Notifier; time.sleep(1.5); "
             "Notifier.from_environ().send(READY=1, MAINPID=os.getpid()); time.sleep(30)")
    env = os.environ | {"NOTIFY_SOCKET": supervisor.receiver.address}
    worker.process = subprocess.Popen([sys.executable, "-c", speak], env=env)
    try:
        impostor = Notifier(supervisor.receiver.address)
        impostor.send(READY=1, MAINPID=worker.process.pid)  # this process, not the worker
        impostor.close()
        supervisor._wait_for_messages(1.0)
        assert not worker.ready

        def heard() -> bool:
            supervisor._wait_for_messages(0.2)
            return worker.ready

        wait_for(heard, timeout_s=30, message="the worker's own READY=1")
    finally:
        worker.process.kill()
        worker.process.wait()
        supervisor.receiver.close()
