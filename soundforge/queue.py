"""Enqueueing Procrastinate jobs inside our own transactions, through Procrastinate's
versioned SQL functions (`procrastinate_defer_jobs_v1` wrapped by our
`soundforge_defer_stage_v1`, and `procrastinate_cancel_job_v1`).

Procrastinate's Python `defer` uses a connection of its own; calling its SQL API on our
connection is what lets a status change and the jobs it fans out to commit together or not at
all. A queueing lock makes a second `todo` job for the same track and stage impossible: the
job row and its queue job are created by one statement, or neither is.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from soundforge.models import JOB_MODELS, Job, Stage
from soundforge.queries import query
from soundforge.redact import mask_url

Connection = psycopg.Connection[Any]
MAINTENANCE_QUEUE = "maintenance"
# The supervisor's worker groups, one per stage queue (`soundforge run --processes`).
GROUP_NAMES = ("download", "processing", "analysis")


def queueing_lock(stage: Stage, track_id: uuid.UUID) -> str:
    return f"{stage.value}:{track_id}"


def defer(
    conn: Connection,
    task_name: str,
    queue: str,
    args: dict[str, Any],
    *,
    queueing_lock: str | None = None,
) -> int | None:
    """Enqueue a job in the caller's transaction; its id, or None when a job holding the same
    queueing lock is already waiting."""
    row = conn.execute(
        query("defer_job"),
        {"queue": queue, "task_name": task_name, "queueing_lock": queueing_lock,
         "args": Jsonb(args)},
    ).fetchone()  # fmt: skip
    return int(row["id"]) if row and row["id"] is not None else None


def defer_stage(
    conn: Connection, stage: Stage, track_id: uuid.UUID, args: dict[str, Any]
) -> int | None:
    """Enqueue a stage task for a track, with the per-track-and-stage queueing lock."""
    return defer(
        conn,
        stage.task_name,
        stage.queue,
        {"track_id": str(track_id), **args},
        queueing_lock=queueing_lock(stage, track_id),
    )


def queued_job_params(
    stage: Stage,
    track_id: uuid.UUID,
    args: dict[str, Any],
    *,
    source: str | None = None,
    model: str | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters of the statements that create a stage's row with its queue job: a new row
    id, the stage's queue, task and queueing lock, and the task's arguments (with the row id).
    A download's `source` is stored masked for display; `fetch_source` keeps the full one."""
    job_id = uuid.uuid4()
    return {
        "id": job_id,
        "track_id": track_id,
        "queue": stage.queue,
        "task_name": stage.task_name,
        "queueing_lock": queueing_lock(stage, track_id),
        "args": Jsonb({"track_id": str(track_id), "job_id": str(job_id), **args}),
        "source": mask_url(source) if source is not None else None,
        "fetch_source": source,
        "model": model or "htdemucs",
        "options": Jsonb(options or {}),
    }


def follow_up(
    stage: Stage, track_id: uuid.UUID, args: dict[str, Any], *, model: str | None = None
) -> dict[str, Any]:
    """A stage to create and enqueue when a download completes, as the JSON object
    `soundforge_complete_download_v1` takes."""
    params = queued_job_params(stage, track_id, args, model=model)
    return {
        "stage": stage.value,
        "id": str(params["id"]),
        "queue": params["queue"],
        "task_name": params["task_name"],
        "queueing_lock": params["queueing_lock"],
        "args": params["args"].obj,
        "model": params["model"],
    }


def create_queued_job(
    conn: Connection,
    stage: Stage,
    track_id: uuid.UUID,
    args: dict[str, Any],
    *,
    source: str | None = None,
    model: str | None = None,
    options: dict[str, Any] | None = None,
) -> Job | None:
    """Create a stage's job row and enqueue its task, in one statement (the caller's
    transaction); None when a job of that stage is already waiting for the track."""
    params = queued_job_params(stage, track_id, args, source=source, model=model,
                               options=options)  # fmt: skip
    row = conn.execute(query(_INSERT_QUEUED[stage]), params).fetchone()
    return JOB_MODELS[stage].from_row(row) if row else None


_INSERT_QUEUED = {
    Stage.DOWNLOAD: "insert_queued_download_job",
    Stage.SEPARATE: "insert_queued_processing_job",
    Stage.ANALYZE: "insert_queued_analysis_job",
}


def carry_attempts(conn: Connection, procrastinate_job_id: int, attempts: int) -> None:
    """Start a waiting queue job's attempt count at `attempts` (a job deferred again for the
    same row keeps its budget)."""
    conn.execute(query("set_queue_job_attempts"), {"id": procrastinate_job_id,
                                                   "attempts": attempts})  # fmt: skip


def cancel(conn: Connection, procrastinate_job_id: int) -> bool:
    """Cancel a waiting job or request the abort of a running one; False if it had ended."""
    row = conn.execute(query("cancel_queue_job"), {"id": procrastinate_job_id}).fetchone()
    return bool(row and row["id"] is not None)
