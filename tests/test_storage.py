"""The file store: layout, atomic writes, confinement under the root, what cleanup may own."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from soundforge.errors import StorageError
from soundforge.storage import (
    TEMP_PREFIX,
    FileOwner,
    Storage,
    download_relpath,
    is_owned_key,
    owner_of,
    stem_relpath,
)

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


def test_only_downloads_and_stems_are_owned_and_listed(storage: Storage) -> None:
    track, run = uuid.uuid4(), uuid.uuid4()
    owned = [
        _write(storage, f"downloads/{track}.wav", 10, 7200),
        _write(storage, f"downloads/{TEMP_PREFIX}{'a' * 32}-{track}.part", 5, 7200),
        _write(storage, f"downloads/{TEMP_PREFIX}{'b' * 32}-{track}.part/song.mp3", 5, 7200),
        _write(storage, f"stems/{track}/{run}/vocals.flac", 30, 7200),
        _write(storage, f"stems/{track}/{run}/{TEMP_PREFIX}{'c' * 32}-mix.f32", 9, 7200),
    ]
    foreign = [
        _write(storage, "my music/album.flac", 10, 7200),
        _write(storage, "models/htdemucs.th", 10, 7200),
        _write(storage, f"{TEMP_PREFIX}not-ours-outside-the-areas", 1, 7200),
    ]
    listed = {file.relative: file for file in storage.owned_files()}
    assert sorted(listed) == sorted(storage.relative(path) for path in owned)
    assert not any(storage.relative(path) in listed for path in foreign)
    assert [key for key, file in sorted(listed.items()) if file.temp] == sorted(
        storage.relative(path) for path in owned[1:3] + owned[4:]
    )
    assert owner_of(f"downloads/{TEMP_PREFIX}{'a' * 32}-{track}.part") == FileOwner(
        "downloads", track
    )
    assert owner_of(f"stems/{track}/{run}/vocals.flac") == FileOwner("stems", track, run)
    assert owner_of("models/htdemucs.th") is None and not is_owned_key("models/htdemucs.th")
    with pytest.raises(StorageError):
        storage.remove_owned("my music/album.flac")
    assert foreign[0].exists()


def test_cleanup_candidates_follow_each_kind_of_grace(storage: Storage) -> None:
    old_stored = _write(storage, "downloads/old.wav", 10, 7200)
    _write(storage, "downloads/new.wav", 10, 60)
    old_temp = _write(storage, f"downloads/{TEMP_PREFIX}x-old.part", 10, 7200)
    _write(storage, f"downloads/{TEMP_PREFIX}x-new.part", 10, 600)
    candidates = storage.cleanup_candidates(orphan_grace_s=3600, temp_grace_s=3600,
                                            now=lambda: NOW)  # fmt: skip
    assert [file.relative for file in candidates] == sorted(
        storage.relative(path) for path in (old_stored, old_temp)
    )
    assert storage.remove_owned("downloads/old.wav") and not old_stored.exists()
    assert not storage.remove_owned("downloads/old.wav")


def test_cleanup_never_touches_the_default_import_root(storage: Storage) -> None:
    """`imports/` holds the users' files waiting to be imported (the default
    SOUNDFORGE_IMPORT_ROOTS): referenced by no row, and still never SoundForge's to delete."""
    waiting = _write(storage, "imports/song.flac", 10, 7200)
    nested = _write(storage, "imports/album/track.flac", 10, 7200)
    assert storage.cleanup_candidates(3600, 3600, now=lambda: NOW) == []
    assert not is_owned_key("imports/song.flac")
    with pytest.raises(StorageError):
        storage.remove_owned("imports/album/track.flac")
    assert waiting.exists() and nested.exists()


def test_stats_counts_files_per_area(storage: Storage) -> None:
    _write(storage, "downloads/a.wav", 10, 0)
    _write(storage, "stems/t/j/vocals.flac", 20, 0)
    _write(storage, f"stems/t/j/{TEMP_PREFIX}x", 1, 0)
    stats = storage.stats()
    assert (stats.files, stats.bytes, stats.temp_files) == (3, 31, 1)
    assert (stats.download_files, stats.download_bytes) == (1, 10)
    assert (stats.stem_files, stats.stem_bytes) == (2, 21)
