"""Stored audio for the browser: one read function (`stored_file`) that every served file goes
through, so only files under the storage root are ever served (a crafted or tampered path is
"not found") and a future object store has one place to plug in; stems with the right
Content-Type (Range requests come from Starlette's FileResponse); all stems as a streamed zip.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from soundforge.errors import StorageError
from soundforge.file_store import FileStore

MEDIA_TYPES = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg",
               ".ogg": "audio/ogg", ".opus": "audio/ogg", ".m4a": "audio/mp4",
               ".webm": "audio/webm"}  # fmt: skip
ZIP_CHUNK = 256 * 1024


class StoredFileMissingError(Exception):
    """No servable file at a stored path (outside the root, or not a regular file)."""


def stored_file(storage: FileStore, relative: str | None) -> Path:
    """The file a row's stored path names, confined under the storage root (or, on object
    storage, fetched into this host's cache: `FileStore.local_path`)."""
    if not relative:
        raise StoredFileMissingError("no file recorded")
    try:
        path = storage.local_path(relative)
    except StorageError as error:
        raise StoredFileMissingError(str(error)) from None
    if not path.is_file():
        raise StoredFileMissingError(f"{relative} is not stored")
    return path


def media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


class _Chunks:
    """A write-only, unseekable stream that hands out what was written (zipfile then writes
    data descriptors, so nothing needs to be rewound)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.written = 0

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.written += len(data)
        return len(data)

    def tell(self) -> int:
        return self.written

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def zip_stream(members: Iterable[tuple[str, Path]]) -> Iterator[bytes]:
    """A zip of `(name inside the zip, file)` pairs, produced piece by piece (stored, not
    deflated: FLAC is compressed already); memory stays at one chunk whatever the sizes."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, path in members:
            with path.open("rb") as source, archive.open(name, "w", force_zip64=True) as target:
                while chunk := source.read(ZIP_CHUNK):
                    target.write(chunk)
                    yield sink.take()
            yield sink.take()
    yield sink.take()
