"""The file store: every audio file SoundForge keeps lives under one root, at a path derived
from row ids, written atomically and recorded in the database relative to the root.

Layout: `downloads/<track_id>.<ext>` and `stems/<track_id>/<processing_job_id>/<stem>.<ext>`.
Writes go to a hidden temporary name in the destination folder, are fsynced and renamed into
place, so a reader never sees half a file. Every path is confined under the root: `..`,
absolute paths and symlinks that lead out are refused.

SoundForge owns only `downloads/` and `stems/` (temporaries included) under the root; cleanup
lists and removes nothing else. The ownership rules work on keys (`is_owned_key`,
`is_temp_key`, `owner_of`, `StoredFile.old_enough`), so another backend can reuse them. This
module knows nothing of the database: `soundforge.maintenance` decides, under the rows' locks,
which candidates no row needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from soundforge.errors import StorageError

TEMP_PREFIX = ".sf-tmp-"
DOWNLOADS_DIR = "downloads"
STEMS_DIR = "stems"
READ_CHUNK_BYTES = 256 * 1024
OWNED_AREAS = (DOWNLOADS_DIR, STEMS_DIR)
_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
IMPORTS_DIR = "imports"
"""The default import root (`SOUNDFORGE_IMPORT_ROOTS`): users' files, never walked here."""


@dataclass(frozen=True)
class CleanupReport:
    """What orphan cleanup removed (or would remove, in a dry run)."""

    count: int
    bytes: int
    paths: list[str] = field(default_factory=list)
    dry_run: bool = False


@dataclass(frozen=True)
class StoredFile:
    """One file of SoundForge's own areas, by its key (the POSIX path relative to the root)."""

    relative: str
    size: int
    mtime: float

    @property
    def temp(self) -> bool:
        return is_temp_key(self.relative)

    @property
    def owner(self) -> FileOwner | None:
        return owner_of(self.relative)

    def old_enough(self, now: float, orphan_grace_s: float, temp_grace_s: float) -> bool:
        """Whether its age passed the grace period of its kind (temporary or stored)."""
        return self.mtime <= now - (temp_grace_s if self.temp else orphan_grace_s)


@dataclass(frozen=True)
class FileOwner:
    """The rows a file's key names: its track, and for a stem file its separation run."""

    area: str  # DOWNLOADS_DIR or STEMS_DIR
    track_id: uuid.UUID
    processing_job_id: uuid.UUID | None = None


@dataclass
class ByteRange:
    """A byte range of a stored file (`start` to `end`, exclusive) and the file's size; the
    bytes come as chunks, never whole in memory."""

    start: int
    end: int
    size: int
    chunks: Iterator[bytes]


@dataclass(frozen=True)
class StorageStats:
    """File counts and sizes under the root, per top-level area."""

    files: int
    bytes: int
    download_files: int
    download_bytes: int
    stem_files: int
    stem_bytes: int
    temp_files: int


def download_relpath(track_id: uuid.UUID | str, ext: str) -> str:
    """Where a track's downloaded audio lives, relative to the root."""
    return f"{DOWNLOADS_DIR}/{uuid.UUID(str(track_id))}.{_clean_ext(ext)}"


def stems_relpath(track_id: uuid.UUID | str, processing_job_id: uuid.UUID | str) -> str:
    """The folder of one separation run's stems, relative to the root."""
    return f"{STEMS_DIR}/{uuid.UUID(str(track_id))}/{uuid.UUID(str(processing_job_id))}"


def stem_relpath(
    track_id: uuid.UUID | str, processing_job_id: uuid.UUID | str, stem: str, ext: str
) -> str:
    """Where one stem of one separation run lives, relative to the root."""
    if not stem.isidentifier():
        raise StorageError(f"invalid stem name {stem!r}")
    return f"{stems_relpath(track_id, processing_job_id)}/{stem}.{_clean_ext(ext)}"


def _clean_ext(ext: str) -> str:
    ext = ext.lstrip(".").lower()
    if not ext.isalnum() or len(ext) > 8:
        raise StorageError(f"invalid file extension {ext!r}")
    return ext


def is_temp_name(name: str) -> bool:
    """True for the hidden names atomic writes use before the rename."""
    return name.startswith(TEMP_PREFIX)


# -- ownership: the rules cleanup follows, on keys, so any storage backend can apply them -----

def is_owned_key(relative: str) -> bool:
    """Whether a key lies in SoundForge's own areas (`downloads/`, `stems/`); cleanup never
    touches anything else under the root (a user's files, a model cache)."""
    parts = PurePosixPath(relative).parts
    return len(parts) >= 2 and parts[0] in OWNED_AREAS and ".." not in parts


def is_temp_key(relative: str) -> bool:
    """Whether an owned key is a temporary (a partial download, separation scratch, an
    unfinished atomic write, or anything inside a temporary folder)."""
    return is_owned_key(relative) and any(
        is_temp_name(part) for part in PurePosixPath(relative).parts[1:]
    )


def owner_of(relative: str) -> FileOwner | None:
    """The track (and separation run) an owned key belongs to, read from its name:
    `downloads/<track>.<ext>` and its temporaries (`.sf-tmp-<token>-<track>...`), and
    `stems/<track>/<run>/...`. None when the name names none."""
    if not is_owned_key(relative):
        return None
    parts = PurePosixPath(relative).parts
    if parts[0] == DOWNLOADS_DIR:
        found = _UUID_TEXT.search(parts[1])
        return FileOwner(DOWNLOADS_DIR, uuid.UUID(found[0])) if found else None
    ids = [_parse_uuid(part) for part in parts[1:3]]
    if len(ids) == 2 and ids[0] is not None and ids[1] is not None:
        return FileOwner(STEMS_DIR, ids[0], ids[1])
    return None


def _parse_uuid(text: str) -> uuid.UUID | None:
    return uuid.UUID(text) if _UUID_TEXT.fullmatch(text) else None


def regular_files(top: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every regular file below `top` with its `lstat` (symlinks are not followed; a file
    removed meanwhile is skipped)."""
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            path = Path(dirpath) / name
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                yield path, info


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Storage:
    """The storage root and the only code that writes or removes files under it."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def check_writable(self) -> None:
        """Create the root if needed and prove a file can be written and renamed in it (what
        every stored file needs); `StorageError` with the root and the cause otherwise."""
        try:
            self.ensure_root()
        except OSError as error:
            raise StorageError(f"cannot create the storage folder {self.root} "
                               f"({error.strerror})") from None  # fmt: skip
        probe = self.root / f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"
        try:
            with open(probe, "xb") as handle:
                handle.write(b"soundforge")
            os.replace(probe, probe.with_name(probe.name + "-renamed"))
            probe.with_name(probe.name + "-renamed").unlink()
        except OSError as error:
            raise StorageError(f"cannot write into the storage folder {self.root} "
                               f"({error.strerror})") from None  # fmt: skip
        finally:
            probe.unlink(missing_ok=True)

    # -- paths -------------------------------------------------------------------------------

    def resolve(self, relative: str | Path) -> Path:
        """The absolute path of a stored relative path, refusing anything that leaves the root."""
        text = str(relative)
        if not text or PurePosixPath(text).is_absolute() or Path(text).is_absolute():
            raise StorageError(f"stored paths must be relative to the storage root: {text!r}")
        parts = PurePosixPath(text.replace(os.sep, "/")).parts
        if ".." in parts:
            raise StorageError(f"path leaves the storage root: {text!r}")
        candidate = self.root.joinpath(*parts)
        if self._has_symlink_below_root(parts):
            real = candidate.resolve()
            real_root = self.root.resolve()
            if real != real_root and not real.is_relative_to(real_root):
                raise StorageError(f"path leads out of the storage root (symlink?): {text!r}")
        return candidate

    def _has_symlink_below_root(self, parts: tuple[str, ...]) -> bool:
        """Whether a component under the root is a symlink (only then can a path without
        `..` lead out of it); a missing component ends the walk, nothing below it exists."""
        path = str(self.root)
        for part in parts:
            path = os.path.join(path, part)
            try:
                if stat.S_ISLNK(os.lstat(path).st_mode):
                    return True
            except FileNotFoundError:
                return False
        return False

    def relative(self, path: Path | str) -> str:
        """The stored (relative, POSIX) form of an absolute path under the root."""
        absolute = Path(path).absolute()
        try:
            relative = absolute.relative_to(self.root)
        except ValueError:
            raise StorageError(f"{absolute} is not under the storage root {self.root}") from None
        text = relative.as_posix()
        self.resolve(text)
        return text

    # -- atomic writes -----------------------------------------------------------------------

    def temp_path_for(self, relative: str | Path) -> Path:
        """A fresh hidden temporary path beside the destination (same filesystem: rename is
        atomic); the destination's folder is created."""
        destination = self.resolve(relative)
        destination.parent.mkdir(parents=True, exist_ok=True)
        self.resolve(relative)  # the new parent could be a symlink planted meanwhile
        return destination.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{destination.name}")

    def commit(self, temp_path: Path, relative: str | Path) -> Path:
        """fsync a finished temporary file and rename it into place; returns the final path."""
        destination = self.resolve(relative)
        if temp_path.parent.resolve() != destination.parent.resolve():
            raise StorageError("a temporary file must live in its destination's folder")
        with open(temp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temp_path, destination)
        fsync_dir(destination.parent)
        return destination

    @contextlib.contextmanager
    def atomic_write(self, relative: str | Path) -> Iterator[BinaryIO]:
        """Open a temporary file for writing; on a clean exit it replaces `relative`, on an
        exception it is removed and nothing at `relative` changes."""
        temp_path = self.temp_path_for(relative)
        try:
            with open(temp_path, "xb") as handle:
                yield handle
            self.commit(temp_path, relative)
        finally:
            temp_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def atomic_path(self, relative: str | Path) -> Iterator[Path]:
        """Like `atomic_write` for writers that want a path (soundfile, yt-dlp, ffmpeg)."""
        temp_path = self.temp_path_for(relative)
        try:
            yield temp_path
            if not temp_path.exists():
                raise StorageError(f"nothing was written for {relative}")
            self.commit(temp_path, relative)
        finally:
            temp_path.unlink(missing_ok=True)

    def remove(self, relative: str | Path) -> bool:
        """Remove one stored file; True if it existed. Empty parent folders go too."""
        path = self.resolve(relative)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty_dirs(path.parent)
        return True

    def _prune_empty_dirs(self, directory: Path, stop: Path | None = None) -> None:
        """Remove `directory` and its parents while they are empty, up to (not including)
        `stop` (default: the root)."""
        stop = stop or self.root
        while directory != stop and directory.is_relative_to(stop):
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    # -- inventory ---------------------------------------------------------------------------

    def walk_files(self) -> Iterator[Path]:
        """Every regular file under the root (symlinks are not followed), except the users'
        files waiting in `imports/`."""
        if not self.root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(self.root):
            if dirpath == str(self.root) and IMPORTS_DIR in dirnames:
                dirnames.remove(IMPORTS_DIR)
            for name in filenames:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    yield path

    def owned_files(self) -> Iterator[StoredFile]:
        """Every regular file in SoundForge's own areas (`downloads/`, `stems/`), temporaries
        included; nothing else under the root is listed (symlinks are not followed)."""
        for area in OWNED_AREAS:
            top = self.root / area
            if top.is_symlink() or not top.is_dir():
                continue
            for path, info in regular_files(top):
                relative = path.relative_to(self.root).as_posix()
                yield StoredFile(relative, info.st_size, info.st_mtime)

    def cleanup_candidates(
        self, orphan_grace_s: float, temp_grace_s: float, now: Callable[[], float] = time.time
    ) -> list[StoredFile]:
        """Owned files old enough that cleanup may remove them if no row needs them."""
        return cleanup_candidates(self.owned_files(), orphan_grace_s, temp_grace_s, now)

    def remove_owned(self, relative: str) -> bool:
        """Remove one file of SoundForge's own areas (anything else is refused); True if it
        existed. Empty folders inside the area go too."""
        if not is_owned_key(relative):
            raise StorageError(f"{relative!r} is not in SoundForge's own storage areas")
        path = self.resolve(relative)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._prune_empty_dirs(path.parent, stop=self.root / relative.split("/", 1)[0])
        return True

    def stats(self) -> StorageStats:
        return stats_of(self.owned_files())

    # -- the interface every backend offers (see soundforge.file_store) ---------------------

    def location(self, relative: str) -> str:
        """Where a stored file is, for people: its absolute path."""
        return str(self.resolve(relative))

    def check(self) -> None:
        """The root exists (created) and is writable (`check_writable`)."""
        self.check_writable()

    @contextlib.contextmanager
    def local_file(self, relative: str) -> Iterator[Path]:
        """A readable local path of a stored file (here: the file itself)."""
        path = self.resolve(relative)
        if not path.is_file():
            raise StorageError(f"stored file {relative} is missing: {path}")
        yield path

    def local_path(self, relative: str) -> Path:
        """A readable local path of a stored file (here: the file itself)."""
        with self.local_file(relative) as path:
            return path

    def output_dir(self, relative: str) -> Path:
        """A local folder whose files become stored under `relative/` once `publish`ed (here:
        the destination folder itself)."""
        path = self.resolve(relative)
        path.mkdir(parents=True, exist_ok=True)
        self.resolve(relative)  # the new folder could be a symlink planted meanwhile
        return path

    def publish(self, paths: Iterable[Path]) -> None:
        """Store files written into an `output_dir` (here they already are)."""

    def open_range(self, relative: str, start: int = 0, end: int | None = None) -> ByteRange:
        """Bytes `start`..`end` (exclusive; None: to the end) of a stored file, streamed."""
        path = self.resolve(relative)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise StorageError(f"stored file {relative} is missing: {path}") from None
        first, stop = clamp_range(start, end, size)

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as handle:
                handle.seek(first)
                left = stop - first
                while left > 0:
                    data = handle.read(min(READ_CHUNK_BYTES, left))
                    if not data:
                        return
                    left -= len(data)
                    yield data

        return ByteRange(first, stop, size, chunks())


def cleanup_candidates(
    files: Iterable[StoredFile],
    orphan_grace_s: float,
    temp_grace_s: float,
    now: Callable[[], float] = time.time,
) -> list[StoredFile]:
    """The rule of cleanup on any backend's `owned_files`: those old enough that cleanup may
    remove them if no row needs them (the caller checks that, under the rows' locks)."""
    moment = now()
    return sorted(
        (file for file in files if file.old_enough(moment, orphan_grace_s, temp_grace_s)),
        key=lambda file: file.relative,
    )


def stats_of(files: Iterable[StoredFile]) -> StorageStats:
    """File counts and sizes per top-level area of a backend's listing."""
    areas = {DOWNLOADS_DIR: [0, 0], STEMS_DIR: [0, 0]}
    count = total = temps = 0
    for file in files:
        count += 1
        total += file.size
        temps += is_temp_name(PurePosixPath(file.relative).name)
        area = areas.get(file.relative.split("/", 1)[0])
        if area is not None:
            area[0] += 1
            area[1] += file.size
    return StorageStats(
        files=count, bytes=total,
        download_files=areas[DOWNLOADS_DIR][0], download_bytes=areas[DOWNLOADS_DIR][1],
        stem_files=areas[STEMS_DIR][0], stem_bytes=areas[STEMS_DIR][1], temp_files=temps,
    )  # fmt: skip


def clamp_range(start: int, end: int | None, size: int) -> tuple[int, int]:
    """A requested byte range cut to the file; refused when it starts past the end."""
    stop = size if end is None else min(end, size)
    if start < 0 or (start >= size > 0) or stop < start:
        raise StorageError(f"byte range {start}-{end} is outside the file ({size} bytes)")
    return start, stop
