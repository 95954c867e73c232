"""A host's local cache of stored files, for a storage backend whose files are not on this host
(object storage): `<cache>/objects/<key>` mirrors the keys, the stages of one host share it
(processes included), and it is bounded in bytes, evicting the least recently used file.

A file in use is held with a shared `flock` for as long as a stage reads it; eviction takes an
exclusive non-blocking lock before it unlinks, so it never removes a file a stage is about to
open or is reading; nor a file written or used in the last `min_age_s` (a stage's outputs
between their writing and their upload). Either may keep the cache over its bound a while.
Last use is the file's mtime, touched on every use. Fills and new files are written to a
temporary name beside the destination and renamed into place: no reader sees half a file.

Written here rather than taken from a library: `diskcache` and friends keep values in SQLite or
pickles, not as plain files that demucs, soundfile and ffmpeg can open by path, and none locks
entries against eviction across processes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from soundforge.errors import StorageError
from soundforge.storage import TEMP_PREFIX, is_temp_name, regular_files

log = logging.getLogger(__name__)

OBJECTS_DIR = "objects"
STALE_TEMP_S = 24 * 3600.0  # a temporary this old was left by a process that died


def check_key(key: str) -> str:
    """A key as stored: relative, POSIX, without `..` or empty parts."""
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or ".." in parts or "" in key.split("/"):
        raise StorageError(f"invalid storage key {key!r}")
    return key


class LocalCache:
    """Files of a remote store kept on this host, at most `max_bytes` of them (0 = keep only
    what is in use)."""

    def __init__(self, root: Path | str, max_bytes: int, min_age_s: float = 300.0) -> None:
        self.root = Path(root).absolute()
        self.objects = self.root / OBJECTS_DIR
        self.max_bytes = max_bytes
        self.min_age_s = min_age_s
        self._trim_lock = threading.Lock()

    def __getstate__(self) -> dict[str, object]:
        """Picklable (an engine child process gets the store): the lock stays behind."""
        return {name: value for name, value in self.__dict__.items() if name != "_trim_lock"}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._trim_lock = threading.Lock()

    def path_for(self, key: str) -> Path:
        """Where the cached copy of `key` lives (whether or not it is there)."""
        return self.objects.joinpath(*PurePosixPath(check_key(key)).parts)

    def key_of(self, path: Path | str) -> str:
        """The key a path under the cache stands for."""
        try:
            relative = Path(path).absolute().relative_to(self.objects)
        except ValueError:
            raise StorageError(f"{path} is not in the local cache {self.objects}") from None
        return check_key(relative.as_posix())

    def staging_path(self, key: str) -> Path:
        """A fresh temporary path beside `key`'s place (a rename from it is atomic)."""
        destination = self.path_for(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        return destination.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{destination.name}")

    def directory(self, key: str) -> Path:
        """The folder for keys under `key/` (created)."""
        path = self.path_for(key)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def adopt(self, temp_path: Path, key: str) -> Path:
        """Move a finished file into the cache as `key`'s copy; the cache is trimmed."""
        destination = self.path_for(key)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp_path, destination)
        self.trim()
        return destination

    def forget(self, key: str) -> None:
        """Drop the cached copy of `key`, if any (its stored file was removed)."""
        self.path_for(key).unlink(missing_ok=True)

    @contextlib.contextmanager
    def held(self, key: str, fill: Callable[[Path], None]) -> Iterator[Path]:
        """A local path of `key` that stays on disk until the block ends; `fill(temp_path)`
        writes the file when it is not cached yet."""
        path = self.path_for(key)
        for _ in range(5):
            handle = self._open_locked(path)
            if handle is None:
                temp_path = self.staging_path(key)
                try:
                    fill(temp_path)
                    os.replace(temp_path, path)
                finally:
                    temp_path.unlink(missing_ok=True)
                continue  # lock the copy just made (eviction may race it: then fill again)
            try:
                os.utime(handle.fileno())  # last use, for LRU
                self.trim()
                yield path
            finally:
                handle.close()  # releases the shared lock
            return
        raise StorageError(f"could not keep {key} in the local cache (evicted repeatedly)")

    @staticmethod
    def _open_locked(path: Path) -> io.BufferedReader | None:
        """The file opened with a shared lock, or None when it is not (or no longer) there."""
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except FileNotFoundError:
            return None
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # evicted (or replaced) between the open and the lock
            handle.close()
            return None
        return handle

    # -- the bound ---------------------------------------------------------------------------

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, size, path) of every cached file; stale temporaries are removed."""
        entries: list[tuple[float, int, Path]] = []
        if not self.objects.is_dir():
            return entries
        stale_before = time.time() - STALE_TEMP_S
        for path, info in regular_files(self.objects):
            if not is_temp_name(path.name):
                entries.append((info.st_mtime, info.st_size, path))
            elif info.st_mtime < stale_before:
                path.unlink(missing_ok=True)
        return entries

    def size_bytes(self) -> int:
        return sum(size for _mtime, size, _path in self._entries())

    def trim(self) -> int:
        """Evict least recently used files until the cache fits `max_bytes`; files in use
        are skipped. Returns the bytes freed."""
        with self._trim_lock:
            entries = self._entries()
            total = sum(size for _mtime, size, _path in entries)
            freed = 0
            fresh_after = time.time() - self.min_age_s
            for mtime, size, path in sorted(entries, key=lambda entry: entry[0]):
                if total - freed <= self.max_bytes or mtime > fresh_after:
                    break
                if self._evict(path):
                    freed += size
            return freed

    @staticmethod
    def _evict(path: Path) -> bool:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return False
        with handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a stage holds it
            try:
                if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    return False
                path.unlink()
            except FileNotFoundError:
                return False
        log.debug("evicted %s from the local cache", path)
        return True
