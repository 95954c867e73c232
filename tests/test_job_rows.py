"""Job rows: creation, forward moves with progress, failure, and optimistic locking."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from soundforge import jobs
from soundforge.db import connect
from soundforge.errors import IllegalTransitionError, StaleRowError
from soundforge.models import DownloadJob, ProcessingJob, Stage
from soundforge.status import Status
from tests.factories import make_job, make_track
from tests.support.job_rows import stage_rows


def test_created_job_rows_start_queued_at_zero(conn: psycopg.Connection[Any]) -> None:
    track = make_track(conn)
    download = jobs.create_job(conn, Stage.DOWNLOAD, track.id)
    separation = jobs.create_job(
        conn, Stage.SEPARATE, track.id, model="htdemucs_6s", options={"shifts": 1}
    )
    assert isinstance(download, DownloadJob) and isinstance(separation, ProcessingJob)
    assert (download.status, download.progress, download.lock_version) == (Status.QUEUED, 0, 1)
    assert separation.model == "htdemucs_6s" and separation.options == {"shifts": 1}
    assert jobs.find_job(conn, separation.id) == separation
    assert stage_rows(conn, Stage.DOWNLOAD, track.id) == [download]


def test_advance_moves_forward_with_progress_and_completes_at_100(
    conn: psycopg.Connection[Any],
) -> None:
    job = make_job(conn, Stage.DOWNLOAD)
    running = jobs.advance(conn, job, Status.DOWNLOADING, progress=10)
    halfway = jobs.advance(conn, running, Status.DOWNLOADING, progress=50)
    done = jobs.advance(conn, halfway, Status.COMPLETED)
    assert (done.status, done.progress, done.lock_version) == (Status.COMPLETED, 100, 4)
    with pytest.raises(IllegalTransitionError, match="never decreases"):
        jobs.advance(conn, halfway, Status.DOWNLOADING, progress=20)


def test_fail_records_a_readable_error_and_is_final(conn: psycopg.Connection[Any]) -> None:
    job = make_job(conn, Stage.ANALYZE)
    failed = jobs.fail(conn, job, "not an audio file")
    assert failed.status is Status.FAILED and failed.error == "not an audio file"
    with pytest.raises(IllegalTransitionError, match="failed is final"):
        jobs.advance(conn, failed, Status.PROCESSING)


def test_a_stale_update_fails_loudly(conn: psycopg.Connection[Any]) -> None:
    job = make_job(conn, Stage.SEPARATE)
    jobs.advance(conn, job, Status.PROCESSING, progress=5)
    with pytest.raises(StaleRowError, match="changed since it was read"):
        jobs.advance(conn, job, Status.PROCESSING, progress=6)


def test_two_updaters_with_the_same_version_exactly_one_wins(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    job = make_job(conn, Stage.DOWNLOAD)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def updater(target: Status) -> None:
        with connect(database_url, autocommit=True) as own:
            barrier.wait()
            try:
                error = "cancelled" if target is Status.FAILED else None
                jobs.advance(own, job, target, error=error)
                outcomes.append("won")
            except StaleRowError:
                outcomes.append("stale")

    threads = [
        threading.Thread(target=updater, args=(Status.DOWNLOADING,)),
        threading.Thread(target=updater, args=(Status.FAILED,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["stale", "won"]
    assert jobs.reload(conn, job).lock_version == job.lock_version + 1
