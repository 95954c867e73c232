"""The pipeline's workflow (the original's `Jobs` context): which rows and queue jobs exist,
and how a stage starts, fails and completes. A completing download creates and enqueues the
separate and analyze stages in the same transaction as its own status change, so they are never
lost and never doubled; a per-track row lock and Procrastinate's queueing lock stop duplicates.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from soundforge import jobs, music, queue
from soundforge.errors import PermanentError, StaleRowError, TransientError
from soundforge.models import (
    ANALYSIS_RESULT_COLUMNS,
    JOB_MODELS,
    DownloadJob,
    Job,
    Stage,
    Track,
)
from soundforge.queries import query
from soundforge.redact import MASK
from soundforge.separation.registry import check_model_name
from soundforge.status import Status, is_terminal
from soundforge.storage import stems_relpath

if TYPE_CHECKING:
    from soundforge.engines import AnalysisOutcome, Engines
    from soundforge.file_store import FileStore
    from soundforge.sources import StoredAudio, TrackMetadata

log = logging.getLogger(__name__)
Connection = psycopg.Connection[Any]
CANCELLED = "cancelled"


@dataclass(frozen=True)
class PipelineOptions:
    """What follows a download: stems (with which model) and analysis. An unknown model is
    refused here (`UnknownModelError`, permanent), before any track or job row is made."""

    stems: bool = True
    analysis: bool = True
    model: str = "htdemucs"

    def __post_init__(self) -> None:
        check_model_name(self.model)

    def as_args(self) -> dict[str, Any]:
        return {"stems": self.stems, "analysis": self.analysis, "model": self.model}


@dataclass(frozen=True)
class StartedStage:
    """A row a task has taken, and what its start statement read with it (None: not known
    yet): the stored path of its track's downloaded audio (separation, analysis), or its
    track and the source to fetch (a download)."""

    job: Job
    audio_path: str | None = None
    track: Track | None = None
    fetch_source: str | None = None


def _started(stage: Stage, row: dict[str, Any]) -> StartedStage:
    """The StartedStage of a start statement's row (`start_job`, `start_download_job`)."""
    job = JOB_MODELS[stage].from_row(row)
    if stage is not Stage.DOWNLOAD:
        return StartedStage(job, row["audio_path"])
    track = None
    if row["track_found"]:  # its columns come prefixed `track_` (the job's `track_id`: its id)
        track = Track.from_row({name.removeprefix("track_"): value for name, value in row.items()
                                if name.startswith("track_")})  # fmt: skip
    return StartedStage(job, track=track, fetch_source=row["fetch_source"])


@dataclass(frozen=True)
class ImportedTrack:
    track: Track
    download_job: Job
    new_download: bool


def _track_fields(metadata: TrackMetadata, *, force: bool = False) -> music.TrackFields:
    """The track row for `metadata`; with `force` it carries no source key, so it is a new
    track even when the same file or URL was added before."""
    return music.TrackFields(
        title=metadata.title,
        spotify_id=metadata.spotify_id,
        spotify_url=metadata.spotify_url,
        artist=metadata.artist,
        album=metadata.album,
        album_art_url=metadata.album_art_url,
        duration=metadata.duration,
        source_key=None if force else metadata.source_key,
    )


def _attach_queue_job(
    conn: Connection, job: Job, procrastinate_job_id: int, attempts: int | None = None
) -> Job:
    """Record which queue job drives a row (and its attempts), optimistically locked."""
    row = conn.execute(
        query("set_job_queue_info", table=job_table(job)),
        {"id": job.id, "procrastinate_job_id": procrastinate_job_id,
         "attempts": job.attempts if attempts is None else attempts,
         "lock_version": job.lock_version},
    ).fetchone()  # fmt: skip
    if row is None:
        raise StaleRowError(f"{job_table(job)} {job.id} changed while taking its queue job")
    return type(job).from_row(row)


def job_table(job: Job) -> str:
    return jobs.stage_of(job).table


def import_track(
    conn: Connection, metadata: TrackMetadata, options: PipelineOptions, *, force: bool = False
) -> ImportedTrack:
    """Find or create the track and give it a download job, enqueued, atomically.

    A new track and its download are one statement. A track that already has a queued, running
    or completed download is left alone (unless `force`): importing the same Spotify id, URL or
    local file (same path, size and modification time) twice, or 200 times at once, gives one
    job, and the track keeps the stages it completed. With `force`, a Spotify track gets a new
    download; a URL or file becomes a new track.
    """
    fields = _track_fields(metadata, force=force)
    imported = _import_new_track(conn, fields, metadata.origin, options)
    if imported is not None:
        return imported
    with conn.transaction():
        track, created = music.find_or_create_track(conn, fields)
        if not created:  # an existing track: serialise with other imports, reuse its download
            conn.execute(query("lock_track"), {"track_id": track.id})
            live = conn.execute(
                query("live_jobs_for_track", table=Stage.DOWNLOAD.table), {"track_id": track.id}
            ).fetchone()
            if live is not None and not force:
                return ImportedTrack(track, DownloadJob.from_row(live), new_download=False)
        job = queue.create_queued_job(
            conn, Stage.DOWNLOAD, track.id, options.as_args(), source=metadata.origin
        )
        if job is None:  # a download was queued by hand (same queueing lock) meanwhile
            raise TransientError(f"a download of track {track.id} is already waiting")
        _log_queued_download(track.id, job)
        return ImportedTrack(track, job, new_download=True)


def import_sources(
    conn: Connection,
    engines: Engines,
    sources: list[str],
    options: PipelineOptions,
    *,
    force: bool = False,
) -> list[ImportedTrack]:
    """Expand each source (a file, a URL, a Spotify link: the sources engine applies the
    input policy) into tracks and import each one; `soundforge add` and the web's Add form."""
    expanded = [metadata for source in sources for metadata in engines.expand(source)]
    return [import_track(conn, metadata, options, force=force) for metadata in expanded]


def _import_new_track(
    conn: Connection, fields: music.TrackFields, source: str, options: PipelineOptions
) -> ImportedTrack | None:
    """Create the track with its queued download in one statement; None when a track with
    the same Spotify id exists already."""
    track_id = uuid.uuid4()
    # The statement names the track `track_id`; `id` is the download row's (the job's wins).
    params = fields.params(track_id) | queue.queued_job_params(
        Stage.DOWNLOAD, track_id, options.as_args(), source=source
    )
    row = conn.execute(query("insert_track_with_queued_download"), params).fetchone()
    if row is None:
        return None
    track = Track(id=track_id, inserted_at=row["track_inserted_at"],
                  updated_at=row["track_updated_at"], **fields.track_values())  # fmt: skip
    job = DownloadJob.from_row(row)
    _log_queued_download(track_id, job)
    return ImportedTrack(track, job, new_download=True)


def _log_queued_download(track_id: uuid.UUID, job: Job) -> None:
    log.info("track %s: download job %s queued", track_id, job.id,
             extra={"track_id": str(track_id), "job_id": str(job.id)})  # fmt: skip


def download_metadata(conn: Connection, started: StartedStage) -> TrackMetadata:
    """Rebuild what the sources engine needs to fetch a track's audio from its rows (those the
    start statement read, else read now)."""
    from soundforge.sources import TrackMetadata

    job = started.job
    track = started.track or music.require_track(conn, job.track_id)
    origin = started.fetch_source if started.track is not None else fetch_source(conn, job)
    if origin is None:
        previous = conn.execute(
            query("newest_download_source"), {"track_id": track.id}
        ).fetchone()
        origin = previous["source"] if previous else None
    if origin is None and track.spotify_id:
        origin = f"spotify:track:{track.spotify_id}"
    if origin is None:
        raise PermanentError(f"track {track.id} has no source to download its audio from")
    return TrackMetadata(
        title=track.title, artist=track.artist, album=track.album,
        album_art_url=track.album_art_url, duration=track.duration,
        spotify_id=track.spotify_id, spotify_url=track.spotify_url, origin=origin,
    )  # fmt: skip


def fetch_source(conn: Connection, job: Job) -> str | None:
    """The source a download fetches: its row shows it masked; the credential it needs, when
    masking changed it, is read from `download_credentials` (not visible to any view)."""
    shown: str | None = getattr(job, "source", None)
    if shown is None or MASK not in shown:
        return shown
    row = conn.execute(query("download_fetch_source"), {"id": job.id}).fetchone()
    return str(row["source"]) if row and row["source"] is not None else shown


def begin_stage(
    conn: Connection,
    stage: Stage,
    track_id: uuid.UUID,
    job_id: uuid.UUID | None,
    *,
    procrastinate_job_id: int,
    attempt: int,
    force: bool = False,
    model: str | None = None,
) -> StartedStage | None:
    """The row a starting task works on, moved to its active status; None: nothing to do.

    Given a row id, that row (a finished row is not touched: its work is done or cancelled).
    Given only a track, the row an earlier attempt of the same queue job created (a retry), or
    else a new row, unless the stage already completed for it (and not `force`).
    """
    if job_id is None:
        earlier = conn.execute(
            query("active_rows_for_queue_job", table=stage.table),
            {"procrastinate_job_id": procrastinate_job_id},
        ).fetchone()
        job_id = earlier["id"] if earlier is not None else None
    if job_id is not None:
        start = (query("start_download_job") if stage is Stage.DOWNLOAD
                 else query("start_job", table=stage.table))  # fmt: skip
        row = conn.execute(
            start,
            {"id": job_id, "status": stage.active_status,
             "procrastinate_job_id": procrastinate_job_id, "attempts": attempt},
        ).fetchone()  # fmt: skip
        if row is not None:  # the common path: one statement
            return _started(stage, row)
    with conn.transaction():
        music.require_track(conn, track_id)
        conn.execute(query("lock_track"), {"track_id": track_id})
        if job_id is not None:
            job = jobs.get_job(conn, stage, job_id)
            if job is None:
                raise jobs.JobNotFoundError(f"no {stage.value} job with id {job_id}")
        else:
            if not force and _has_completed(conn, stage, track_id):
                log.info("track %s: %s already completed; nothing to do", track_id, stage.value)
                return None
            job = jobs.create_job(conn, stage, track_id, model=model)
        if is_terminal(job.status):
            log.info("%s job %s is already %s; nothing to do", stage.value, job.id, job.status)
            return None
        job = _attach_queue_job(conn, job, procrastinate_job_id, max(job.attempts, attempt))
        if job.status != stage.active_status:
            job = jobs.advance(conn, job, stage.active_status)
        return StartedStage(job)


def _has_completed(conn: Connection, stage: Stage, track_id: uuid.UUID) -> bool:
    row = conn.execute(
        query("newest_job_for_track", table=stage.table), {"track_id": track_id}
    ).fetchone()
    return bool(row and row["status"] == Status.COMPLETED)


def downloaded_audio(conn: Connection, started: StartedStage) -> str:
    """The key of the track's downloaded audio, which separation and analysis read (through
    `FileStore.local_file`)."""
    track_id = started.job.track_id
    relative = started.audio_path
    if relative is None:
        row = conn.execute(query("newest_completed_download"), {"track_id": track_id}).fetchone()
        relative = row["output_path"] if row else None
    if relative is None:
        raise PermanentError(f"track {track_id} has no downloaded audio yet; download it first")
    return str(relative)


def record_failed_attempt(conn: Connection, job: Job, attempt: int, error: str) -> Job:
    """A retryable failure: the row keeps its status and records the attempt and its error."""
    row = conn.execute(
        query("record_failed_attempt", table=job_table(job)),
        {"id": job.id, "attempts": attempt, "lock_version": job.lock_version,
         "error": f"attempt {attempt} failed: {error}"},
    ).fetchone()  # fmt: skip
    if row is None:
        raise StaleRowError(f"{job_table(job)} {job.id} changed during the attempt")
    return type(job).from_row(row)


def fail_job(conn: Connection, job: Job, error: str) -> Job:
    """End a row `failed`, unless it already ended (e.g. cancelled meanwhile)."""
    while True:
        if is_terminal(job.status):
            return job
        try:
            return jobs.fail(conn, job, error)
        except StaleRowError:
            job = jobs.reload(conn, job)


def complete_download(
    conn: Connection, job: Job, stored: StoredAudio, options: PipelineOptions
) -> dict[Stage, uuid.UUID]:
    """Complete the download and create and enqueue the stages that follow, atomically (one
    statement); returns the follow-up rows created (a stage already waiting is not doubled)."""
    wanted: list[dict[str, Any]] = []
    if options.stems:
        wanted.append(queue.follow_up(Stage.SEPARATE, job.track_id, {"model": options.model},
                                      model=options.model))  # fmt: skip
    if options.analysis:
        wanted.append(queue.follow_up(Stage.ANALYZE, job.track_id, {}))
    rows = conn.execute(
        query("complete_download_and_fan_out"),
        {"id": job.id, "output_path": stored.relative_path, "file_size": stored.file_size,
         "lock_version": job.lock_version, "duration": max(1, round(stored.duration_s)),
         "follow_ups": Jsonb(wanted), "sha256": stored.sha256},
    ).fetchall()  # fmt: skip
    if not rows:
        raise StaleRowError(f"download_jobs {job.id} changed before completion")
    created = {Stage(row["stage"]): row["created_id"] for row in rows
               if row["stage"] != Stage.DOWNLOAD}  # fmt: skip
    for follow_up in wanted:
        if Stage(follow_up["stage"]) not in created:
            log.info("track %s: a %s job is already waiting; not queueing another",
                     job.track_id, follow_up["stage"])  # fmt: skip
    return created


def complete_separation(
    conn: Connection, job: Job, storage: FileStore, stem_paths: dict[str, Path]
) -> Job:
    """Record the stem files and complete the row, in one statement."""
    stems = sorted(stem_paths.items())
    row = conn.execute(
        query("complete_processing_job"),
        {"id": job.id, "output_path": stems_relpath(job.track_id, job.id),
         "lock_version": job.lock_version,
         "stem_types": [stem_type for stem_type, _ in stems],
         "file_paths": [storage.relative(path) for _, path in stems],
         "file_sizes": [path.stat().st_size for _, path in stems]},
    ).fetchone()  # fmt: skip
    if row is None:
        raise StaleRowError(f"processing_jobs {job.id} changed before completion")
    return type(job).from_row(row)


def stems_dir(storage: FileStore, job: Job) -> Path:
    """The local folder one separation run writes its stems into (stored by `publish`)."""
    return storage.output_dir(stems_relpath(job.track_id, job.id))


def complete_analysis(
    conn: Connection, job: Job, outcome: AnalysisOutcome, audio_relpath: str
) -> Job:
    """Store the analysis result and complete the row, in one statement (nothing is stored
    when the row changed meanwhile, e.g. a cancel)."""
    result_id = uuid.uuid4()
    row = conn.execute(
        query("complete_analysis_job"),
        {"id": job.id, "lock_version": job.lock_version, "result_id": result_id,
         "features": Jsonb(outcome.features),
         "results": Jsonb({"type": "full", "file_path": audio_relpath,
                           "analysis_result_id": str(result_id)}),
         **{name: outcome.columns.get(name) for name in ANALYSIS_RESULT_COLUMNS}},
    ).fetchone()  # fmt: skip
    if row is None:
        raise StaleRowError(f"analysis_jobs {job.id} changed before completion")
    return type(job).from_row(row)


def cancel_job(conn: Connection, job_id: uuid.UUID | str) -> Job:
    """Cancel a queued job or abort a running one; the row ends `failed` with `cancelled`.
    A job that completes (or fails) while this runs is reported as such (`PermanentError`)."""
    with conn.transaction():
        job = jobs.find_job(conn, job_id)
        if is_terminal(job.status):
            raise PermanentError(f"job {job.id} is already {job.status}; nothing to cancel")
        if job.procrastinate_job_id is not None:
            queue.cancel(conn, job.procrastinate_job_id)
        ended = fail_job(conn, job, CANCELLED)
        if ended.error != CANCELLED:  # it ended on its own meanwhile: say so, change nothing
            raise PermanentError(f"job {job.id} {ended.status} before it could be cancelled")
        return ended


def retry_job(conn: Connection, job_id: uuid.UUID | str, options: PipelineOptions) -> Job:
    """A failed stage gets a new row (the old one stays as history) and a new queue job."""
    with conn.transaction():
        old = jobs.find_job(conn, job_id)
        if old.status is not Status.FAILED:
            raise PermanentError(f"job {old.id} is {old.status}; only a failed job can be retried")
        stage = jobs.stage_of(old)
        conn.execute(query("lock_track"), {"track_id": old.track_id})
        model = getattr(old, "model", None)
        args: dict[str, Any] = {}
        if stage is Stage.DOWNLOAD:
            args = _original_options(conn, old, options).as_args()
        elif stage is Stage.SEPARATE:
            args = {"model": model or options.model}
        new = queue.create_queued_job(
            conn, stage, old.track_id, args, source=fetch_source(conn, old),
            model=model, options=getattr(old, "options", None),
        )  # fmt: skip
        if new is None:
            raise PermanentError(
                f"a {stage.value} job for track {old.track_id} is already waiting in the queue"
            )
        return new


def _original_options(conn: Connection, job: Job, default: PipelineOptions) -> PipelineOptions:
    """The pipeline options a download was queued with (from its queue job's arguments), or
    `default` when its queue job is gone (pruned)."""
    row = None
    if job.procrastinate_job_id is not None:
        row = conn.execute(query("queue_job_args"), {"id": job.procrastinate_job_id}).fetchone()
    if row is None:
        return default
    queued: dict[str, Any] = row["args"]
    return PipelineOptions(
        stems=bool(queued.get("stems", default.stems)),
        analysis=bool(queued.get("analysis", default.analysis)),
        model=str(queued.get("model", default.model)),
    )


def requeue_after_shutdown(conn: Connection, job: Job, args: dict[str, Any]) -> int | None:
    """A job interrupted by a worker shutdown goes back to the queue for the same row, with
    the attempts it made before the interrupted one (the interruption is not its fault)."""
    with conn.transaction():
        job = jobs.reload(conn, job)
        if is_terminal(job.status):
            return None
        stage = jobs.stage_of(job)
        procrastinate_id = queue.defer_stage(
            conn, stage, job.track_id, {**args, "job_id": str(job.id)}
        )
        if procrastinate_id is not None:
            # the attempts made before the interrupted one still count against the budget
            queue.carry_attempts(conn, procrastinate_id, max(0, job.attempts - 1))
            _attach_queue_job(conn, job, procrastinate_id)
        return procrastinate_id
