"""The file store: layout, atomic writes, confinement under the root, orphan cleanup."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from soundforge.errors import StorageError
from soundforge.storage import TEMP_PREFIX, Storage, download_relpath, stem_relpath

NOW = 1_800_000_000.0


def test_layout_is_downloads_and_stems_by_ids() -> None:
    track, job = uuid.uuid4(), uuid.uuid4()
    assert download_relpath(track, ".MP3") == f"downloads/{track}.mp3"
    assert stem_relpath(track, job, "vocals", "flac") == f"stems/{track}/{job}/vocals.flac"
    with pytest.raises(StorageError):
        stem_relpath(track, job, "../x", "flac")
    with pytest.raises(StorageError):
        download_relpath(track, "w/v")


@pytest.mark.parametrize("bad", ["../etc/passwd", "/etc/passwd", "downloads/../../x", ""])
def test_paths_that_leave_the_root_are_refused(storage: Storage, bad: str) -> None:
    with pytest.raises(StorageError):
        storage.resolve(bad)


def test_symlinks_pointing_out_of_the_root_are_refused(storage: Storage, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (storage.root / "downloads").symlink_to(outside)
    with pytest.raises(StorageError, match="symlink"):
        storage.resolve("downloads/x.wav")
    with pytest.raises(StorageError), storage.atomic_write("downloads/x.wav") as handle:
        handle.write(b"data")
    assert list(outside.iterdir()) == []


def test_relative_gives_the_stored_form_and_refuses_outside_paths(
    storage: Storage, tmp_path: Path
) -> None:
    assert storage.relative(storage.root / "downloads" / "a.wav") == "downloads/a.wav"
    with pytest.raises(StorageError):
        storage.relative(tmp_path / "elsewhere.wav")


def test_atomic_write_leaves_nothing_behind_when_the_writer_fails(storage: Storage) -> None:
    with pytest.raises(RuntimeError), storage.atomic_write("downloads/a.wav") as handle:
        handle.write(b"half")
        raise RuntimeError("writer died")
    assert list((storage.root / "downloads").iterdir()) == []
    with storage.atomic_write("downloads/a.wav") as handle:
        handle.write(b"whole")
    assert storage.resolve("downloads/a.wav").read_bytes() == b"whole"
    assert [p.name for p in (storage.root / "downloads").iterdir()] == ["a.wav"]


def test_store_copy_never_moves_the_source(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "song.wav"
    source.write_bytes(b"RIFF" + b"\0" * 2000)
    stored = storage.store_copy(source, "downloads/song.wav")
    assert source.exists() and stored.read_bytes() == source.read_bytes()
    assert os.stat(stored).st_ino == os.stat(source).st_ino  # same filesystem: a hard link


def _write(storage: Storage, rel: str, size: int, age_s: float) -> Path:
    path = storage.resolve(rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (NOW - age_s, NOW - age_s))
    return path


def test_cleanup_orphaned_removes_only_old_unreferenced_non_temporary_files(
    storage: Storage,
) -> None:
    referenced = _write(storage, "downloads/kept.wav", 10, 7200)
    orphan = _write(storage, "stems/t/j/vocals.flac", 30, 7200)
    temporary = _write(storage, f"downloads/{TEMP_PREFIX}abc-x.wav", 5, 7200)
    fresh = _write(storage, "downloads/new.wav", 7, 60)

    dry = storage.cleanup_orphaned(
        {"downloads/kept.wav"}, dry_run=True, grace_s=3600, now=lambda: NOW
    )
    assert (dry.count, dry.bytes, dry.paths) == (1, 30, ["stems/t/j/vocals.flac"])
    assert orphan.exists()

    report = storage.cleanup_orphaned({"downloads/kept.wav"}, grace_s=3600, now=lambda: NOW)
    assert (report.count, report.bytes) == (1, 30)
    assert not orphan.exists() and not (storage.root / "stems").exists()
    assert referenced.exists() and temporary.exists() and fresh.exists()


def test_cleanup_never_touches_the_default_import_root(storage: Storage) -> None:
    """`imports/` holds the users' files waiting to be imported (the default
    SOUNDFORGE_IMPORT_ROOTS): referenced by no row, and still never SoundForge's to delete."""
    waiting = _write(storage, "imports/song.flac", 10, 7200)
    nested = _write(storage, "imports/album/track.flac", 10, 7200)
    report = storage.cleanup_orphaned(set(), grace_s=3600, now=lambda: NOW)
    assert report.count == 0 and waiting.exists() and nested.exists()


def test_stats_counts_files_per_area(storage: Storage) -> None:
    _write(storage, "downloads/a.wav", 10, 0)
    _write(storage, "stems/t/j/vocals.flac", 20, 0)
    _write(storage, f"stems/t/j/{TEMP_PREFIX}x", 1, 0)
    stats = storage.stats()
    assert (stats.files, stats.bytes, stats.temp_files) == (3, 31, 1)
    assert (stats.download_files, stats.download_bytes) == (1, 10)
    assert (stats.stem_files, stats.stem_bytes) == (2, 21)
