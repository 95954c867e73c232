"""Enqueueing Procrastinate jobs inside our own transactions, through Procrastinate's
versioned SQL functions (`procrastinate_defer_jobs_v1`, `procrastinate_cancel_job_v1`).

Procrastinate's Python `defer` uses a connection of its own; calling its SQL API on our
connection is what lets a status change and the jobs it fans out to commit together or not at
all. A queueing lock makes a second `todo` job for the same track and stage impossible.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from soundforge.models import Stage
from soundforge.queries import query

Connection = psycopg.Connection[Any]
QUEUEING_LOCK_INDEX = "procrastinate_jobs_queueing_lock_idx_v1"
MAINTENANCE_QUEUE = "maintenance"


def queueing_lock(stage: Stage, track_id: uuid.UUID) -> str:
    return f"{stage.value}:{track_id}"


def defer(
    conn: Connection,
    task_name: str,
    queue: str,
    args: dict[str, Any],
    *,
    lock: str | None = None,
    queueing_lock: str | None = None,
    priority: int = 0,
) -> int | None:
    """Enqueue a job in the caller's transaction; its id, or None when a job holding the same
    queueing lock is already waiting."""
    try:
        with conn.transaction():  # a savepoint: a lock conflict must not abort the caller
            row = conn.execute(
                query("defer_job"),
                {
                    "queue": queue,
                    "task_name": task_name,
                    "priority": priority,
                    "lock": lock,
                    "queueing_lock": queueing_lock,
                    "args": Jsonb(args),
                },
            ).fetchone()
    except psycopg.errors.UniqueViolation as error:
        if error.diag.constraint_name == QUEUEING_LOCK_INDEX:
            return None
        raise
    assert row is not None
    return int(row["id"])


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


def cancel(conn: Connection, procrastinate_job_id: int) -> bool:
    """Cancel a waiting job or request the abort of a running one; False if it had ended."""
    row = conn.execute(query("cancel_queue_job"), {"id": procrastinate_job_id}).fetchone()
    return bool(row and row["id"] is not None)
