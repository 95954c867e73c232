"""Job rows: create them and move them through the status machine, with optimistic locking.

Every move is checked by `soundforge.status` before it reaches SQL (a clear error in Python),
then written with `WHERE lock_version = <the version we read>`; the database trigger checks it
again and bumps `lock_version`. Losing that race raises `StaleRowError`: re-read and decide.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from soundforge.errors import PermanentError, StaleRowError
from soundforge.models import JOB_MODELS, Job, Stage
from soundforge.music import parse_uuid
from soundforge.queries import query
from soundforge.status import Status, check_move, check_progress

Connection = psycopg.Connection[Any]


class JobNotFoundError(PermanentError):
    """No job row has the id a user gave."""


def stage_of(job: Job) -> Stage:
    for stage, model in JOB_MODELS.items():
        if type(job) is model:
            return stage
    raise TypeError(f"not a job row: {job!r}")


def create_job(
    conn: Connection,
    stage: Stage,
    track_id: uuid.UUID,
    *,
    model: str | None = None,
    options: dict[str, Any] | None = None,
) -> Job:
    """A new `queued` row in the stage's table (`model`/`options` for separation only)."""
    params: dict[str, Any] = {"id": uuid.uuid4(), "track_id": track_id}
    if stage is Stage.SEPARATE:
        statement = query("insert_processing_job")
        params |= {"model": model or "htdemucs", "options": Jsonb(options or {})}
    else:
        statement = query("insert_job", table=stage.table)
    row = conn.execute(statement, params).fetchone()
    assert row is not None
    return JOB_MODELS[stage].from_row(row)


def get_job(conn: Connection, stage: Stage, job_id: uuid.UUID | str) -> Job | None:
    row = conn.execute(
        query("get_job", table=stage.table), {"id": parse_uuid(job_id, "job id")}
    ).fetchone()
    return JOB_MODELS[stage].from_row(row) if row else None


def find_job(conn: Connection, job_id: uuid.UUID | str) -> Job:
    """The job row with this id, whichever stage it belongs to."""
    job_uuid = parse_uuid(job_id, "job id")
    for stage in Stage:
        job = get_job(conn, stage, job_uuid)
        if job is not None:
            return job
    raise JobNotFoundError(f"no job with id {job_uuid}")


def reload(conn: Connection, job: Job) -> Job:
    fresh = get_job(conn, stage_of(job), job.id)
    if fresh is None:
        raise JobNotFoundError(f"job {job.id} no longer exists (its track was deleted?)")
    return fresh


def advance(
    conn: Connection,
    job: Job,
    status: Status,
    *,
    progress: int | None = None,
    error: str | None = None,
) -> Job:
    """Move `job` to `status` (and `progress`, default: unchanged; 100 on completion).

    Raises `IllegalTransitionError` before touching SQL for a backward move, and
    `StaleRowError` if the row changed since `job` was read.
    """
    check_move(job.status, status, stage_of(job).active_status)
    if progress is None:
        progress = 100 if status is Status.COMPLETED else (job.progress or 0)
    check_progress(job.progress, progress)
    row = conn.execute(
        query("advance_job", table=stage_of(job).table),
        {
            "id": job.id,
            "status": status,
            "progress": progress,
            "error": error if error is not None else job.error,
            "lock_version": job.lock_version,
        },
    ).fetchone()
    if row is None:
        raise StaleRowError(
            f"{stage_of(job).table} {job.id} changed since it was read "
            f"(lock_version {job.lock_version}); re-read it before updating"
        )
    return type(job).from_row(row)


def fail(conn: Connection, job: Job, error: str) -> Job:
    """End a job as `failed` with a readable error."""
    return advance(conn, job, Status.FAILED, error=error or "failed")
