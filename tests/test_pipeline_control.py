"""Pipeline control: fan-out exactly once, duplicate imports, cancel, retry, hand-typed
`procrastinate defer`, `soundforge watch` and `soundforge add --wait`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from soundforge import jobs, live, queue, workflow
from soundforge.db import connect, create_pool
from soundforge.engines import default_engines
from soundforge.errors import StaleRowError
from soundforge.models import Job, Stage
from soundforge.sources import StoredAudio, TrackMetadata
from soundforge.status import Status
from soundforge.storage import Storage
from tests.audio_synth import write_test_song
from tests.cli_runner import run_cli
from tests.support.engines import FACTORY, FAULTS_VARIABLE, write_script
from tests.support.fake_spotify import FakeSpotify
from tests.support.job_rows import stage_rows
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)
PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_test_song(tmp_path / "song.wav", seconds=4.0, tempo=100.0, key="D major")


def _metadata(song: Path, spotify_id: str | None = None) -> TrackMetadata:
    return TrackMetadata(title="Song", artist="Band", album=None, album_art_url=None,
                         duration=4, spotify_id=spotify_id, spotify_url=None,
                         origin=str(song))  # fmt: skip


def _queue_jobs(conn: psycopg.Connection[Any], task_name: str) -> list[dict[str, Any]]:
    return list(conn.execute(
        "SELECT * FROM procrastinate_jobs WHERE task_name = %s ORDER BY id", (task_name,)
    ))  # fmt: skip


def _count(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
    assert row is not None
    return int(row["n"])


def _downloading(conn: psycopg.Connection[Any], song: Path) -> tuple[Job, StoredAudio]:
    """An imported track's download row, running, and the audio it is about to store."""
    imported = workflow.import_track(conn, _metadata(song), workflow.PipelineOptions())
    job = jobs.advance(conn, imported.download_job, Status.DOWNLOADING)
    return job, StoredAudio(relative_path="downloads/x.wav", file_size=2000, ext="wav",
                            duration_s=4.0)  # fmt: skip


def test_fan_out_cannot_be_lost_by_a_crash_between_status_change_and_defer(
    conn: psycopg.Connection[Any], database_url: str, song: Path
) -> None:
    job, stored = _downloading(conn, song)
    # The completion is one statement; hold it after its status UPDATE, at the point where it
    # enqueues the follow-ups (the queue table is locked), and kill its connection there.
    with connect(database_url, autocommit=True) as blocker, \
            connect(database_url, autocommit=True) as worker_conn:  # fmt: skip
        worker_pid = worker_conn.info.backend_pid
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE procrastinate_jobs IN SHARE MODE")
        failure: list[BaseException] = []

        def complete() -> None:
            try:
                workflow.complete_download(worker_conn, job, stored, workflow.PipelineOptions())
            except BaseException as error:  # inspected below
                failure.append(error)

        thread = threading.Thread(target=complete)
        thread.start()

        def waiting_to_defer() -> bool:
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_locks WHERE pid = %s AND NOT granted "
                "AND relation = 'procrastinate_jobs'::regclass", (worker_pid,),
            ).fetchone()  # fmt: skip
            return bool(row and row["n"])

        wait_for(waiting_to_defer, timeout_s=30, message="the completion waiting to defer")
        held = conn.execute(
            "SELECT count(*) AS n FROM pg_locks WHERE pid = %s AND granted "
            "AND relation = 'download_jobs'::regclass AND mode = 'RowExclusiveLock'",
            (worker_pid,),
        ).fetchone()  # fmt: skip
        assert held is not None and held["n"] == 1  # its UPDATE of the download row ran
        conn.execute("SELECT pg_terminate_backend(%s)", (worker_pid,))
        thread.join(30)
        blocker.execute("ROLLBACK")
    assert failure and isinstance(failure[0], psycopg.Error)
    assert jobs.reload(conn, job).status is Status.DOWNLOADING  # the UPDATE rolled back
    assert _count(conn, "processing_jobs") == _count(conn, "analysis_jobs") == 0
    assert _queue_jobs(conn, "soundforge.separate") == []

    created = workflow.complete_download(conn, jobs.reload(conn, job), stored,
                                         workflow.PipelineOptions())  # fmt: skip
    assert sorted(stage.value for stage in created) == ["analyze", "separate"]
    # A rerun of the completed download (e.g. a rescued duplicate) fans out nothing more.
    rerun = workflow.begin_stage(conn, Stage.DOWNLOAD, job.track_id, job.id,
                                 procrastinate_job_id=1, attempt=2)  # fmt: skip
    assert rerun is None
    assert _count(conn, "processing_jobs") == _count(conn, "analysis_jobs") == 1
    assert len(_queue_jobs(conn, "soundforge.separate")) == 1
    assert len(_queue_jobs(conn, "soundforge.analyze")) == 1


def test_a_completion_after_a_cancel_stores_nothing(
    conn: psycopg.Connection[Any], song: Path, tmp_path: Path
) -> None:
    download, stored = _downloading(conn, song)
    created = workflow.complete_download(conn, download, stored, workflow.PipelineOptions())
    separation = jobs.advance(conn, jobs.find_job(conn, created[Stage.SEPARATE]),
                              Status.PROCESSING)  # fmt: skip
    workflow.cancel_job(conn, separation.id)
    storage = Storage(tmp_path / "store")
    stem = tmp_path / "store" / "stems" / "vocals.flac"
    stem.parent.mkdir(parents=True)
    stem.write_bytes(b"fLaC")

    with pytest.raises(StaleRowError):
        workflow.complete_separation(conn, separation, storage, {"vocals": stem})
    with pytest.raises(StaleRowError):
        workflow.complete_download(conn, download, stored, workflow.PipelineOptions())

    assert jobs.reload(conn, separation).error == workflow.CANCELLED
    assert _count(conn, "stems") == 0
    assert _count(conn, "processing_jobs") == _count(conn, "analysis_jobs") == 1


def test_200_concurrent_imports_of_one_spotify_id_give_one_track_and_one_download(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    with FakeSpotify() as spotify:
        track = spotify.add_track("Mr. Brightside", ["The Killers"], duration_ms=222_000)
        settings = settings_for(
            database_url, tmp_path / "store", spotify_client_id=spotify.client_id,
            spotify_client_secret=spotify.client_secret, spotify_api_url=spotify.api_url,
            spotify_auth_url=spotify.auth_url,
        )  # fmt: skip
        engines = default_engines(settings)
        link = f"https://open.spotify.com/track/{track['id']}?si=abc"
        pool: ConnectionPool[Any] = create_pool(database_url, min_size=4, max_size=40)
        barrier = threading.Barrier(200)

        def one_import(_: int) -> str:
            [metadata] = engines.expand(link)
            barrier.wait()
            with pool.connection() as own:
                imported = workflow.import_track(own, metadata, workflow.PipelineOptions())
            return str(imported.download_job.id)

        try:
            with ThreadPoolExecutor(max_workers=200) as executor:
                download_ids = set(executor.map(one_import, range(200)))
        finally:
            pool.close()
    assert len(download_ids) == 1
    assert _count(conn, "tracks") == 1 and _count(conn, "download_jobs") == 1
    [queued] = _queue_jobs(conn, "soundforge.download")
    assert queued["queueing_lock"].startswith("download:")
    row = conn.execute("SELECT * FROM tracks").fetchone()
    assert row is not None and row["artist"] == "The Killers" and row["duration"] == 222


def test_cancelling_a_queued_job_cancels_its_queue_job_and_fails_the_row(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], song: Path
) -> None:
    imported = workflow.import_track(conn, _metadata(song), workflow.PipelineOptions())
    result = run_cli("cancel", str(imported.download_job.id), env=cli_env)
    assert result.returncode == 0, result.stderr
    row = jobs.reload(conn, imported.download_job)
    assert (row.status, row.error) == (Status.FAILED, "cancelled")
    [queued] = _queue_jobs(conn, "soundforge.download")
    assert queued["status"] == "cancelled"
    again = run_cli("cancel", str(imported.download_job.id), env=cli_env)
    assert again.returncode == 1 and "already failed" in again.stderr


def test_cancelling_a_running_job_aborts_it_and_fails_the_row(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "store")
    script = write_script(tmp_path / "faults.json", {"separate": [{"block": "progress"}]})
    monkeypatch.setenv(FAULTS_VARIABLE, str(script))
    with running_worker(settings, FACTORY) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(song))
        imported = workflow.import_track(conn, metadata,
                                         workflow.PipelineOptions(analysis=False))  # fmt: skip
        job = wait_for(lambda: next(iter(
            j for j in stage_rows(conn, Stage.SEPARATE, imported.track.id)
            if (j.progress or 0) > 0), None), message="the separation to report progress")
        result = run_cli("cancel", str(job.id), env=cli_env)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: _queue_jobs(conn, "soundforge.separate")[0]["status"] == "aborted",
                 message="the running job to abort")  # fmt: skip
        assert (tmp_path / "store").exists()
    row = jobs.reload(conn, job)
    assert (row.status, row.error) == (Status.FAILED, "cancelled")


def test_retry_of_a_failed_stage_makes_a_new_row_and_keeps_the_old_one(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    cli_env: dict[str, str],
) -> None:  # fmt: skip
    pending = tmp_path / "later.wav"
    pending.write_bytes(b"not yet audio" * 200)
    settings = settings_for(database_url, tmp_path / "store")
    with running_worker(settings) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(pending))
        imported = workflow.import_track(conn, metadata,
                                         workflow.PipelineOptions(stems=False))  # fmt: skip
        wait_for(lambda: jobs.reload(conn, imported.download_job).status is Status.FAILED,
                 message="the first download to fail")  # fmt: skip
        pending.write_bytes(song.read_bytes())  # the user fixes the file
        result = run_cli("retry", str(imported.download_job.id), env=cli_env)
        assert result.returncode == 0, result.stderr
        wait_for(lambda: (rows := live.pipeline_rows(conn, [imported.track.id]))
                 and live.pipeline_finished(rows[0]), message="the retried pipeline")  # fmt: skip
    old, new = stage_rows(conn, Stage.DOWNLOAD, imported.track.id)
    assert old.id == imported.download_job.id and old.status is Status.FAILED  # history kept
    # the retry kept the pipeline options it was added with (--no-stems): no separation
    assert stage_rows(conn, Stage.SEPARATE, imported.track.id) == []
    assert new.status is Status.COMPLETED
    [analysis] = stage_rows(conn, Stage.ANALYZE, imported.track.id)
    assert analysis.status is Status.COMPLETED
    not_failed = run_cli("retry", str(new.id), env=cli_env)
    assert not_failed.returncode == 1 and "only a failed job" in not_failed.stderr


def test_hand_typed_procrastinate_defer_runs_a_stage_by_track_id(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    cli_env: dict[str, str],
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "store")
    with running_worker(settings) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(song))
        imported = workflow.import_track(conn, metadata,
                                         workflow.PipelineOptions(stems=False,
                                                                  analysis=False))  # fmt: skip
        wait_for(lambda: jobs.reload(conn, imported.download_job).status is Status.COMPLETED,
                 message="download")  # fmt: skip
        payload = json.dumps({"track_id": str(imported.track.id)})
        deferred = subprocess.run(
            [PROCRASTINATE, "--app=soundforge.app.app", "defer", "soundforge.analyze", payload],
            env=cli_env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert deferred.returncode == 0, deferred.stderr
        analysis = wait_for(
            lambda: [j for j in stage_rows(conn, Stage.ANALYZE, imported.track.id)
                     if j.status is Status.COMPLETED], message="hand-typed analysis",
        )  # fmt: skip
    assert analysis[0].procrastinate_job_id is not None


def test_hand_typed_import_task_creates_the_track_and_its_download(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    cli_env: dict[str, str],
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "store")
    payload = json.dumps({"source": str(song), "stems": False})
    deferred = subprocess.run(
        [PROCRASTINATE, "--app=soundforge.app.app", "defer", "soundforge.import", payload],
        env=cli_env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert deferred.returncode == 0, deferred.stderr
    with running_worker(settings):
        row = wait_for(
            lambda: (rows := live.pipeline_rows(conn, None)) and live.pipeline_finished(rows[0])
            and rows[0], message="the imported pipeline",
        )  # fmt: skip
    assert (row["title"], row["download_status"], row["analyze_status"]) == (
        "song", "completed", "completed")  # fmt: skip


def test_analyze_of_a_track_without_audio_fails_with_a_clear_error(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path
) -> None:
    imported = workflow.import_track(conn, _metadata(song), workflow.PipelineOptions())
    queue.defer(conn, "soundforge.analyze", "analysis", {"track_id": str(imported.track.id)})
    with running_worker(settings_for(database_url, tmp_path / "store"), queues=["analysis"]):
        [job] = wait_for(lambda: stage_rows(conn, Stage.ANALYZE,
                                                          imported.track.id)
                         and [j for j in stage_rows(conn, Stage.ANALYZE,
                                                                  imported.track.id)
                              if j.status is Status.FAILED], message="failure")  # fmt: skip
    assert job.error is not None and "no downloaded audio yet" in job.error


def _next_json(stream: Any) -> dict[str, Any]:
    """The next indented JSON object `soundforge watch --json` printed."""
    lines: list[str] = []
    while not lines or lines[-1] != "}\n":
        line = stream.readline()
        assert line, "watch ended early"
        lines.append(line)
    return dict(json.loads("".join(lines)))


def test_watch_prints_each_change_of_a_row_as_it_happens(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], song: Path
) -> None:
    soundforge = str(Path(sys.executable).with_name("soundforge"))
    watcher = subprocess.Popen(
        [soundforge, "watch", "--json", "--max-events", "3"], env=cli_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "watching" in watcher.stderr.readline()  # LISTEN is in place
        imported = workflow.import_track(conn, _metadata(song), workflow.PipelineOptions())
        events = [_next_json(watcher.stdout)]
        job = jobs.advance(conn, imported.download_job, Status.DOWNLOADING, progress=30)
        events.append(_next_json(watcher.stdout))
        jobs.advance(conn, job, Status.COMPLETED)
        events.append(_next_json(watcher.stdout))
        assert watcher.wait(30) == 0
    finally:
        watcher.kill()
    assert [(e["stage"], e["status"], e["progress"]) for e in events] == [
        ("download", "queued", 0), ("download", "downloading", 30),
        ("download", "completed", 100),
    ]  # fmt: skip
    assert {e["track_id"] for e in events} == {str(imported.track.id)}


def test_add_wait_follows_a_worker_through_all_three_stages(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], song: Path, tmp_path: Path
) -> None:
    from soundforge.separation import write_local_repo

    env = {**cli_env, "SOUNDFORGE_DEMUCS_REPO": str(write_local_repo(tmp_path / "models")),
           "SOUNDFORGE_SHIFTS": "0"}  # fmt: skip
    soundforge = str(Path(sys.executable).with_name("soundforge"))
    worker = subprocess.Popen(
        [soundforge, "worker", "--concurrency", "2"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        result = run_cli("add", str(song), "--wait", env=env, timeout=240)
        assert result.returncode == 0, result.stderr
        assert "4 stems" in result.stdout and "BPM" in result.stdout, result.stdout
        for stage in ("download", "separate", "analyze"):
            assert stage in result.stdout  # a progress bar per stage
        not_audio = tmp_path / "readme.mp3"
        not_audio.write_text("not a song\n" * 200)
        failing = run_cli("add", str(not_audio), "--wait", env=env)
        assert failing.returncode == 1 and "download failed" in failing.stdout
    finally:
        worker.terminate()
        worker.wait(60)
    assert worker.returncode == 0


def test_add_rejects_a_bad_source_before_queueing_anything(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    result = run_cli("add", "ftp://example.com/a.mp3", env=cli_env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "accepted" in result.stderr or "unsupported" in result.stderr
    assert _count(conn, "tracks") == 0


def test_add_refuses_a_local_file_over_the_import_limit(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], song: Path
) -> None:
    env = {**cli_env, "SOUNDFORGE_MAX_IMPORT_BYTES": str(song.stat().st_size - 1)}
    result = run_cli("add", str(song), env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "over the import limit" in result.stderr
    assert "SOUNDFORGE_MAX_IMPORT_BYTES" in result.stderr
    assert _count(conn, "tracks") == 0



def test_rerunning_a_completed_stage_does_nothing_unless_forced(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "store")
    with running_worker(settings) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(song))
        imported = workflow.import_track(conn, metadata,
                                         workflow.PipelineOptions(stems=False))  # fmt: skip
        wait_for(lambda: (rows := live.pipeline_rows(conn, [imported.track.id]))
                 and live.pipeline_finished(rows[0]), message="the pipeline")  # fmt: skip
        track_id = str(imported.track.id)
        again = queue.defer(conn, "soundforge.analyze", "analysis", {"track_id": track_id})
        wait_for(lambda: _queue_jobs(conn, "soundforge.analyze")[-1]["status"] == "succeeded",
                 message="the repeated analyze task")  # fmt: skip
        assert again is not None
        assert len(stage_rows(conn, Stage.ANALYZE, imported.track.id)) == 1
        queue.defer(conn, "soundforge.analyze", "analysis", {"track_id": track_id,
                                                             "force": True})  # fmt: skip
        forced = wait_for(
            lambda: [j for j in stage_rows(conn, Stage.ANALYZE, imported.track.id)
                     if j.status is Status.COMPLETED][1:], message="the forced analysis",
        )  # fmt: skip
    assert len(forced) == 1
    row = conn.execute(
        "SELECT count(*) AS n FROM analysis_results WHERE track_id = %s", (imported.track.id,)
    ).fetchone()
    assert row is not None and row["n"] == 2



def test_importing_a_spotify_track_again_reuses_its_download_unless_forced(
    conn: psycopg.Connection[Any], song: Path
) -> None:
    metadata = _metadata(song, spotify_id="4uLU6hMCjMI75M1A2tKUQC")
    first = workflow.import_track(conn, metadata, workflow.PipelineOptions())
    again = workflow.import_track(conn, metadata, workflow.PipelineOptions())
    assert (again.track.id, again.download_job.id, again.new_download) == (
        first.track.id, first.download_job.id, False)  # fmt: skip
    jobs.advance(conn, first.download_job, Status.COMPLETED)
    assert first.download_job.procrastinate_job_id is not None  # its queue job is gone too:
    queue.cancel(conn, first.download_job.procrastinate_job_id)  # (no worker in this test)
    assert not workflow.import_track(conn, metadata, workflow.PipelineOptions()).new_download
    forced = workflow.import_track(conn, metadata, workflow.PipelineOptions(), force=True)
    assert forced.new_download and forced.download_job.id != first.download_job.id


def test_the_stalled_view_uses_the_threshold_sql_users_set(
    conn: psycopg.Connection[Any], song: Path
) -> None:
    imported = workflow.import_track(conn, _metadata(song), workflow.PipelineOptions())
    conn.execute("INSERT INTO procrastinate_workers (last_heartbeat)"
                 " VALUES (now() - interval '10 minutes')")  # fmt: skip
    conn.execute(
        "UPDATE procrastinate_jobs SET status = 'doing',"
        " worker_id = (SELECT max(id) FROM procrastinate_workers) WHERE id = %s",
        (imported.download_job.procrastinate_job_id,),
    )
    jobs.advance(conn, imported.download_job, Status.DOWNLOADING)

    def stalled() -> list[Any]:
        return [row["job_id"] for row in conn.execute("SELECT job_id FROM soundforge_stalled")]

    assert stalled() == []  # a 10-minute-old heartbeat is fine by the 30-minute default
    conn.execute("SET soundforge.stalled_after_s = 300")
    assert stalled() == [imported.download_job.id]
