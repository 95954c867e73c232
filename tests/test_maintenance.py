"""Maintenance against a real PostgreSQL: the stalled-job rescue (a dead worker's job is retried,
or failed when out of attempts; a live worker, even one that is draining, keeps its job), the
prune of finished queue jobs, the CLI commands, and the periodic task registration."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import jobs, maintenance, queue, workflow
from soundforge.app import build_app
from soundforge.errors import ConfigError
from soundforge.models import Stage
from soundforge.settings import Settings, load_settings
from soundforge.status import Status
from tests.cli_runner import run_cli
from tests.factories import make_track
from tests.support.audio import tone_bytes
from tests.support.loopback_http import loopback_server
from tests.support.pipeline import (
    ServiceProcesses,
    add_track,
    pipeline_row,
    serve_slowly,
    service_env,
    wait_for_stage_status,
)

pytestmark = pytest.mark.timeout(180)
Connection = psycopg.Connection[Any]


def _settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"database_url": database_url, "stalled_after_s": 60.0,
                              "shutdown_grace_s": 5.0, "heartbeat_interval_s": 1.0}  # fmt: skip
    return load_settings(**(values | overrides))


def _worker(conn: Connection, heartbeat_age_s: float) -> int:
    row = conn.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat) "
        "VALUES (now() - make_interval(secs => %s)) RETURNING id",
        (heartbeat_age_s,),
    ).fetchone()
    assert row is not None
    return int(row["id"])


def _running_download(conn: Connection, worker_id: int, attempts: int = 0) -> tuple[int, Any]:
    """A download row in `downloading` whose queue job runs (`doing`) on `worker_id`."""
    track = make_track(conn)
    job = jobs.create_job(conn, Stage.DOWNLOAD, track.id)
    queue_id = queue.defer_stage(conn, Stage.DOWNLOAD, track.id, {"job_id": str(job.id)})
    assert queue_id is not None
    conn.execute(
        "UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s, attempts = %s "
        "WHERE id = %s",
        (worker_id, attempts, queue_id),
    )
    workflow.begin_stage(conn, Stage.DOWNLOAD, track.id, job.id,
                         procrastinate_job_id=queue_id, attempt=attempts + 1)  # fmt: skip
    return queue_id, job.id


def _queue_status(conn: Connection, queue_id: int) -> str:
    row = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", (queue_id,))
    found = row.fetchone()
    assert found is not None
    return str(found["status"])


def test_rescue_retries_a_dead_workers_job_and_leaves_a_live_workers_job(
    conn: Connection, database_url: str
) -> None:
    dead_job, dead_row = _running_download(conn, _worker(conn, heartbeat_age_s=3600))
    live_job, _live_row = _running_download(conn, _worker(conn, heartbeat_age_s=1))

    report = maintenance.rescue_stalled(conn, _settings(database_url))

    assert [(j.procrastinate_job_id, j.action) for j in report.jobs] == [(dead_job, "retried")]
    assert _queue_status(conn, dead_job) == "todo"
    assert _queue_status(conn, live_job) == "doing"
    row = jobs.get_job(conn, Stage.DOWNLOAD, dead_row)
    assert row is not None and row.status is Status.DOWNLOADING  # kept: the re-run continues it


def test_a_live_workers_row_survives_a_short_prune_so_its_job_is_never_rescued(
    conn: Connection, database_url: str
) -> None:
    busy = _worker(conn, heartbeat_age_s=40)  # stale for a bare procrastinate worker (30 s)
    queue_id, _ = _running_download(conn, busy)
    idle = _worker(conn, heartbeat_age_s=40)
    dead = _worker(conn, heartbeat_age_s=7200)  # past soundforge.stalled_after_s (30 min)
    dead_queue_id, _ = _running_download(conn, dead)

    pruned = conn.execute("SELECT * FROM procrastinate_prune_stalled_workers_v1(30)").fetchall()

    assert sorted(row["worker_id"] for row in pruned) == sorted([idle, dead])
    report = maintenance.rescue_stalled(conn, _settings(database_url))
    assert [job.procrastinate_job_id for job in report.jobs] == [dead_queue_id]
    assert _queue_status(conn, queue_id) == "doing"


def test_rescue_fails_the_job_row_when_its_attempts_are_used_up(
    conn: Connection, database_url: str
) -> None:
    queue_id, row_id = _running_download(conn, _worker(conn, 3600), attempts=2)

    report = maintenance.rescue_stalled(conn, _settings(database_url, download_attempts=3))

    assert [j.action for j in report.jobs] == ["failed"]
    assert _queue_status(conn, queue_id) == "failed"
    row = jobs.get_job(conn, Stage.DOWNLOAD, row_id)
    assert row is not None and row.status is Status.FAILED
    assert row.error is not None and "stopped" in row.error and "3 attempts" in row.error


def test_rescue_dry_run_reports_and_changes_nothing(
    conn: Connection, database_url: str, cli_env: dict[str, str]
) -> None:
    queue_id, _row = _running_download(conn, _worker(conn, 3600))
    env = cli_env | {"SOUNDFORGE_STALLED_AFTER_S": "60", "SOUNDFORGE_SHUTDOWN_GRACE_S": "5"}

    result = run_cli("rescue-stalled", "--dry-run", "--json", env=env)

    assert result.returncode == 0, result.stderr
    [listed] = json.loads(result.stdout)
    assert (listed["procrastinate_job_id"], listed["action"]) == (queue_id, "retried")
    assert _queue_status(conn, queue_id) == "doing"
    result = run_cli("rescue-stalled", env=env)
    assert "1 stalled job(s): 1 retried, 0 failed" in result.stdout
    assert _queue_status(conn, queue_id) == "todo"


def test_a_rescue_threshold_within_the_drain_grace_is_refused(database_url: str) -> None:
    settings = _settings(database_url, stalled_after_s=10, shutdown_grace_s=10)
    with pytest.raises(ConfigError, match="SOUNDFORGE_STALLED_AFTER_S"):
        maintenance.check_rescue_threshold(settings)


def test_a_draining_worker_keeps_its_job_however_short_the_rescue_threshold(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    # A real worker drains a 4 s download after SIGTERM. Procrastinate stops its heartbeat
    # when the drain starts; SoundForge's job heartbeat keeps it fresh, so even a rescue run
    # with a 1.5 s threshold (shorter than the drain) finds nothing to take.
    env = service_env(cli_env, shutdown_grace_s=20, stalled_after_s=30)
    services = ServiceProcesses(tmp_path)
    with loopback_server() as server:
        url = serve_slowly(server, "/slow.wav", tone_bytes(2.0), seconds=4.0)
        try:
            worker = services.start("worker", "--queues", "download", "--concurrency", "2",
                                    env=env, label="worker")  # fmt: skip
            track_id = add_track(env, url, "--no-stems", "--no-analysis")
            wait_for_stage_status(database_url, track_id, "download", "downloading")
            worker.send_signal(signal.SIGTERM)
            signalled_at, late_checks = time.monotonic(), 0
            while worker.poll() is None:
                report = maintenance.rescue_stalled(
                    conn, _settings(database_url), stalled_after_s=1.5
                )
                assert report.jobs == [], "a draining worker's job was taken from it"
                late_checks += time.monotonic() - signalled_at > 2.5
                time.sleep(0.2)
            assert late_checks, "the drain ended before Procrastinate's heartbeat went stale"
            assert worker.wait(30) == 0
        finally:
            services.close()
    row = pipeline_row(database_url, track_id)
    assert row is not None and row["download_status"] == "completed"


def test_prune_deletes_finished_queue_jobs_older_than_the_given_days(
    conn: Connection, cli_env: dict[str, str]
) -> None:
    ids = [queue.defer(conn, "soundforge.prune_jobs", "maintenance", {}) for _ in range(3)]
    old_done, recent_done, old_waiting = ids
    conn.execute("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id = ANY(%s)",
                 ([old_done, recent_done],))  # fmt: skip
    conn.execute("UPDATE procrastinate_events SET at = now() - interval '10 days' "
                 "WHERE job_id = ANY(%s)", ([old_done, old_waiting],))  # fmt: skip

    result = run_cli("prune", "--days", "7", "--json", env=cli_env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"days": 7, "deleted": {"maintenance": 1}}
    left = {row["id"] for row in conn.execute("SELECT id FROM procrastinate_jobs")}
    assert left == {recent_done, old_waiting}


def test_prune_refuses_zero_days(cli_env: dict[str, str]) -> None:
    result = run_cli("prune", "--days", "0", env=cli_env)
    assert result.returncode != 0
    assert "at least 1" in result.stderr


def test_maintenance_tasks_are_periodic_on_the_maintenance_queue() -> None:
    app = build_app(load_settings())
    settings = load_settings()
    periodic = {
        task.task.name: (task.cron, task.task.queue)
        for task in app.periodic_registry.periodic_tasks.values()
    }
    assert periodic == {
        "soundforge.rescue_stalled": (settings.rescue_cron, "maintenance"),
        "soundforge.prune_jobs": (settings.prune_cron, "maintenance"),
        "soundforge.cleanup_orphaned": (settings.cleanup_cron, "maintenance"),
    }


def test_a_row_left_running_by_an_ended_queue_job_is_failed_and_can_be_retried(
    conn: Connection, database_url: str
) -> None:
    # A worker lost its database between its queue job ending and its row's update.
    queue_id, job_id = _running_download(conn, _worker(conn, heartbeat_age_s=0))
    job = jobs.get_job(conn, Stage.DOWNLOAD, job_id)
    assert job is not None
    conn.execute("SELECT procrastinate_finish_job_v1(%s, 'failed', false)", (queue_id,))
    settings = _settings(database_url)

    fresh = maintenance.rescue_stalled(conn, settings, stalled_after_s=60)
    assert fresh.orphans == 0  # touched less than a minute ago: left alone
    time.sleep(1.1)  # updated_at has one-second precision
    dry = maintenance.rescue_stalled(conn, settings, dry_run=True, stalled_after_s=0)
    assert (dry.orphans, jobs.reload(conn, job).status) == (1, Status.DOWNLOADING)

    report = maintenance.rescue_stalled(conn, settings, stalled_after_s=0)
    assert report.orphans == 1 and report.jobs[0].job_rows == [job.id]
    failed = jobs.reload(conn, job)
    assert failed.status is Status.FAILED
    assert failed.error == f"its queue job {queue_id} ended (failed) without finishing this row"
    retried = workflow.retry_job(conn, job.id, workflow.PipelineOptions())
    assert retried.status is Status.QUEUED
