"""Small builders for rows the tests need (real inserts through the library's own code)."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg

from soundforge import jobs, music, workflow
from soundforge.engines import AnalysisOutcome
from soundforge.models import AnalysisJob, Job, Stage, Stem, Track
from soundforge.storage import Storage, stem_relpath


def make_track(conn: psycopg.Connection[Any], title: str = "A Song", **fields: Any) -> Track:
    return music.create_track(conn, music.TrackFields(title=title, **fields))


def make_job(
    conn: psycopg.Connection[Any], stage: Stage, track: Track | None = None, **kwargs: Any
) -> Job:
    track = track or make_track(conn, f"track {uuid.uuid4().hex[:6]}")
    return jobs.create_job(conn, stage, track.id, **kwargs)


def separated(
    conn: psycopg.Connection[Any], storage: Storage, track: Track, files: dict[str, bytes]
) -> tuple[Job, dict[str, Stem]]:
    """A completed separation of `track` whose stems hold `files`, recorded by the statement
    the separate stage completes with; returns the job and its stems by type."""
    job = make_job(conn, Stage.SEPARATE, track)
    paths = {}
    for stem_type, data in files.items():
        relative = stem_relpath(track.id, job.id, stem_type, "flac")
        with storage.atomic_write(relative) as handle:
            handle.write(data)
        paths[stem_type] = storage.resolve(relative)
    done = workflow.complete_separation(conn, job, storage, paths)
    stems = {stem.stem_type: stem for stem in music.list_stems_for_track(conn, track.id)
             if stem.processing_job_id == job.id}  # fmt: skip
    return done, stems


def analysed(
    conn: psycopg.Connection[Any], track: Track, columns: dict[str, Any],
    features: dict[str, Any],
) -> uuid.UUID:
    """A completed analysis of `track`, stored by the statement the analyze stage completes
    with; returns the `analysis_results` id."""
    job = make_job(conn, Stage.ANALYZE, track)
    done = workflow.complete_analysis(conn, job, AnalysisOutcome(columns, features),
                                      "downloads/song.wav")  # fmt: skip
    assert isinstance(done, AnalysisJob) and done.results is not None
    return uuid.UUID(done.results["analysis_result_id"])
