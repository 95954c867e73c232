"""Following pipelines live: `LISTEN soundforge_progress` events, and the state of tracks'
pipelines read from the `soundforge_pipeline` view (an event wakes the reader; the view is the
truth, so a missed or coalesced notification never leaves a display wrong)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from soundforge.db import connect
from soundforge.queries import query

CHANNEL = "soundforge_progress"
STAGES = ("download", "separate", "analyze")
MAX_TRACKS_SHOWN = 1000


@dataclass(frozen=True)
class ProgressEvent:
    track_id: str
    stage: str
    job_id: str
    status: str
    progress: int
    error: str | None = None

    @classmethod
    def parse(cls, payload: str) -> ProgressEvent:
        data = json.loads(payload)
        return cls(
            track_id=str(data["track_id"]),
            stage=str(data["stage"]),
            job_id=str(data["job_id"]),
            status=str(data["status"]),
            progress=int(data.get("progress") or 0),
            error=data.get("error"),
        )


def listen(conn: psycopg.Connection[Any]) -> None:
    """Start listening on an autocommit connection (before creating the work to follow)."""
    conn.execute(f"LISTEN {CHANNEL}")


def events(conn: psycopg.Connection[Any], timeout_s: float) -> Iterator[ProgressEvent | None]:
    """Events as they arrive; None after `timeout_s` seconds without one (a chance to poll)."""
    while True:
        received = False
        for notify in conn.notifies(timeout=timeout_s, stop_after=1):
            received = True
            yield ProgressEvent.parse(notify.payload)
        if not received:
            yield None


def pipeline_rows(
    conn: psycopg.Connection[Any], track_ids: Sequence[uuid.UUID] | None, limit: int = 50
) -> list[dict[str, Any]]:
    """Rows of the `soundforge_pipeline` view, newest track first."""
    params = {"track_ids": list(track_ids) if track_ids is not None else None,
              "limit": min(limit, MAX_TRACKS_SHOWN)}  # fmt: skip
    return list(conn.execute(query("pipeline_for_tracks"), params))


def stage_state(row: dict[str, Any], stage: str) -> tuple[str | None, int, str | None]:
    """(status, progress, error) of one stage in a pipeline row; status None: no job yet."""
    return row[f"{stage}_status"], int(row[f"{stage}_progress"] or 0), row[f"{stage}_error"]


def pipeline_finished(row: dict[str, Any]) -> bool:
    """A track's pipeline has nothing left to run: the download failed, or it completed and
    every stage it fanned out to ended (they are created in the download's transaction)."""
    download, _, _ = stage_state(row, "download")
    if download == "failed":
        return True
    if download != "completed":
        return False
    return all(stage_state(row, stage)[0] in (None, "completed", "failed")
               for stage in ("separate", "analyze"))  # fmt: skip


def pipeline_failed(row: dict[str, Any]) -> bool:
    return any(stage_state(row, stage)[0] == "failed" for stage in STAGES)


def open_listener(conninfo: str) -> psycopg.Connection[Any]:
    conn = connect(conninfo, autocommit=True)
    listen(conn)
    return conn
