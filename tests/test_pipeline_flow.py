"""The pipeline on a real Procrastinate worker and a real PostgreSQL: a local file through all
three stages, bad input failing at once, transient errors retried, and the forward-only rule
holding across retries."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import live, music, queue, workflow
from soundforge.engines import default_engines
from soundforge.models import DownloadJob, Stage
from soundforge.runtime import Runtime
from soundforge.settings import Settings
from soundforge.sources import TrackMetadata
from soundforge.status import Status
from soundforge.storage import Storage
from tests.audio_synth import write_test_song
from tests.support.engines import FACTORY, FAULTS_VARIABLE, write_script
from tests.support.job_rows import stage_rows
from tests.support.loopback_http import loopback_server
from tests.support.pipeline import RowHistory
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_test_song(tmp_path / "song.wav", seconds=6.0, tempo=120.0, key="A minor")


@pytest.fixture
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def _settings(database_url: str, tmp_path: Path, **overrides: Any) -> Settings:
    return settings_for(database_url, tmp_path / "store", **overrides)


def _import(conn: psycopg.Connection[Any], runtime: Runtime, source: str,
            **options: Any) -> workflow.ImportedTrack:  # fmt: skip
    [metadata] = default_engines(runtime.settings).expand(source)
    return workflow.import_track(conn, metadata, workflow.PipelineOptions(**options))


def _plain(source: str) -> TrackMetadata:
    return TrackMetadata(title="queued by hand", artist=None, album=None, album_art_url=None,
                         duration=None, spotify_id=None, spotify_url=None, origin=source)


def _finished_row(conn: psycopg.Connection[Any], track_id: uuid.UUID) -> dict[str, Any] | None:
    rows = live.pipeline_rows(conn, [track_id])
    return rows[0] if rows and live.pipeline_finished(rows[0]) else None


def test_a_local_file_runs_through_download_separation_and_analysis(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    tiny_repo: Path,
) -> None:  # fmt: skip
    settings = _settings(database_url, tmp_path, demucs_repo=tiny_repo)
    events = RowHistory(database_url)
    try:
        with running_worker(settings) as runtime:
            imported = _import(conn, runtime, str(song))
            row = wait_for(lambda: _finished_row(conn, imported.track.id), timeout_s=240,
                           message="the pipeline to finish")  # fmt: skip
    finally:
        events.close()
    assert [row[f"{stage}_status"] for stage in live.STAGES] == ["completed"] * 3, row
    track = music.require_track(conn, imported.track.id)
    assert track.title == "song" and track.duration == 6
    download = stage_rows(conn, Stage.DOWNLOAD, track.id)[0]
    assert isinstance(download, DownloadJob)
    assert download.output_path == f"downloads/{track.id}.wav"
    store = Storage(settings.storage_path)
    assert store.resolve(download.output_path).stat().st_size == download.file_size
    assert song.exists()  # a local source is copied, never moved
    stems = music.list_stems_for_track(conn, track.id)
    assert sorted(stem.stem_type for stem in stems) == ["bass", "drums", "other", "vocals"]
    for stem in stems:
        assert stem.file_path is not None and stem.file_path.endswith(".flac")
        assert store.resolve(stem.file_path).stat().st_size == stem.file_size
    result = music.get_analysis_result_for_track(conn, track.id)
    assert result is not None and result.tempo is not None and result.key is not None
    assert abs(result.tempo - 120.0) < 3.0 and result.features is not None
    for column in ("energy", "spectral_centroid", "spectral_rolloff", "zero_crossing_rate"):
        assert getattr(result, column) is not None, column
    stages_seen = {event.stage for event in events.events if event.track_id == str(track.id)}
    assert stages_seen == {"download", "separate", "analyze"}


def test_bad_input_fails_the_download_at_once_with_a_readable_error(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("these are my notes, not audio\n" * 100)
    with running_worker(_settings(database_url, tmp_path, download_attempts=3)) as runtime:
        imported = _import(conn, runtime, str(not_audio))
        row = wait_for(lambda: _finished_row(conn, imported.track.id), message="failure")
    assert row["download_status"] == "failed"
    assert "not an audio file" in row["download_error"] or "audio" in row["download_error"]
    [download] = stage_rows(conn, Stage.DOWNLOAD, imported.track.id)
    assert download.attempts == 1  # permanent: no retry
    assert row["separate_status"] is None and row["analyze_status"] is None
    assert list((tmp_path / "store" / "downloads").glob("*")) == []


def test_a_refused_destination_fails_the_download_at_once_naming_the_rule(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path
) -> None:
    """An octal IP, the metadata address and a redirect to loopback: each a permanent
    failure on the first attempt (no retry), the server never asked."""
    settings = _settings(database_url, tmp_path, download_attempts=3, allowed_networks="")
    with loopback_server() as server:
        port = server.base_url.rsplit(":", 1)[1]
        server.serve_bytes("/song.wav", song.read_bytes(), "audio/wav")
        sources = {
            f"http://0177.0.0.1:{port}/song.wav": "non-canonical IPv4",
            "http://169.254.169.254/latest/meta-data/": "cloud metadata",
            f"http://[::ffff:127.0.0.1]:{port}/song.wav": "loopback (IPv4-mapped",
        }
        with running_worker(settings):
            # Queued as SQL or `procrastinate defer` would: nothing checked before the worker.
            track_ids = [workflow.import_track(conn, _plain(source), workflow.PipelineOptions())
                         .track.id for source in sources]  # fmt: skip
            rows = [wait_for(partial(_finished_row, conn, track_id), message="failure")
                    for track_id in track_ids]  # fmt: skip
        assert server.requests == []
    for row, (source, rule) in zip(rows, sources.items(), strict=True):
        assert row["download_status"] == "failed", source
        assert "destination refused" in row["download_error"] and rule in row["download_error"]
        [download] = stage_rows(conn, Stage.DOWNLOAD, row["track_id"])
        assert download.attempts == 1, source  # permanent: no retry


def test_a_transient_download_error_is_retried_then_completes(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path
) -> None:
    with loopback_server() as server:
        body = song.read_bytes()
        calls = {"n": 0}

        def flaky(request: Any) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                request.send_response(503)
                request.send_header("Content-Length", "0")
                request.end_headers()
                return
            request.send_response(200)
            request.send_header("Content-Type", "audio/wav")
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            if request.command != "HEAD":
                request.wfile.write(body)

        url = server.add("/song.wav", flaky)
        events = RowHistory(database_url)
        try:
            settings = _settings(database_url, tmp_path)
            with running_worker(settings) as runtime:
                imported = _import(conn, runtime, url, stems=False, analysis=False)
                row = wait_for(lambda: _finished_row(conn, imported.track.id),
                               message="download after retry")  # fmt: skip
        finally:
            events.close()
    assert row["download_status"] == "completed"
    [download] = stage_rows(conn, Stage.DOWNLOAD, imported.track.id)
    assert download.attempts == 2 and download.error is None
    events.assert_never_backwards()


def test_transient_engine_errors_are_retried_and_rows_never_move_backwards(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = _settings(database_url, tmp_path, demucs_repo=tiny_repo)
    script = write_script(tmp_path / "faults.json", {
        "separate": [{"raise": "disk hiccup #1"}],
        # progress made, then the attempt fails: a retry must not go back
        "analyze": [{"progress": 40, "raise": "analysis scratch space full"}],
    })  # fmt: skip
    monkeypatch.setenv(FAULTS_VARIABLE, str(script))
    events = RowHistory(database_url)
    try:
        with running_worker(settings, FACTORY) as runtime:
            imported = _import(conn, runtime, str(song))
            row = wait_for(lambda: _finished_row(conn, imported.track.id), timeout_s=240,
                           message="pipeline with retries")  # fmt: skip
    finally:
        events.close()
    assert [row[f"{stage}_status"] for stage in live.STAGES] == ["completed"] * 3, row
    for stage in (Stage.SEPARATE, Stage.ANALYZE):
        [job] = stage_rows(conn, stage, imported.track.id)
        assert job.attempts == 2, stage
    events.assert_never_backwards()
    analyze_events = [e for e in events.events if e.stage == "analyze"]
    assert any(e.progress == 40 for e in analyze_events)


def test_a_stage_that_keeps_failing_ends_failed_after_its_attempts(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = _settings(database_url, tmp_path, analyze_attempts=2)
    script = write_script(tmp_path / "faults.json",
                          {"analyze": [{"raise": f"disk hiccup #{n}"} for n in (1, 2, 3)]})
    monkeypatch.setenv(FAULTS_VARIABLE, str(script))
    with running_worker(settings, FACTORY) as runtime:
        imported = _import(conn, runtime, str(song), stems=False)
        row = wait_for(lambda: _finished_row(conn, imported.track.id), message="failure")
    assert row["analyze_status"] == "failed"
    assert row["analyze_error"] == "OSError: disk hiccup #2 (after 2 attempts)"


def test_separation_with_an_unknown_model_fails_at_once(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    tiny_repo: Path,
) -> None:  # fmt: skip
    """An import refuses an unknown model before any row (`PipelineOptions`); a separation
    deferred by hand with one makes its row and fails it at its first attempt."""
    settings = _settings(database_url, tmp_path, demucs_repo=tiny_repo)
    with running_worker(settings) as runtime:
        imported = _import(conn, runtime, str(song), stems=False, analysis=False)
        wait_for(lambda: _finished_row(conn, imported.track.id), message="the download")
        queue.defer(conn, Stage.SEPARATE.task_name, Stage.SEPARATE.queue,
                    {"track_id": str(imported.track.id), "model": "nope"})  # fmt: skip
        [job] = wait_for(lambda: [j for j in stage_rows(conn, Stage.SEPARATE, imported.track.id)
                                  if j.status is Status.FAILED], message="failure")  # fmt: skip
    assert job.error is not None and "nope" in job.error and job.attempts == 1
