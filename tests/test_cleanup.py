"""Orphan cleanup against a real PostgreSQL and real files: it removes only what SoundForge owns
(`downloads/`, `stems/`, its temporaries), never a file a row references or a live job may
still use, decides under the locks a completion takes (a row committing meanwhile keeps its
file, whatever the file's age), and removes the temporaries a killed worker leaked."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import jobs, maintenance, queue, workflow
from soundforge.db import connect
from soundforge.models import Stage
from soundforge.queue import MAINTENANCE_QUEUE
from soundforge.settings import Settings
from soundforge.sources import StoredAudio
from soundforge.status import Status
from soundforge.storage import TEMP_PREFIX, Storage, download_relpath
from tests.cli_runner import run_cli
from tests.factories import make_track
from tests.support.audio import tone_bytes
from tests.support.loopback_http import loopback_server
from tests.support.pipeline import (
    ServiceProcesses,
    add_track,
    child_pids,
    pid_alive,
    serve_slowly,
    service_env,
    wait_for,
    wait_for_stage_status,
)
from tests.support.worker_thread import running_worker, settings_for

pytestmark = pytest.mark.timeout(180)
Connection = psycopg.Connection[Any]
DAY_S = 86400.0


@pytest.fixture
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def _settings(database_url: str, storage: Storage) -> Settings:
    return settings_for(database_url, storage.root, storage_orphan_grace_s=3600.0,
                        storage_temp_grace_s=3600.0)  # fmt: skip


def _old_file(path: Path, size: int = 2048) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    os.utime(path, (time.time() - 2 * DAY_S,) * 2)
    return path


def _download_row(conn: Connection, status: Status) -> Any:
    track = make_track(conn)
    job = jobs.create_job(conn, Stage.DOWNLOAD, track.id)
    job = jobs.advance(conn, job, Status.DOWNLOADING)
    if status is Status.FAILED:
        job = jobs.fail(conn, job, "gone")
    return job


def test_cleanup_removes_only_owned_unneeded_files(
    conn: Connection, database_url: str, storage: Storage
) -> None:
    foreign = [
        _old_file(storage.root / "my music" / "album.flac"),
        _old_file(storage.root / "song.flac"),
        _old_file(storage.root / "models" / "hub" / "htdemucs.th"),
        _old_file(storage.root / f"{TEMP_PREFIX}mine-not-yours"),
    ]
    failed = _download_row(conn, Status.FAILED)
    orphan = _old_file(storage.resolve(download_relpath(failed.track_id, "wav")))
    live = _download_row(conn, Status.DOWNLOADING)
    in_flight = _old_file(storage.resolve(download_relpath(live.track_id, "wav")))
    unknown_track = _old_file(storage.resolve(download_relpath(uuid.uuid4(), "mp3")))

    settings = _settings(database_url, storage)
    dry = maintenance.cleanup_orphaned(conn, settings, dry_run=True)
    assert sorted(dry.paths) == sorted(storage.relative(p) for p in (orphan, unknown_track))
    assert orphan.exists() and unknown_track.exists()

    report = maintenance.cleanup_orphaned(conn, settings)
    assert report.count == 2 and not orphan.exists() and not unknown_track.exists()
    assert in_flight.exists()  # its download is still running: it writes or records it
    assert all(path.exists() for path in foreign)


def test_a_hard_linked_import_whose_row_commits_during_cleanup_survives(
    conn: Connection, database_url: str, storage: Storage, tmp_path: Path
) -> None:
    source = _old_file(tmp_path / "import" / "old.wav")  # a hard link keeps this old mtime
    job = _download_row(conn, Status.DOWNLOADING)
    relative = download_relpath(job.track_id, "wav")
    stored = storage.resolve(relative)
    stored.parent.mkdir(parents=True, exist_ok=True)
    os.link(source, stored)  # what a local import on the same filesystem does
    assert stored.stat().st_ino == source.stat().st_ino
    settings = _settings(database_url, storage)

    with connect(database_url) as completing, completing.transaction():
        # The completion has locked and changed the row but not committed yet.
        workflow.complete_download(
            completing, jobs.reload(completing, job),
            StoredAudio(relative, stored.stat().st_size, "wav", 1.0),
            workflow.PipelineOptions(stems=False, analysis=False),
        )  # fmt: skip
        during = maintenance.cleanup_orphaned(conn, settings)
        assert during.count == 0 and stored.exists()
    assert jobs.reload(conn, job).status is Status.COMPLETED

    after = maintenance.cleanup_orphaned(conn, settings)
    assert after.count == 0 and stored.exists()  # referenced now
    assert source.exists()


def test_temporaries_go_after_their_grace_unless_a_live_job_owns_them(
    conn: Connection, database_url: str, storage: Storage
) -> None:
    live = _download_row(conn, Status.DOWNLOADING)
    finished = _download_row(conn, Status.FAILED)
    token = "0" * 32
    live_part = _old_file(storage.root / "downloads" / f"{TEMP_PREFIX}{token}-{live.track_id}.part")
    leaked_part = _old_file(
        storage.root / "downloads" / f"{TEMP_PREFIX}{token}-{finished.track_id}.part"
    )
    run = jobs.create_job(conn, Stage.SEPARATE, finished.track_id)
    run = jobs.fail(conn, jobs.advance(conn, run, Status.PROCESSING), "killed")
    scratch = storage.root / "stems" / str(finished.track_id) / str(run.id)
    leaked_scratch = [_old_file(scratch / f"{TEMP_PREFIX}{token}-{name}")
                      for name in ("mix.f32", "vocals.f32", "drums.flac")]  # fmt: skip
    fresh_part = storage.root / "downloads" / f"{TEMP_PREFIX}{'1' * 32}-{finished.track_id}.part"
    fresh_part.write_bytes(b"\0" * 10)

    report = maintenance.cleanup_orphaned(conn, _settings(database_url, storage))
    assert sorted(report.paths) == sorted(
        storage.relative(path) for path in [leaked_part, *leaked_scratch]
    )
    assert live_part.exists() and fresh_part.exists()
    assert not scratch.exists()  # its emptied folders went too
    assert (storage.root / "downloads").is_dir()


def test_the_nightly_cleanup_task_follows_the_same_rules(
    conn: Connection, database_url: str, storage: Storage
) -> None:
    foreign = _old_file(storage.root / "song.flac")
    failed = _download_row(conn, Status.FAILED)
    orphan = _old_file(storage.resolve(download_relpath(failed.track_id, "wav")))
    with running_worker(_settings(database_url, storage), queues=(MAINTENANCE_QUEUE,)):
        queue_id = queue.defer(conn, "soundforge.cleanup_orphaned", MAINTENANCE_QUEUE, {})
        wait_for(lambda: _queue_status(conn, queue_id) == "succeeded", message="the task")
    assert foreign.exists() and not orphan.exists()


def _queue_status(conn: Connection, queue_id: int | None) -> str | None:
    row = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s",
                       (queue_id,)).fetchone()  # fmt: skip
    return str(row["status"]) if row else None


def test_cleanup_cli_leaves_foreign_files_alone(cli_env: dict[str, str], tmp_path: Path) -> None:
    root = Path(cli_env["SOUNDFORGE_STORAGE_PATH"])
    foreign = _old_file(root / "Music" / "mine.flac")
    orphan = _old_file(root / "downloads" / "lost.wav")
    result = run_cli("cleanup", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert "removed 1 orphaned file(s)" in result.stdout
    assert foreign.exists() and not orphan.exists()


@pytest.mark.timeout(300)
def test_temporaries_a_killed_worker_leaked_go_at_the_next_cleanup(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path,
    services: ServiceProcesses,
) -> None:  # fmt: skip
    env = service_env(cli_env, processing_processes=0, analysis_processes=0,
                      download_attempts=1)  # fmt: skip
    root = Path(env["SOUNDFORGE_STORAGE_PATH"])
    with loopback_server() as server:
        url = serve_slowly(server, "/slow.wav", tone_bytes(4.0), seconds=30.0)
        worker = services.start("worker", "--queues", "download", env=env, label="worker")
        track_id = add_track(env, url, "--no-stems", "--no-analysis")
        wait_for_stage_status(database_url, track_id, "download", "downloading", timeout_s=120)
        leaked = wait_for(lambda: [p for p in (root / "downloads").glob(f"{TEMP_PREFIX}*")
                                   if p.stat().st_size > 0],
                          timeout_s=60, message="a partial download on disk")  # fmt: skip
        _kill_worker_and_its_engines(worker)

    kept = run_cli("cleanup", env=env | {"SOUNDFORGE_STORAGE_TEMP_GRACE_S": "0"})
    assert kept.returncode == 0, kept.stderr
    assert all(path.exists() for path in leaked)  # its row is still live: it may come back

    rescue = run_cli("rescue-stalled", "--after", "0", env=env)
    assert rescue.returncode == 0, rescue.stderr
    row = conn.execute("SELECT status FROM download_jobs WHERE track_id = %s",
                       (track_id,)).fetchone()  # fmt: skip
    assert row is not None and row["status"] == "failed"

    fresh = run_cli("cleanup", env=env)  # default grace: a just-written temporary stays
    assert fresh.returncode == 0 and all(path.exists() for path in leaked)
    result = run_cli("cleanup", env=env | {"SOUNDFORGE_STORAGE_TEMP_GRACE_S": "0"})
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in leaked)
    assert list((root / "downloads").glob(f"{TEMP_PREFIX}*")) == []


def _kill_worker_and_its_engines(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker process and its engine children at once (as the OOM killer or a
    container's end would): nothing of it can clean up after itself. (An engine child that
    outlives its worker cleans up on its own: its next progress message fails.)"""
    engines = child_pids(worker.pid)
    for pid in [*engines, worker.pid]:
        os.kill(pid, signal.SIGKILL)
    worker.wait(10)
    wait_for(lambda: not any(pid_alive(pid) for pid in engines), timeout_s=30,
             message="the killed engine processes to end")  # fmt: skip


@pytest.mark.timeout(400)
def test_separation_scratch_a_killed_worker_leaked_goes_at_the_next_cleanup(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path,
    services: ServiceProcesses, tiny_repo: Path,
) -> None:  # fmt: skip
    env = service_env(cli_env, separate_attempts=1, demucs_repo=tiny_repo)
    root = Path(env["SOUNDFORGE_STORAGE_PATH"])
    song = tmp_path / "long.wav"
    song.write_bytes(tone_bytes(120.0))  # minutes of separation: killed long before the end
    services.start("worker", "--queues", "download", env=env, label="download")
    separating = services.start("worker", "--queues", "processing", env=env, label="separate")
    track_id = add_track(env, str(song), "--no-analysis")
    scratch = wait_for(
        lambda: [p for p in (root / "stems").rglob(f"{TEMP_PREFIX}*")
                 if p.name.endswith("-vocals.f32") and p.stat().st_size > 0],
        timeout_s=240, message="stem spools on disk",
    )[0].parent  # fmt: skip
    _kill_worker_and_its_engines(separating)
    leaked = sorted(scratch.iterdir())
    assert any(p.name.endswith("-mix.f32") for p in leaked), leaked

    rescue = run_cli("rescue-stalled", "--after", "0", env=env)
    assert rescue.returncode == 0, rescue.stderr
    row = conn.execute("SELECT status FROM processing_jobs WHERE track_id = %s",
                       (track_id,)).fetchone()  # fmt: skip
    assert row is not None and row["status"] == "failed"
    result = run_cli("cleanup", env=env | {"SOUNDFORGE_STORAGE_TEMP_GRACE_S": "0"})
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in leaked) and not scratch.exists()
    assert (root / "downloads" / f"{track_id}.wav").exists()  # referenced: kept
