"""Fault tests with real processes and a real PostgreSQL: a worker SIGKILLed during each stage
(the job is rescued and the pipeline completes), PostgreSQL restarted while jobs run (nothing is
lost), SIGTERM during a job longer than the drain grace (the job goes back to the queue and the
next start finishes it), and the supervisor itself SIGKILLed (its workers stop, the next start
picks everything up). In every one, no job row ever moves backwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge.sd_notify import NotifyReceiver
from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.loopback_http import loopback_server
from tests.support.own_postgres import have_server_binaries, throwaway_cluster
from tests.support.pipeline import (
    RowHistory,
    ServiceProcesses,
    add_track,
    pid_alive,
    pipeline_row,
    row_history,
    serve_slowly,
    service_env,
    wait_for,
    wait_for_pipeline,
    wait_for_stage_status,
)

pytestmark = pytest.mark.timeout(420)
Connection = psycopg.Connection[Any]


@pytest.fixture
def history(database_url: str) -> Iterator[RowHistory]:
    with row_history(database_url) as recorder:
        yield recorder
    recorder.assert_never_backwards()


@pytest.fixture
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def _started(services: ServiceProcesses, env: dict[str, str], tmp_path: Path
             ) -> subprocess.Popen[bytes]:  # fmt: skip
    """A supervisor, once it said READY=1 on its NOTIFY_SOCKET."""
    with NotifyReceiver(str(tmp_path / f"notify-{len(services.started)}.sock")) as systemd:
        supervisor = services.supervisor(env | {"NOTIFY_SOCKET": systemd.address})
        wait_for(lambda: (m := systemd.receive(0.5)) is not None and m.get("READY") == "1",
                 timeout_s=180, message="READY=1 from the supervisor")  # fmt: skip
    return supervisor


def _kill_worker_during(
    services: ServiceProcesses,
    supervisor: subprocess.Popen[bytes],
    worker: str,
    database_url: str,
    track_id: str,
    stage: str,
) -> None:
    """SIGKILL `worker` as soon as the track's `stage` row is running; the stage must not have
    finished by then, or the test would prove nothing."""
    pid = services.wait_worker(supervisor, worker)
    active = "downloading" if stage == "download" else "processing"
    wait_for_stage_status(database_url, track_id, stage, active, timeout_s=180)
    os.kill(pid, signal.SIGKILL)
    row = pipeline_row(database_url, track_id)
    assert row is not None and row[f"{stage}_status"] == active, f"{stage} ended before the kill"


def _attempts(conn: Connection, table: str, track_id: str) -> int:
    row = conn.execute(f"SELECT max(attempts) AS n FROM {table} WHERE track_id = %s",
                       (track_id,)).fetchone()  # fmt: skip
    assert row is not None
    return int(row["n"])


def test_a_worker_killed_during_each_stage_is_rescued_and_the_pipeline_completes(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path,
    services: ServiceProcesses, history: RowHistory, tiny_repo: Path,
) -> None:  # fmt: skip
    env = service_env(cli_env, demucs_repo=tiny_repo, demucs_model="htdemucs")
    long_audio = tmp_path / "long.wav"  # analysis of ten minutes takes a few seconds
    long_audio.write_bytes(tone_bytes(600.0))
    with loopback_server() as server:
        # long enough to be still downloading once both adds are done on a busy machine
        url = serve_slowly(server, "/song.wav", tone_bytes(2.0), seconds=12.0)
        supervisor = _started(services, env, tmp_path)
        stems_track = add_track(env, url, "--no-analysis")
        analysis_track = add_track(env, str(long_audio), "--no-stems")

        _kill_worker_during(services, supervisor, "download-0", database_url, stems_track,
                            "download")  # fmt: skip
        _kill_worker_during(services, supervisor, "analysis-0", database_url, analysis_track,
                            "analyze")  # fmt: skip
        _kill_worker_during(services, supervisor, "processing-0", database_url, stems_track,
                            "separate")  # fmt: skip

        for track_id in (stems_track, analysis_track):
            row = wait_for_pipeline(database_url, track_id, timeout_s=300)
            assert "failed" not in {row["download_status"], row["separate_status"],
                                    row["analyze_status"]}, row  # fmt: skip
    assert _attempts(conn, "download_jobs", stems_track) >= 2
    assert _attempts(conn, "processing_jobs", stems_track) >= 2
    assert _attempts(conn, "analysis_jobs", analysis_track) >= 2
    assert services.stop(supervisor) == 0


@pytest.mark.skipif(not have_server_binaries(), reason="needs initdb/pg_ctl for its own server")
def test_postgresql_restarting_while_jobs_run_loses_nothing(
    cli_env: dict[str, str], tmp_path: Path, services: ServiceProcesses,
) -> None:  # fmt: skip
    """The server restarted is a throwaway cluster of this test's own, never the host's."""
    with throwaway_cluster() as server, row_history(server.conninfo) as history:
        database_url = server.conninfo
        env = service_env(cli_env | {"DATABASE_URL": database_url}, processing_processes=0)
        with loopback_server() as http:
            supervisor = _started(services, env, tmp_path)
            # Slow enough that all three are still downloading when the server restarts, on a
            # busy machine too (one `add` for the three).
            urls = [serve_slowly(http, f"/song{n}.wav", tone_bytes(2.0), seconds=15.0)
                    for n in range(3)]  # fmt: skip
            added = run_cli("add", "--json", "--no-stems", *urls, env=env)
            assert added.returncode == 0, added.stderr
            tracks = [str(item["track_id"]) for item in json.loads(added.stdout)]
            for track_id in tracks:
                wait_for_stage_status(database_url, track_id, "download", "downloading")

            server.restart()

            for track_id in tracks:
                row = wait_for_pipeline(database_url, track_id, timeout_s=240)
                assert (row["download_status"], row["analyze_status"]) == ("completed",
                                                                           "completed")
        assert supervisor.poll() is None, "the supervisor itself must survive the restart"
        assert services.stop(supervisor) == 0
    history.assert_never_backwards()


def test_sigterm_during_a_job_longer_than_the_grace_requeues_it_and_the_next_start_ends_it(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path,
    services: ServiceProcesses, history: RowHistory,
) -> None:  # fmt: skip
    env = service_env(cli_env, processing_processes=0, analysis_processes=0,
                      shutdown_grace_s=1)  # fmt: skip
    with loopback_server() as server:
        url = serve_slowly(server, "/long.wav", tone_bytes(2.0), seconds=8.0)
        supervisor = _started(services, env, tmp_path)
        track_id = add_track(env, url, "--no-stems", "--no-analysis")
        before = wait_for_stage_status(database_url, track_id, "download", "downloading")

        assert services.stop(supervisor) == 0

        row = pipeline_row(database_url, track_id)
        assert row is not None and row["download_status"] == "downloading"  # not lost, not failed
        waiting = conn.execute(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'todo' "
            "AND args->>'job_id' = %s", (str(before["download_job_id"]),),
        ).fetchone()  # fmt: skip
        assert waiting is not None and waiting["n"] == 1

        supervisor = _started(services, env, tmp_path)
        row = wait_for_pipeline(database_url, track_id)
    assert row["download_status"] == "completed"
    assert row["download_job_id"] == before["download_job_id"]  # the same row, continued
    assert services.stop(supervisor) == 0


def test_a_killed_supervisor_leaves_no_worker_and_the_next_start_picks_everything_up(
    cli_env: dict[str, str], database_url: str, tmp_path: Path, services: ServiceProcesses,
    history: RowHistory,
) -> None:  # fmt: skip
    env = service_env(cli_env, processing_processes=0, analysis_processes=0)
    with loopback_server() as server:
        url = serve_slowly(server, "/long.wav", tone_bytes(2.0), seconds=6.0)
        supervisor = _started(services, env, tmp_path)
        workers = services.all_worker_pids(supervisor)
        track_id = add_track(env, url, "--no-stems", "--no-analysis")
        wait_for_stage_status(database_url, track_id, "download", "downloading")

        supervisor.kill()
        supervisor.wait(10)
        wait_for(lambda: not any(pid_alive(pid) for pid in workers), timeout_s=60,
                 message="the dead supervisor's workers to stop")  # fmt: skip

        supervisor = _started(services, env, tmp_path)
        row = wait_for_pipeline(database_url, track_id)
    assert row["download_status"] == "completed"
    assert services.stop(supervisor) == 0
