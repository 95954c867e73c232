"""The sources facade the pipeline calls: `expand_source` turns a parsed source into the track
rows it stands for; `fetch_audio` brings one track's audio under the storage root, validated,
at `downloads/<track_id>.<ext>`, with nothing left behind when it fails."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import stat
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from soundforge.errors import ImportRootError, ProgressCallback, SourceError, StorageError
from soundforge.file_store import FileStore
from soundforge.redact import mask_url
from soundforge.sources import spotdl_resolver, ytdlp_resolver
from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import ImportTooLargeError, SourceNotFoundError
from soundforge.sources.http_download import ByteProgress, download_http
from soundforge.sources.model import (
    HttpSource,
    LocalFileSource,
    Source,
    SpotifySource,
    StoredAudio,
    TrackMetadata,
)
from soundforge.sources.parse import parse_source
from soundforge.sources.spotify import SpotifyClient, spotify_client
from soundforge.sources.validate import validate_audio_file
from soundforge.storage import download_relpath

logger = logging.getLogger(__name__)

DOWNLOAD_SHARE = 95.0  # percent of the progress bar the transfer takes; validation the rest
COPY_CHUNK_BYTES = 1 << 20


def expand_source(
    source: Source, config: SourceConfig, *, spotify: SpotifyClient | None = None
) -> list[TrackMetadata]:
    """The tracks a source stands for: one for a file, a URL or a Spotify track; one per entry
    for a Spotify album or playlist. Spotify needs credentials and the network."""
    if isinstance(source, LocalFileSource):
        _check_local_file(source.path, config)
        return [_plain_metadata(source.path.stem or source.path.name, str(source.path),
                                source_key(source))]  # fmt: skip
    if isinstance(source, HttpSource):
        config.destinations.check_url(source.url)  # a literal refused address fails at `add`
        return [_plain_metadata(_title_from_url(source.url), source.url, source_key(source))]
    client = spotify or spotify_client(config)
    tracks = client.expand(source)
    if not tracks:
        raise SourceNotFoundError(f"Spotify {source.kind} {source.spotify_id} has no tracks")
    return tracks


def fetch_audio(
    metadata: TrackMetadata,
    storage: FileStore,
    track_id: uuid.UUID | str,
    config: SourceConfig,
    progress: ProgressCallback | None = None,
    *,
    spotify: SpotifyClient | None = None,
) -> StoredAudio:
    """Fetch, validate and store one track's audio; the caller records `relative_path` and
    `file_size` on the track row. On any error nothing is left under the storage root."""
    source = parse_source(metadata.origin)
    byte_progress = _percent_progress(progress)
    log_extra = {"track_id": str(track_id)}
    with _staging(storage, track_id) as staging:
        if isinstance(source, LocalFileSource):
            resolved = _check_local_file(source.path, config)
            produced = _link_or_copy(resolved, staging, config.max_import_bytes)
            label = str(source.path)
        elif isinstance(source, HttpSource):
            download_http(source.url, staging, config, byte_progress)
            produced, label = staging, mask_url(source.url)
        else:
            produced = _resolve_spotify(
                source, metadata, staging,
                config=config, byte_progress=byte_progress, spotify=spotify,
            )  # fmt: skip
            label = f"{metadata.artist} - {metadata.title} ({source.uri})"
        validated = validate_audio_file(produced, label, config.audio_limits)
        relative = download_relpath(track_id, validated.ext)
        if produced.parent != staging.parent:  # spotdl wrote into its staging folder
            moved = staging.with_name(f"{staging.name}.{validated.ext}")  # still cleaned up
            os.replace(produced, moved)
            produced = moved
        digest = file_sha256(produced)
        storage.commit(produced, relative)
    logger.info("stored %s as %s (%d bytes, %.1f s)", label, relative,
                validated.file_size, validated.duration_s, extra=log_extra)  # fmt: skip
    if progress is not None:
        progress(100.0)
    return StoredAudio(
        relative_path=relative,
        file_size=validated.file_size,
        ext=validated.ext,
        duration_s=validated.duration_s,
        sha256=digest,
    )


def _resolve_spotify(
    source: SpotifySource,
    metadata: TrackMetadata,
    staging: Path,
    *,
    config: SourceConfig,
    byte_progress: ByteProgress,
    spotify: SpotifyClient | None,
) -> Path:
    if source.kind != "track":
        raise SourceError(
            f"{source.uri}: a Spotify {source.kind} holds many tracks; expand it first"
        )
    if metadata.artist is None or metadata.spotify_id != source.spotify_id:
        metadata = (spotify or spotify_client(config)).track(source.spotify_id)
    if config.resolver == "spotdl":
        staging.mkdir()
        return spotdl_resolver.download(metadata, staging, config)
    return ytdlp_resolver.download(metadata, staging, config, byte_progress)


@contextmanager
def _staging(storage: FileStore, track_id: uuid.UUID | str) -> Iterator[Path]:
    """A hidden temporary path in `downloads/`; on exit everything named after it (partial
    downloads, yt-dlp's `.part` files, spotdl's folder) is removed."""
    try:
        staging = storage.temp_path_for(download_relpath(track_id, "part"))
    except OSError as error:
        raise StorageError(f"cannot create {error.filename or 'a folder'} to store the "
                           f"download in ({error.strerror})") from None  # fmt: skip
    try:
        yield staging
    finally:
        for leftover in staging.parent.glob(staging.name + "*"):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def _link_or_copy(source: Path, destination: Path, max_bytes: int) -> Path:
    """Hard-link when on the same filesystem, else copy; the source is never moved. Neither
    follows a symlink, nor reads anything but a regular file: a symlink, FIFO or device
    swapped in since the import-root check is refused, not read (a FIFO would block). A file
    larger than `max_bytes` is refused, and a copy stops at that size (a file that grows while
    it is copied cannot fill the storage folder)."""
    try:
        os.link(source, destination, follow_symlinks=False)
    except OSError:
        _copy_without_following(source, destination, max_bytes)
    linked = os.lstat(destination)
    if not stat.S_ISREG(linked.st_mode):
        destination.unlink()
        raise _became_symlink(source) if stat.S_ISLNK(linked.st_mode) else _not_regular(source)
    if linked.st_size > max_bytes:
        destination.unlink()
        raise _too_large(source, linked.st_size, max_bytes)
    return destination


def _copy_without_following(source: Path, destination: Path, max_bytes: int) -> None:
    """Copy `source` (refusing a symlink, anything but a regular file, or more than `max_bytes`)
    to the new file `destination`; a failure names the side that failed: reading the source,
    or writing into the storage folder. Opened without blocking, so a FIFO is refused instead
    of waited on."""
    try:
        descriptor = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise _became_symlink(source) from None
        raise SourceError(f"{source}: cannot read ({error.strerror})") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(source)
        raise _too_large(source, info.st_size, max_bytes)
    os.set_blocking(descriptor, True)
    with open(descriptor, "rb") as reader:
        try:
            with open(destination, "xb") as writer:
                copied = _copy_at_most(reader, writer, max_bytes)
        except OSError as error:
            raise StorageError(f"cannot copy {source.name} into the storage folder "
                               f"{destination.parent} ({error.strerror})") from None  # fmt: skip
    if copied > max_bytes:
        destination.unlink()
        raise _too_large(source, copied, max_bytes, grew=True)


def _copy_at_most(reader: BinaryIO, writer: BinaryIO, max_bytes: int) -> int:
    """Copy until the end of `reader` or one byte past `max_bytes`; the bytes copied."""
    copied = 0
    while copied <= max_bytes:
        chunk = reader.read(min(COPY_CHUNK_BYTES, max_bytes + 1 - copied))
        if not chunk:
            break
        writer.write(chunk)
        copied += len(chunk)
    return copied


def _too_large(source: Path, size: int, max_bytes: int, grew: bool = False) -> ImportTooLargeError:
    told = "grew past" if grew else f"is {size} bytes, over"
    return ImportTooLargeError(f"{source}: {told} the import limit of {max_bytes} bytes "
                               "(SOUNDFORGE_MAX_IMPORT_BYTES)")  # fmt: skip


def _became_symlink(source: Path) -> ImportRootError:
    return ImportRootError(f"{source}: became a symbolic link while it was imported")


def _not_regular(source: Path) -> SourceError:
    return SourceError(f"{source}: not a regular file")


def _check_local_file(path: Path, config: SourceConfig) -> Path:
    """The file a local source names, symlinks and `..` resolved, once it is known to lie
    under an import root and to be a readable regular file."""
    path = config.import_roots.check(path)
    if not path.exists():
        raise SourceNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise _not_regular(path)
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: not readable (permission denied)")
    size = path.stat().st_size
    if size > config.max_import_bytes:
        raise _too_large(path, size, config.max_import_bytes)
    return path


def source_key(source: LocalFileSource | HttpSource) -> str:
    """What makes two adds the same track: the URL, or a local file's resolved path, size and
    modification time (a file changed in place is a new track). Stored as a digest: the key
    finds a track, it never shows a path or a URL's token."""
    if isinstance(source, LocalFileSource):
        info = source.path.stat()
        identity = f"file\0{source.path.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
    else:
        identity = f"url\0{source.url}"
    return "sha256:" + hashlib.sha256(identity.encode()).hexdigest()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _plain_metadata(title: str, origin: str, key: str) -> TrackMetadata:
    return TrackMetadata(
        title=title,
        artist=None,
        album=None,
        album_art_url=None,
        duration=None,
        spotify_id=None,
        spotify_url=None,
        origin=origin,
        source_key=key,
    )


def _title_from_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    name = PurePosixPath(urllib.parse.unquote(parts.path)).name
    return PurePosixPath(name).stem or name or parts.hostname or url


def _percent_progress(progress: ProgressCallback | None) -> ByteProgress:
    """Bytes (done, total) -> a never-decreasing percentage of `DOWNLOAD_SHARE`."""
    reported = 0.0

    def on_bytes(done: int, total: int | None) -> None:
        nonlocal reported
        if progress is None or not total:
            return
        percent = min(DOWNLOAD_SHARE, DOWNLOAD_SHARE * done / total)
        if percent > reported:
            reported = percent
            progress(percent)

    return on_bytes
