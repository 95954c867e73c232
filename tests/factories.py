"""Small builders for rows the tests need (real inserts through the library's own code)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from soundforge import jobs, music
from soundforge.models import Job, Stage, Track


def make_track(conn: psycopg.Connection[Any], title: str = "A Song", **fields: Any) -> Track:
    return music.create_track(conn, music.TrackFields(title=title, **fields))


def make_job(
    conn: psycopg.Connection[Any], stage: Stage, track: Track | None = None, **kwargs: Any
) -> Job:
    track = track or make_track(conn, f"track {uuid.uuid4().hex[:6]}")
    return jobs.create_job(conn, stage, track.id, **kwargs)
