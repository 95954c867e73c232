"""Many hosts, one PostgreSQL, one bucket, against a real S3 protocol server on loopback
(moto's standalone server): the whole pipeline on S3 storage; two `soundforge run` processes
with separate caches and different queues acting as two hosts, the processing host killed
mid-job and its job rescued by the other; an upload cut mid-transfer makes the attempt fail,
leaves no visible object, and the retry stores the file."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import live, music, workflow
from soundforge.engines import default_engines
from soundforge.models import DownloadJob, Stage
from soundforge.settings import load_settings
from soundforge.storage import Storage, download_relpath
from soundforge.storage_s3 import S3Storage
from tests.audio_synth import write_test_song
from tests.cli_runner import run_cli
from tests.factories import make_track, separated
from tests.support.audio import tone_bytes
from tests.support.job_rows import stage_rows
from tests.support.pipeline import (
    ServiceProcesses,
    service_env,
    wait_for_pipeline,
    wait_for_stage_status,
)
from tests.support.s3_server import CuttingProxy, S3Server, moto_s3, s3_env, s3_settings
from tests.support.web import start_web
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(600)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_test_song(tmp_path / "song.wav", seconds=6.0, tempo=120.0, key="A minor")


def _keys(store: S3Storage) -> list[str]:
    return sorted(file.relative for file in store.owned_files())


def test_the_whole_pipeline_runs_on_s3_storage_and_delete_removes_the_objects(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, song: Path,
    tiny_repo: Path, s3_server: S3Server,
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "no-local-store", demucs_repo=tiny_repo,
                            cache_path=tmp_path / "cache",
                            **s3_settings(s3_server.endpoint, s3_server.bucket()))  # fmt: skip
    with running_worker(settings) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(song))
        imported = workflow.import_track(conn, metadata, workflow.PipelineOptions())
        row = wait_for(lambda: _finished(conn, imported.track.id), timeout_s=400,
                       message="the pipeline to finish")  # fmt: skip
        store = runtime.storage
    assert isinstance(store, S3Storage)
    assert [row[f"{stage}_status"] for stage in live.STAGES] == ["completed"] * 3, row
    track_id = imported.track.id
    stems = music.list_stems_for_track(conn, track_id)
    stored = {file.relative: file.size for file in store.owned_files()}
    assert stored[download_relpath(track_id, "wav")] == song.stat().st_size
    assert sorted(stem.stem_type for stem in stems) == ["bass", "drums", "other", "vocals"]
    for stem in stems:
        assert stem.file_path is not None and stored[stem.file_path] == stem.file_size
    assert len(stored) == 5  # no temporaries left behind
    analysis = music.get_analysis_result_for_track(conn, track_id)
    assert analysis is not None and analysis.tempo
    assert not (tmp_path / "no-local-store").exists()  # nothing went to the local folder
    summary = live.summarize(conn, row, store)
    assert all(stem.location and stem.location.startswith("s3://") for stem in summary.stems)
    deleted, removed = music.delete_track_with_files(conn, store, track_id)
    assert deleted and len(removed) == 5 and _keys(store) == []


def _finished(conn: psycopg.Connection[Any], track_id: uuid.UUID) -> dict[str, Any] | None:
    rows = live.pipeline_rows(conn, [track_id])
    return rows[0] if rows and live.pipeline_finished(rows[0]) else None


def test_an_upload_cut_mid_transfer_fails_the_attempt_and_the_retry_stores_the_file(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path, s3_server: S3Server,
) -> None:  # fmt: skip
    bucket = s3_server.bucket()
    source = tmp_path / "long.wav"
    source.write_bytes(tone_bytes(75.0, sample_rate=44100))  # 13 MB: three 5 MiB parts
    proxy = CuttingProxy(s3_server.port, cut_after_bytes=7 * MIB)
    settings = settings_for(database_url, tmp_path / "store", cache_path=tmp_path / "cache",
                            retry_wait_s=1.0, download_attempts=5, s3_part_size_bytes=5 * MIB,
                            s3_upload_concurrency=1,
                            **s3_settings(proxy.endpoint, bucket))  # fmt: skip
    direct = S3Storage(f"s3://{bucket}/sf", settings_for(
        database_url, tmp_path / "store", cache_path=tmp_path / "direct-cache",
        **s3_settings(s3_server.endpoint, bucket)))  # fmt: skip
    try:
        with running_worker(settings, queues=("download",)) as runtime:
            [metadata] = default_engines(runtime.settings).expand(str(source))
            options = workflow.PipelineOptions(stems=False, analysis=False)
            imported = workflow.import_track(conn, metadata, options)
            assert proxy.cut_done.wait(120), "the upload never reached the cut"
            failed = wait_for(lambda: _download_error(conn, imported.track.id), timeout_s=120,
                              message="the attempt to fail")  # fmt: skip
            assert _keys(direct) == []  # no object at the key, no visible temporary
            proxy.heal()
            row = wait_for(lambda: _finished(conn, imported.track.id), timeout_s=180,
                           message="the retry to finish")  # fmt: skip
    finally:
        proxy.close()
    assert "could not store" in failed
    assert row["download_status"] == "completed", row
    [download] = stage_rows(conn, Stage.DOWNLOAD, imported.track.id)
    assert isinstance(download, DownloadJob) and download.attempts >= 2
    assert _keys(direct) == [download_relpath(imported.track.id, "wav")]
    with direct.local_file(download.output_path or "") as path:
        assert path.read_bytes() == source.read_bytes()


def _download_error(conn: psycopg.Connection[Any], track_id: uuid.UUID) -> str | None:
    [download] = stage_rows(conn, Stage.DOWNLOAD, track_id)
    return download.error if download.attempts >= 1 and download.error else None


def _kill_host(services: ServiceProcesses, supervisor: Any) -> None:
    """Power loss: the supervisor and every worker of it end at once, no drain."""
    os.kill(supervisor.pid, signal.SIGSTOP)  # no restart of a worker in between
    for pid in services.all_worker_pids(supervisor):
        os.kill(pid, signal.SIGKILL)
    os.kill(supervisor.pid, signal.SIGKILL)
    supervisor.wait(10)


def test_two_hosts_share_the_bucket_and_a_dead_hosts_job_is_rescued_by_another(
    cli_env: dict[str, str], database_url: str, tmp_path: Path, song: Path, tiny_repo: Path,
    s3_server: S3Server, services: ServiceProcesses,
) -> None:  # fmt: skip
    shared = {**service_env(cli_env, demucs_repo=tiny_repo, demucs_model="htdemucs"),
              **s3_env(s3_server.endpoint, s3_server.bucket())}  # fmt: skip
    shared.pop("SOUNDFORGE_STORAGE_PATH")

    def host(name: str, queues: str) -> Any:
        env = {**shared, "SOUNDFORGE_CACHE_PATH": str(tmp_path / f"cache-{name}")}
        return services.start("run", "--queues", queues, env=env, label=f"host-{name}")

    cpu_host = host("cpu", "download,analysis,maintenance")
    gpu_host = host("gpu1", "processing")
    result = run_cli("add", "--json", "--no-analysis", str(song), env=shared)
    assert result.returncode == 0, result.stderr
    track_id = json.loads(result.stdout)[0]["track_id"]
    wait_for_stage_status(database_url, track_id, "separate", "processing", timeout_s=240)
    _kill_host(services, gpu_host)
    replacement = host("gpu2", "processing")
    row = wait_for_pipeline(database_url, track_id, timeout_s=480)
    assert row["download_status"] == "completed" and row["separate_status"] == "completed", row
    cpu_log = services.log_text(cpu_host)
    assert "rescued queue job" in cpu_log, cpu_log[-3000:]  # the CPU host rescued it
    download_key = download_relpath(track_id, "wav")
    for name in ("cpu", "gpu2"):  # each host has the download in its own cache
        assert (tmp_path / f"cache-{name}" / "objects" / download_key).is_file(), name
    with psycopg.connect(database_url, autocommit=True) as check:
        doubled = check.execute(
            "SELECT args->>'timestamp', count(*) FROM procrastinate_jobs"
            " WHERE task_name = 'soundforge.rescue_stalled'"
            " GROUP BY 1 HAVING count(*) > 1"
        ).fetchall()  # fmt: skip
        rescues = check.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'soundforge.rescue_stalled'"
        ).fetchone()
    assert doubled == [] and rescues is not None and rescues[0] > 1  # once per tick
    assert services.stop(cpu_host) == 0 and services.stop(replacement) == 0
    status = run_cli("status", "--json", track_id, env=shared)
    files = json.loads(status.stdout)[0]["files"]
    assert sorted(files) == ["bass", "download", "drums", "other", "vocals"], files
    assert all(location.startswith("s3://") for location in files.values())
    assert run_cli("delete", track_id, env=shared).returncode == 0
    cleanup = run_cli("cleanup", "--json", env=shared)
    assert cleanup.returncode == 0 and json.loads(cleanup.stdout)["count"] == 0
    bucket = S3Storage(shared["SOUNDFORGE_STORAGE_URL"], load_settings(
        **s3_settings(s3_server.endpoint, "unused"), cache_path=tmp_path / "check"))  # fmt: skip
    assert _keys(bucket) == []


def test_the_dashboard_plays_a_stem_from_the_bucket_with_ranges(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path,
    s3_server: S3Server, services: ServiceProcesses,
) -> None:  # fmt: skip
    env = {**cli_env, **s3_env(s3_server.endpoint, s3_server.bucket()),
           "SOUNDFORGE_CACHE_PATH": str(tmp_path / "web-cache")}  # fmt: skip
    track = make_track(conn, "Stems in a bucket")
    local = Storage(tmp_path / "separated")
    local.ensure_root()
    _, stems = separated(conn, local, track, {"vocals": bytes(range(256)) * 40,
                                              "drums": b"x" * 9})  # fmt: skip
    stem, crafted = stems["vocals"], stems["drums"]
    assert stem.file_path is not None
    uploader = S3Storage(env["SOUNDFORGE_STORAGE_URL"], load_settings(
        **s3_settings(s3_server.endpoint, "unused"), cache_path=tmp_path / "uploader"))  # fmt: skip
    uploader.upload(local.resolve(stem.file_path), stem.file_path)
    # a row a separation never writes (a path outside the root) must still not be served
    conn.execute("UPDATE stems SET file_path = '../outside.flac' WHERE id = %s", (crafted.id,))
    web = start_web(services, env)
    with web.client() as client:
        part = client.get(f"/api/stems/{stem.id}", headers={"range": "bytes=256-511"})
        assert part.status_code == 206 and part.content == bytes(range(256))
        assert part.headers["content-range"] == "bytes 256-511/10240"
        assert client.get(f"/api/stems/{crafted.id}").status_code == 404
