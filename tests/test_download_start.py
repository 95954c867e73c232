"""A download's start statement, pinned against a real PostgreSQL: it returns the row's track
and the source it fetches (the credential-bearing form where the row shows it masked), so no
further reads come before the fetch."""

from __future__ import annotations

from typing import Any

import psycopg

from soundforge import jobs, music, queue, workflow
from soundforge.models import Stage
from soundforge.sources import TrackMetadata

Connection = psycopg.Connection[Any]
SECRET_URL = "https://user:hunter2@example.com/song.mp3?X-Amz-Signature=abc"


def _metadata(origin: str) -> TrackMetadata:
    return TrackMetadata(title="Song", artist="Band", album="Album", album_art_url=None,
                         duration=4, spotify_id=None, spotify_url=None,
                         origin=origin)  # fmt: skip


def _start(conn: Connection, stage: Stage, job_id: Any, track_id: Any) -> workflow.StartedStage:
    queue_id = queue.defer(conn, stage.task_name, stage.queue, {})
    assert queue_id is not None
    started = workflow.begin_stage(conn, stage, track_id, job_id,
                                   procrastinate_job_id=queue_id, attempt=1)  # fmt: skip
    assert started is not None
    return started


def test_a_download_start_returns_its_track_and_the_credential_bearing_source(
    conn: Connection,
) -> None:
    imported = workflow.import_track(conn, _metadata(SECRET_URL), workflow.PipelineOptions())
    started = _start(conn, Stage.DOWNLOAD, imported.download_job.id, imported.track.id)
    assert started.track == music.require_track(conn, imported.track.id)
    assert started.fetch_source == SECRET_URL  # the row itself shows it masked
    assert "hunter2" not in str(jobs.reload(conn, started.job))
    metadata = workflow.download_metadata(conn, started)
    assert (metadata.title, metadata.artist, metadata.origin) == ("Song", "Band", SECRET_URL)


def test_a_download_start_of_a_source_without_secrets_fetches_the_stored_source(
    conn: Connection,
) -> None:
    imported = workflow.import_track(conn, _metadata("https://example.com/a.mp3"),
                                     workflow.PipelineOptions())  # fmt: skip
    started = _start(conn, Stage.DOWNLOAD, imported.download_job.id, imported.track.id)
    assert started.fetch_source == "https://example.com/a.mp3"
    assert workflow.download_metadata(conn, started).origin == "https://example.com/a.mp3"

