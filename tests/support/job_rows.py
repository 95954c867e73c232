"""A track's job rows as tests read them: every row of one stage, oldest first. Production never
needs them all (it reads the newest, `newest_job_for_track`, or the live ones,
`live_jobs_for_track`), so this statement lives with the tests."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg import sql

from soundforge.models import JOB_MODELS, Job, Stage


def stage_rows(conn: psycopg.Connection[Any], stage: Stage, track_id: uuid.UUID) -> list[Job]:
    statement = sql.SQL("SELECT * FROM {} WHERE track_id = %s ORDER BY insert_order").format(
        sql.Identifier(stage.table)
    )
    return [JOB_MODELS[stage].from_row(row) for row in conn.execute(statement, (track_id,))]
