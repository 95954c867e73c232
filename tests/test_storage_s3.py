"""The S3 backend against a real S3 protocol server on loopback (moto's standalone server):
uploads visible only when whole, reads through a per-host LRU cache, byte ranges, cleanup on a
bucket, and an upload cut mid-transfer."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import jobs, maintenance
from soundforge.errors import ConfigError, StorageError, TransientError
from soundforge.file_store import open_storage
from soundforge.local_cache import LocalCache
from soundforge.models import Job, Stage
from soundforge.settings import load_settings
from soundforge.status import Status
from soundforge.storage import TEMP_PREFIX, Storage, download_relpath, stem_relpath
from soundforge.storage_s3 import S3Storage
from tests.factories import make_track
from tests.support.s3_server import CuttingProxy, S3Server, free_port, moto_s3, s3_settings
from tests.support.worker_thread import settings_for

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


def _store(endpoint: str, bucket: str, cache: Path, max_bytes: int = 100 * MIB) -> S3Storage:
    settings = load_settings(**s3_settings(endpoint, bucket), cache_path=cache,
                             cache_max_bytes=max_bytes, s3_part_size_bytes=5 * MIB)  # fmt: skip
    store = open_storage(settings)
    assert isinstance(store, S3Storage)
    return store


@pytest.fixture
def store(s3_server: S3Server, tmp_path: Path) -> S3Storage:
    return _store(s3_server.endpoint, s3_server.bucket(), tmp_path / "cache-a")


def _write(store: S3Storage, key: str, data: bytes) -> Path:
    temp = store.temp_path_for(key)
    temp.write_bytes(data)
    return store.commit(temp, key)


def _keys(store: S3Storage) -> list[str]:
    return sorted(file.relative for file in store.owned_files())


def test_a_committed_file_is_stored_whole_under_its_key_and_nothing_else_is_left(
    store: S3Storage,
) -> None:
    data = os.urandom(11 * MIB + 123)  # three multipart parts
    key = download_relpath(uuid.uuid4(), "wav")
    cached = _write(store, key, data)
    assert _keys(store) == [key]  # the temporary key is gone
    assert cached == store.cache.path_for(key) and cached.read_bytes() == data
    assert store.location(key) == f"{store.url}/{key}" and store.url.startswith("s3://")
    cached.unlink()  # not cached any more: read from the bucket
    with store.local_file(key) as path:
        assert path.read_bytes() == data


def test_the_store_survives_pickling_for_an_engine_child_process(store: S3Storage) -> None:
    key = download_relpath(uuid.uuid4(), "wav")
    _write(store, key, b"audio" * 500)
    copy = pickle.loads(pickle.dumps(store))
    copy.cache.forget(key)
    with copy.local_file(key) as path:
        assert path.read_bytes() == b"audio" * 500


def test_another_host_reads_the_object_into_its_own_cache(
    store: S3Storage, s3_server: S3Server, tmp_path: Path
) -> None:
    key = stem_relpath(uuid.uuid4(), uuid.uuid4(), "vocals", "flac")
    _write(store, key, b"stem bytes" * 1000)
    other = _store(s3_server.endpoint, store.bucket, tmp_path / "cache-b")
    with other.local_file(key) as path:
        assert path.is_relative_to(tmp_path / "cache-b")
        assert path.read_bytes() == b"stem bytes" * 1000
    store.remove(key)
    with other.local_file(key) as path:  # a cached copy is reused without the bucket
        assert path.read_bytes() == b"stem bytes" * 1000
    other.cache.forget(key)
    with pytest.raises(StorageError, match="missing"), other.local_file(key):
        pass


def test_the_cache_keeps_under_its_bound_evicting_the_least_recently_used_but_not_a_held_file(
    tmp_path: Path,
) -> None:
    cache = LocalCache(tmp_path / "cache", max_bytes=2500, min_age_s=0)
    keys = [f"downloads/{index}.wav" for index in range(4)]

    def filler(fill_byte: bytes) -> Callable[[Path], None]:
        def fill(temp: Path) -> None:
            temp.write_bytes(fill_byte * 1000)

        return fill

    with cache.held(keys[0], filler(b"0")) as held_path:
        for index, key in enumerate(keys[1:3], start=1):
            with cache.held(key, filler(str(index).encode())):
                pass
            time.sleep(0.01)
        assert held_path.exists()  # over the bound, but in use: key 1 went instead
        assert not cache.path_for(keys[1]).exists()
    with cache.held(keys[3], filler(b"3")):
        pass
    assert cache.size_bytes() <= 2500
    recent = LocalCache(tmp_path / "cache", max_bytes=0)  # files used lately are kept
    assert recent.trim() == 0 and cache.path_for(keys[3]).exists()
    assert not cache.path_for(keys[0]).exists() and cache.path_for(keys[3]).exists()


def test_open_range_streams_the_requested_bytes_on_both_backends(
    store: S3Storage, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 40
    key = download_relpath(uuid.uuid4(), "flac")
    _write(store, key, data)
    local = Storage(tmp_path / "local")
    with local.atomic_write(key) as handle:
        handle.write(data)
    for backend in (store, local):
        part = backend.open_range(key, 100, 2100)
        assert (part.start, part.end, part.size) == (100, 2100, len(data))
        assert b"".join(part.chunks) == data[100:2100]
        tail = backend.open_range(key, len(data) - 10)
        assert b"".join(tail.chunks) == data[-10:]
        with pytest.raises(StorageError, match="outside"):
            backend.open_range(key, len(data) + 5)
        with pytest.raises(StorageError, match="missing"):
            backend.open_range("downloads/nothing.wav", 0, 10)


def test_cleanup_on_a_bucket_follows_the_same_rules_as_the_local_folder(
    conn: psycopg.Connection[Any], database_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "unused", cache_path=tmp_path / "cache",
                            storage_orphan_grace_s=3600.0, storage_temp_grace_s=3600.0,
                            **s3_settings(s3_server.endpoint, s3_server.bucket()))  # fmt: skip
    store = open_storage(settings)
    assert isinstance(store, S3Storage)
    failed = jobs.fail(conn, _running_download(conn), "gone")
    live = _running_download(conn)
    orphan = download_relpath(failed.track_id, "wav")
    in_flight = download_relpath(live.track_id, "wav")
    unknown_track = stem_relpath(uuid.uuid4(), uuid.uuid4(), "drums", "flac")
    leaked_temp = f"downloads/{TEMP_PREFIX}{uuid.uuid4().hex}-{failed.track_id}.wav"
    for key in (orphan, in_flight, unknown_track, leaked_temp):
        _write(store, key, b"x" * 2048)
    foreign = "models/hub/htdemucs.th"  # not SoundForge's: never listed, never removed
    store.upload(store.cache.path_for(orphan), foreign)
    assert maintenance.cleanup_orphaned(conn, settings).count == 0  # all younger than grace
    later = time.time() + 2 * 86400
    dry = maintenance.cleanup_orphaned(conn, settings, dry_run=True, now=lambda: later)
    assert sorted(dry.paths) == sorted([orphan, unknown_track, leaked_temp])
    report = maintenance.cleanup_orphaned(conn, settings, now=lambda: later)
    assert (report.count, report.bytes) == (3, 3 * 2048)
    assert _keys(store) == [in_flight]  # its download still runs: it writes or records it
    assert store.remove(foreign) and store.stats().download_files == 1
    with pytest.raises(StorageError, match="own storage areas"):
        store.remove_owned(foreign)


def _running_download(conn: psycopg.Connection[Any]) -> Job:
    job = jobs.create_job(conn, Stage.DOWNLOAD, make_track(conn).id)
    return jobs.advance(conn, job, Status.DOWNLOADING)


def test_an_upload_cut_mid_transfer_leaves_no_visible_object_and_a_later_one_succeeds(
    s3_server: S3Server, tmp_path: Path
) -> None:
    bucket = s3_server.bucket()
    proxy = CuttingProxy(s3_server.port, cut_after_bytes=7 * MIB)
    try:
        store = _store(proxy.endpoint, bucket, tmp_path / "cache")
        key = download_relpath(uuid.uuid4(), "wav")
        data = os.urandom(12 * MIB)
        temp = store.temp_path_for(key)
        temp.write_bytes(data)
        with pytest.raises(TransientError, match="could not store"):
            store.commit(temp, key)
        assert proxy.cut_done.is_set()
        proxy.heal()
        assert _keys(store) == []  # neither the key nor a half-written temporary
        assert not store.cache.path_for(key).exists()
        assert store.commit(temp, key).read_bytes() == data
        assert _keys(store) == [key]
    finally:
        proxy.close()


def test_an_unreachable_bucket_fails_the_check_with_one_line(tmp_path: Path) -> None:
    store = _store(f"http://127.0.0.1:{free_port()}", "nowhere", tmp_path / "cache")
    with pytest.raises(ConfigError, match="not writable") as caught:
        store.check()
    assert "\n" not in str(caught.value) and "test-secret" not in str(caught.value)


def test_the_storage_url_chooses_the_backend(tmp_path: Path) -> None:
    local = open_storage(load_settings(storage_url=f"file://{tmp_path}/files"))
    assert isinstance(local, Storage) and local.root == tmp_path / "files"
    default = open_storage(load_settings(storage_path=tmp_path / "plain"))
    assert isinstance(default, Storage) and default.root == tmp_path / "plain"
    with pytest.raises(ConfigError, match="STORAGE_URL"):
        load_settings(storage_url="ftp://host/x")
    with pytest.raises(ConfigError, match="credentials"):
        open_storage(load_settings(storage_url="s3://key:secret@bucket/x"))


STREAMING_SCRIPT = """
import os, sys
from pathlib import Path
from soundforge.settings import load_settings
from soundforge.storage_s3 import S3Storage
endpoint, bucket, cache, size = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
store = S3Storage(f"s3://{bucket}/sf", load_settings(
    storage_url=f"s3://{bucket}/sf", s3_endpoint_url=endpoint, s3_region="us-east-1",
    s3_access_key_id="k", s3_secret_access_key="s", cache_path=cache))
temp = store.temp_path_for("downloads/big.wav")
with open(temp, "wb") as handle:
    for _ in range(size // (1 << 20)):
        handle.write(os.urandom(1 << 20))
store.commit(temp, "downloads/big.wav")
store.cache.forget("downloads/big.wav")
with store.local_file("downloads/big.wav") as path:
    assert path.stat().st_size == size
# VmHWM: this process's peak RSS (ru_maxrss would start from the parent's at the fork)
print(next(int(line.split()[1]) // 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM")))
"""


def test_a_large_file_is_uploaded_and_fetched_without_being_held_in_memory(
    s3_server: S3Server, tmp_path: Path
) -> None:
    size = 160 * MIB
    result = subprocess.run(
        [sys.executable, "-c", STREAMING_SCRIPT, s3_server.endpoint, s3_server.bucket(),
         str(tmp_path / "cache"), str(size)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    peak_mib = int(result.stdout.strip())
    assert peak_mib < 130, f"peak RSS {peak_mib} MiB for a {size // MIB} MiB file"
