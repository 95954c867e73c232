"""The one interface to stored files, whatever holds them, and the choice of backend from the
settings: `SOUNDFORGE_STORAGE_URL` (`file:///var/lib/soundforge` or `s3://bucket/prefix`), else
the local folder `SOUNDFORGE_STORAGE_PATH`.

Every caller (stages, `delete`, `cleanup`, `status`, the dashboard) goes through `FileStore`:
keys are the relative POSIX paths rows store (`downloads/<track>.<ext>`,
`stems/<track>/<run>/<stem>.<ext>`); engines get local paths (`local_file`, `output_dir`).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from soundforge.errors import ConfigError
from soundforge.settings import Settings
from soundforge.storage import ByteRange, Storage, StorageStats, StoredFile


class FileStore(Protocol):
    """What the local folder (`soundforge.storage.Storage`) and object storage
    (`soundforge.storage_s3.S3Storage`) both offer."""

    def location(self, relative: str) -> str:
        """Where a stored file is, for people (a path or an s3:// URL)."""

    def check(self) -> None:
        """Raise `ConfigError` when the store cannot be written."""

    def temp_path_for(self, relative: str) -> Path:
        """A local temporary path to write before `commit`."""

    def commit(self, temp_path: Path, relative: str) -> Path:
        """Store a finished temporary file as `relative` (visible only when whole)."""

    def output_dir(self, relative: str) -> Path:
        """A local folder for a stage's outputs under `relative/` (stored by `publish`)."""

    def publish(self, paths: Iterable[Path]) -> None:
        """Store the files written into an `output_dir`."""

    def relative(self, path: Path | str) -> str:
        """The key of a local path given out by this store."""

    def local_file(self, relative: str) -> AbstractContextManager[Path]:
        """A readable local path of a stored file, valid until the block ends."""

    def local_path(self, relative: str) -> Path:
        """A readable local path of a stored file, for a reader that opens it at once (a
        cached copy is not evicted for the cache's minimum age)."""

    def open_range(self, relative: str, start: int = 0, end: int | None = None) -> ByteRange:
        """A byte range of a stored file, streamed (for players that seek)."""

    def remove(self, relative: str) -> bool:
        """Delete one stored file; True if it existed."""

    def owned_files(self) -> Iterator[StoredFile]:
        """The files of SoundForge's own areas (`downloads/`, `stems/`), with sizes and
        times: what cleanup and stats look at; nothing else is listed."""

    def cleanup_candidates(
        self, orphan_grace_s: float, temp_grace_s: float, now: Callable[[], float] = ...
    ) -> list[StoredFile]:
        """Owned files old enough for cleanup (`soundforge.storage.cleanup_candidates`)."""

    def remove_owned(self, relative: str) -> bool:
        """Remove one file of SoundForge's own areas (anything else is refused)."""

    def stats(self) -> StorageStats:
        """Counts and sizes per area."""


def open_storage(settings: Settings) -> FileStore:
    """The backend the settings name."""
    url = settings.storage_url
    if not url:
        return Storage(settings.storage_path)
    if url.startswith("s3://"):
        from soundforge.storage_s3 import S3Storage

        return S3Storage(url, settings)
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ConfigError(f"SOUNDFORGE_STORAGE_URL={url}: expected file:///absolute/path")
    return Storage(Path(urllib.parse.unquote(parts.path)))
