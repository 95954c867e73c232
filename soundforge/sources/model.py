"""The values the sources engine passes around: a parsed source, a track's metadata, a stored
download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

SpotifyKind = Literal["track", "album", "playlist"]


@dataclass(frozen=True)
class LocalFileSource:
    """A file on this machine (absolute path)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class HttpSource:
    """An http(s) URL expected to serve an audio file."""

    url: str

    def __str__(self) -> str:
        return self.url


@dataclass(frozen=True)
class SpotifySource:
    """A Spotify track, album or playlist, by its base-62 id."""

    kind: SpotifyKind
    spotify_id: str

    @property
    def uri(self) -> str:
        return f"spotify:{self.kind}:{self.spotify_id}"

    @property
    def url(self) -> str:
        return f"https://open.spotify.com/{self.kind}/{self.spotify_id}"

    def __str__(self) -> str:
        return self.uri


Source = LocalFileSource | HttpSource | SpotifySource


@dataclass(frozen=True)
class TrackMetadata:
    """What a track row records about one track; `origin` is where its audio comes from (a
    local path, an http(s) URL, or the Spotify track URI, resolved to audio by a resolver)."""

    title: str
    artist: str | None
    album: str | None
    album_art_url: str | None
    duration: int | None
    """Whole seconds, when known before download."""
    spotify_id: str | None
    spotify_url: str | None
    origin: str
    source_key: str | None = None
    """Identifies a URL or local file source (same key: the same track); None for Spotify."""


@dataclass(frozen=True)
class StoredAudio:
    """A validated audio file under the storage root; the caller records `relative_path` as
    the track's `output_path` and `file_size`."""

    relative_path: str
    file_size: int
    ext: str
    duration_s: float
    sha256: str | None = None
    """Hex SHA-256 of the stored file."""
