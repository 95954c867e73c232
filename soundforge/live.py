"""Following pipelines live: `LISTEN soundforge_progress` events, the state of tracks'
pipelines read from the `soundforge_pipeline` view (an event wakes the reader; the view is the
truth, so a missed or coalesced notification never leaves a display wrong), and the summary of
a finished pipeline."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from soundforge import music
from soundforge.db import connect
from soundforge.file_store import FileStore
from soundforge.models import Stage
from soundforge.queries import query

CHANNEL = "soundforge_progress"
STAGES = tuple(stage.value for stage in Stage)
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


@dataclass(frozen=True)
class JobState:
    """A job row as the database has it (the `soundforge_jobs` view)."""

    track_id: str
    stage: str
    job_id: str
    status: str
    progress: int
    error: str | None


def job_state(conn: psycopg.Connection[Any], event: ProgressEvent) -> JobState | None:
    """The current state of the row an event names, read from the database; None when the
    event names no such row. Only the event's stage and job id are used: anyone who can
    connect can send a NOTIFY, so its status, progress and error are never shown."""
    try:
        job_id = uuid.UUID(event.job_id)
        Stage(event.stage)
    except ValueError:
        return None
    row = conn.execute(query("job_state"), {"job_id": job_id, "stage": event.stage}).fetchone()
    if row is None:
        return None
    return JobState(track_id=str(row["track_id"]), stage=row["stage"], job_id=str(job_id),
                    status=str(row["status"]), progress=int(row["progress"] or 0),
                    error=row["error"])  # fmt: skip


def listen(conn: psycopg.Connection[Any]) -> None:
    """Start listening on an autocommit connection (before creating the work to follow)."""
    conn.execute(f"LISTEN {CHANNEL}")


def events(conn: psycopg.Connection[Any], timeout_s: float) -> Iterator[ProgressEvent | None]:
    """Events as they arrive; None after `timeout_s` seconds without one (a chance to poll),
    and for a payload that is no progress event (anyone can NOTIFY the channel)."""
    while True:
        received = False
        for notify in conn.notifies(timeout=timeout_s, stop_after=1):
            received = True
            try:
                yield ProgressEvent.parse(notify.payload)
            except (ValueError, KeyError, TypeError):
                yield None
        if not received:
            yield None


def pipeline_rows(
    conn: psycopg.Connection[Any], track_ids: Sequence[uuid.UUID] | None, limit: int = 50
) -> list[dict[str, Any]]:
    """Each track's pipeline (the track list's rows: newest job of each stage), newest first."""
    wanted = music.TrackQuery(track_ids=tuple(track_ids) if track_ids is not None else None,
                              limit=min(limit, MAX_TRACKS_SHOWN))  # fmt: skip
    return music.track_page(conn, wanted).rows


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


@dataclass(frozen=True)
class StoredStem:
    stem_type: str
    file_path: str | None
    """As stored: the key, relative to the storage root."""
    location: str | None
    """Where it is: an absolute path, or an s3:// URL."""
    size_bytes: int | None


@dataclass(frozen=True)
class PipelineSummary:
    """What a finished pipeline stored for one track (`soundforge add --wait`, the demo)."""

    track_id: uuid.UUID
    title: str
    stages: dict[str, str | None]
    errors: dict[str, str]
    tempo_bpm: float | None
    key: str | None
    stems: list[StoredStem] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """Download and analysis completed; separation completed or was not asked for."""
        return (self.stages.get("download") == "completed"
                and self.stages.get("analyze") == "completed"
                and self.stages.get("separate") in (None, "completed"))  # fmt: skip


def summarize(
    conn: psycopg.Connection[Any], row: dict[str, Any], storage: FileStore
) -> PipelineSummary:
    """The summary of one finished pipeline row (from `pipeline_rows`)."""
    track_id = row["track_id"]
    states = {stage: stage_state(row, stage) for stage in STAGES}
    result = music.get_analysis_result_for_track(conn, track_id)
    stems = []
    for stem in music.list_stems_for_track(conn, track_id):
        location = storage.location(stem.file_path) if stem.file_path else None
        stems.append(StoredStem(stem.stem_type, stem.file_path, location, stem.file_size))
    return PipelineSummary(
        track_id=track_id,
        title=row["title"] or str(track_id),
        stages={stage: state[0] for stage, state in states.items()},
        errors={stage: state[2] or "" for stage, state in states.items() if state[0] == "failed"},
        tempo_bpm=result.tempo if result else None,
        key=result.key if result else None,
        stems=stems,
    )


def stored_files(
    conn: psycopg.Connection[Any], track_id: uuid.UUID, storage: FileStore
) -> dict[str, str]:
    """Where a track's files are (its downloaded audio, then the stems of its newest
    separation), as paths or s3:// URLs."""
    files = {}
    row = conn.execute(query("newest_completed_download"), {"track_id": track_id}).fetchone()
    if row and row["output_path"]:
        files["download"] = storage.location(row["output_path"])
    for stem in music.list_stems_for_track(conn, track_id):
        if stem.file_path and stem.stem_type not in files:  # newest run first
            files[stem.stem_type] = storage.location(stem.file_path)
    return files


def open_listener(conninfo: str) -> psycopg.Connection[Any]:
    conn = connect(conninfo, autocommit=True)
    listen(conn)
    return conn
