"""The forward-only status machine: Python's rules, and the trigger enforcing the same rules
on raw SQL, pair by pair."""

from __future__ import annotations

import itertools
from typing import Any

import psycopg
import pytest
from psycopg import sql

from soundforge import jobs
from soundforge.errors import IllegalTransitionError
from soundforge.models import Stage
from soundforge.status import Status, can_move, check_move, check_progress, is_active, is_terminal
from tests.factories import make_job

ALL_PAIRS = list(itertools.product(Status, Status))


def test_python_rules_allow_only_forward_moves_out_of_non_terminal_statuses() -> None:
    allowed = {(a, b) for a, b in ALL_PAIRS if can_move(a, b) and a != b}
    assert allowed == {
        (Status.QUEUED, Status.DOWNLOADING),
        (Status.QUEUED, Status.PROCESSING),
        (Status.QUEUED, Status.COMPLETED),
        (Status.QUEUED, Status.FAILED),
        (Status.DOWNLOADING, Status.PROCESSING),
        (Status.DOWNLOADING, Status.COMPLETED),
        (Status.DOWNLOADING, Status.FAILED),
        (Status.PROCESSING, Status.COMPLETED),
        (Status.PROCESSING, Status.FAILED),
    }
    assert is_terminal("completed") and is_terminal("failed") and not is_terminal("queued")
    assert is_active("downloading") and is_active("processing") and not is_active("queued")
    with pytest.raises(IllegalTransitionError, match="completed is final"):
        check_move(Status.COMPLETED, Status.QUEUED)
    with pytest.raises(IllegalTransitionError, match="never decreases"):
        check_progress(50, 40)
    with pytest.raises(IllegalTransitionError, match="between 0 and 100"):
        check_progress(0, 101)


def _force_status(conn: psycopg.Connection[Any], table: str, job_id: Any, status: str) -> None:
    """Walk a fresh row to `status` along a legal path (queued -> status)."""
    if status != "queued":
        conn.execute(
            sql.SQL("UPDATE {} SET status = %s WHERE id = %s").format(sql.Identifier(table)),
            (status, job_id),
        )


@pytest.mark.parametrize("stage", list(Stage))
def test_trigger_rejects_exactly_the_moves_python_rejects_in_raw_sql(
    conn: psycopg.Connection[Any], stage: Stage
) -> None:
    for current, target in ALL_PAIRS:
        if not can_move(Status.QUEUED, current, stage.active_status) and current != "queued":
            continue  # a status this table's rows never reach
        job = make_job(conn, stage)
        _force_status(conn, stage.table, job.id, current)
        statement = sql.SQL("UPDATE {} SET status = %s WHERE id = %s").format(
            sql.Identifier(stage.table)
        )
        if can_move(current, target, stage.active_status):
            conn.execute(statement, (target.value, job.id))
        else:
            with pytest.raises(psycopg.errors.CheckViolation, match="illegal status change"):
                conn.execute(statement, (target.value, job.id))


def test_raw_update_of_a_completed_row_back_to_queued_fails_saying_why(
    conn: psycopg.Connection[Any],
) -> None:
    job = make_job(conn, Stage.DOWNLOAD)
    conn.execute("UPDATE download_jobs SET status = 'completed' WHERE id = %s", (job.id,))
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("UPDATE download_jobs SET status = 'queued' WHERE id = %s", (job.id,))
    message = str(raised.value)
    assert "completed -> queued" in message and "completed is final" in message


def test_trigger_rejects_decreasing_or_out_of_range_progress_and_unknown_statuses(
    conn: psycopg.Connection[Any],
) -> None:
    job = make_job(conn, Stage.ANALYZE)
    conn.execute("UPDATE analysis_jobs SET progress = 40 WHERE id = %s", (job.id,))
    with pytest.raises(psycopg.errors.CheckViolation, match="never decreases"):
        conn.execute("UPDATE analysis_jobs SET progress = 39 WHERE id = %s", (job.id,))
    with pytest.raises(psycopg.errors.CheckViolation, match="between 0 and 100"):
        conn.execute("UPDATE analysis_jobs SET progress = 101 WHERE id = %s", (job.id,))
    with pytest.raises(psycopg.errors.CheckViolation, match="invalid status"):
        conn.execute("UPDATE analysis_jobs SET status = 'paused' WHERE id = %s", (job.id,))


def test_every_update_bumps_lock_version_and_updated_at(conn: psycopg.Connection[Any]) -> None:
    job = make_job(conn, Stage.SEPARATE)
    conn.execute("UPDATE processing_jobs SET updated_at = '2000-01-01' WHERE id = %s", (job.id,))
    conn.execute("UPDATE processing_jobs SET progress = 5 WHERE id = %s", (job.id,))
    row = conn.execute(
        "SELECT lock_version, updated_at FROM processing_jobs WHERE id = %s", (job.id,)
    ).fetchone()
    assert row is not None
    assert row["lock_version"] == job.lock_version + 2
    assert row["updated_at"].year >= 2026


@pytest.mark.parametrize("stage", list(Stage))
def test_a_row_never_takes_another_stages_working_status(
    conn: psycopg.Connection[Any], stage: Stage
) -> None:
    other = Status.PROCESSING if stage is Stage.DOWNLOAD else Status.DOWNLOADING
    job = make_job(conn, stage)
    with pytest.raises(IllegalTransitionError, match=f"works as {stage.active_status}"):
        jobs.advance(conn, job, other)
    statement = sql.SQL("UPDATE {} SET status = %s WHERE id = %s").format(
        sql.Identifier(stage.table)
    )
    with pytest.raises(psycopg.errors.CheckViolation, match=f"never {other}"):
        conn.execute(statement, (other.value, job.id))


def test_illegal_move_raises_in_python_before_reaching_sql(conn: psycopg.Connection[Any]) -> None:
    job = make_job(conn, Stage.DOWNLOAD)
    done = jobs.advance(conn, job, Status.COMPLETED)
    with pytest.raises(IllegalTransitionError, match="completed -> downloading"):
        jobs.advance(conn, done, Status.DOWNLOADING)
    assert jobs.reload(conn, done).lock_version == done.lock_version  # no UPDATE was sent
