"""Races and retries around one stage, each pinned against a real PostgreSQL (and a real
worker where a retry is involved): a stage deferred by track id alone keeps one row across its
retries; a failed attempt racing a cancel leaves the row cancelled; two defers holding one
queueing lock give one job and no error; a shutdown requeue keeps the attempts made; a cancel
that loses to a completion says so."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import jobs, queue, workflow
from soundforge.db import connect
from soundforge.engines import default_engines
from soundforge.errors import PermanentError
from soundforge.models import Stage
from soundforge.stage_runner import _record_attempt
from soundforge.status import Status
from tests.audio_synth import write_test_song
from tests.factories import make_track
from tests.support.engines import FACTORY, FAULTS_VARIABLE, write_script
from tests.support.job_rows import stage_rows
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)
Connection = psycopg.Connection[Any]


def _running(conn: Connection, stage: Stage, attempt: int = 1) -> Any:
    """A row of `stage` taken by a (pretend) worker: its queue job and the started row."""
    track = make_track(conn)
    job = jobs.create_job(conn, stage, track.id)
    queue_id = queue.defer_stage(conn, stage, track.id, {"job_id": str(job.id)})
    assert queue_id is not None
    conn.execute("UPDATE procrastinate_jobs SET status = 'doing' WHERE id = %s", (queue_id,))
    started = workflow.begin_stage(conn, stage, track.id, job.id,
                                   procrastinate_job_id=queue_id, attempt=attempt)  # fmt: skip
    assert started is not None
    return started.job


def test_a_stage_deferred_by_track_id_alone_keeps_one_row_across_its_retries(
    conn: Connection, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    song = write_test_song(tmp_path / "song.wav", seconds=4.0, tempo=120.0, key="A minor")
    script = write_script(tmp_path / "faults.json", {"analyze": [{"raise": "scratch full"}]})
    monkeypatch.setenv(FAULTS_VARIABLE, str(script))
    settings = settings_for(database_url, tmp_path / "store")
    with running_worker(settings, FACTORY) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(song))
        options = workflow.PipelineOptions(stems=False, analysis=False)
        imported = workflow.import_track(conn, metadata, options)
        wait_for(lambda: jobs.reload(conn, imported.download_job).status is Status.COMPLETED,
                 message="the download")  # fmt: skip
        queue.defer_stage(conn, Stage.ANALYZE, imported.track.id, {})  # no job_id

        def finished() -> list[Any]:
            rows = stage_rows(conn, Stage.ANALYZE, imported.track.id)
            return rows if rows and all(r.status is Status.COMPLETED for r in rows) else []

        rows = wait_for(finished, timeout_s=120, message="the analysis after its retry")
    assert [(row.status, row.attempts) for row in rows] == [(Status.COMPLETED, 2)]


def test_a_failed_attempt_racing_a_cancel_leaves_the_row_cancelled(conn: Connection) -> None:
    stale = _running(conn, Stage.SEPARATE)
    workflow.cancel_job(conn, stale.id)

    _record_attempt(conn, stale, 1, "TimeoutError: network")  # the worker, a moment late

    row = jobs.reload(conn, stale)
    assert (row.status, row.error) == (Status.FAILED, workflow.CANCELLED)


def test_two_defers_holding_one_queueing_lock_give_one_job_and_no_error(
    conn: Connection, database_url: str
) -> None:
    track = make_track(conn)
    outcome: list[Any] = []
    with connect(database_url) as first, connect(database_url, autocommit=True) as second:
        first_id = queue.defer_stage(first, Stage.ANALYZE, track.id, {})  # not committed yet

        def defer_second() -> None:
            try:
                outcome.append(queue.defer_stage(second, Stage.ANALYZE, track.id, {}))
            except Exception as error:  # reported below
                outcome.append(error)

        waiter = threading.Thread(target=defer_second)
        waiter.start()
        time.sleep(0.5)  # the second defer now waits on the first one's unique index entry
        first.commit()
        waiter.join(30)
    assert first_id is not None and outcome == [None]


def test_a_shutdown_requeue_keeps_the_attempts_made_before_it(conn: Connection) -> None:
    job = _running(conn, Stage.DOWNLOAD, attempt=2)  # the second attempt was interrupted

    procrastinate_id = workflow.requeue_after_shutdown(conn, job, {})

    row = conn.execute("SELECT attempts FROM procrastinate_jobs WHERE id = %s",
                       (procrastinate_id,)).fetchone()  # fmt: skip
    assert row is not None and row["attempts"] == 1  # the next run is attempt 2 again


def test_a_cancel_that_loses_to_a_completion_says_the_job_completed(
    conn: Connection, database_url: str
) -> None:
    job = _running(conn, Stage.ANALYZE)
    failures: list[BaseException] = []
    with connect(database_url) as worker:
        worker.execute("UPDATE analysis_jobs SET status = 'completed', progress = 100 "
                       "WHERE id = %s", (job.id,))  # fmt: skip  # holds the row lock

        def cancel() -> None:
            with connect(database_url, autocommit=True) as user:
                try:
                    workflow.cancel_job(user, job.id)
                except PermanentError as error:
                    failures.append(error)

        canceller = threading.Thread(target=cancel)
        canceller.start()
        time.sleep(0.5)  # the cancel now waits for the row
        worker.commit()
        canceller.join(30)
    assert [str(error) for error in failures] == [
        f"job {job.id} completed before it could be cancelled"
    ]
    assert jobs.reload(conn, job).status is Status.COMPLETED
