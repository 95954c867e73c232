"""Source parsing: turn what a user typed (a path, a URL, a Spotify link, URI or id) into one
typed `Source`, or a `UnsupportedSourceError` that lists what is accepted. Pure: it touches
neither the network nor the file's contents."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

from soundforge.sources.errors import UnsupportedSourceError
from soundforge.sources.model import (
    HttpSource,
    LocalFileSource,
    Source,
    SpotifyKind,
    SpotifySource,
)

ACCEPTED = (
    "accepted sources: a local file path or file:// URL, an http(s):// URL of an audio file, "
    "a Spotify track/album/playlist link (https://open.spotify.com/track/...), "
    "a Spotify URI (spotify:track:ID) or a bare 22-character Spotify track id"
)

MAX_SOURCE_CHARS = 8192  # longer than any path or real URL; never echoed back whole
SPOTIFY_KINDS: tuple[SpotifyKind, ...] = ("track", "album", "playlist")
SPOTIFY_ID = re.compile(r"[0-9A-Za-z]{22}")
SPOTIFY_HOSTS = frozenset({"open.spotify.com", "play.spotify.com"})
AUDIO_SUFFIXES = frozenset(
    {".mp3", ".wav", ".flac", ".ogg", ".oga", ".opus", ".m4a", ".mp4", ".aac", ".webm", ".mka"}
)
# open.spotify.com/intl-de/track/ID, open.spotify.com/embed/album/ID, .../user/x/playlist/ID
SPOTIFY_PATH = re.compile(
    r"^/(?:intl-[A-Za-z]{2}(?:[-_][A-Za-z]{2})?/)?(?:embed/)?(?:user/[^/]+/)?"
    r"(?P<kind>[a-z]+)/(?P<id>[^/]+)/?$"
)


def parse_source(text: str) -> Source:
    """Parse a source string. Local paths are made absolute (against the caller's working
    folder, `~` expanded), so parse at the edge where the user's folder is meaningful."""
    stripped = text.strip()
    if not stripped:
        raise UnsupportedSourceError(f"empty source; {ACCEPTED}")
    if len(stripped) > MAX_SOURCE_CHARS:
        raise UnsupportedSourceError(
            f"source is {len(stripped)} characters long; at most {MAX_SOURCE_CHARS} are accepted"
        )
    lowered = stripped.lower()
    if lowered.startswith("spotify:"):
        return _parse_spotify_uri(stripped)
    if SPOTIFY_ID.fullmatch(stripped):
        return SpotifySource("track", stripped)
    if lowered.startswith(("open.spotify.com/", "play.spotify.com/")):
        return _parse_spotify_url("https://" + stripped, stripped)
    if lowered.startswith("file:"):
        return _parse_file_url(stripped)
    if lowered.startswith(("http://", "https://")):
        return _parse_http(stripped)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", stripped):
        scheme = stripped.split(":", 1)[0]
        raise UnsupportedSourceError(
            f"unsupported URL scheme {scheme!r} in {stripped!r}; {ACCEPTED}"
        )
    if _looks_like_path(stripped):
        return LocalFileSource(Path(stripped).expanduser().absolute())
    raise UnsupportedSourceError(f"not a recognised source: {stripped!r}; {ACCEPTED}")


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", "./", "../", "~"))
        or "/" in text
        or Path(text).suffix.lower() in AUDIO_SUFFIXES
    )


def _spotify_source(kind: str, spotify_id: str, original: str) -> SpotifySource:
    if kind not in SPOTIFY_KINDS:
        raise UnsupportedSourceError(
            f"Spotify {kind} links are not supported ({original!r}); give a track, album or "
            "playlist"
        )
    if not SPOTIFY_ID.fullmatch(spotify_id):
        raise UnsupportedSourceError(
            f"invalid Spotify id {spotify_id!r} in {original!r}: expected 22 letters and digits"
        )
    return SpotifySource(kind, spotify_id)


def _parse_spotify_uri(text: str) -> SpotifySource:
    parts = text.split(":")
    # spotify:track:ID, or the legacy spotify:user:NAME:playlist:ID
    if len(parts) == 5 and parts[1] == "user" and parts[3] == "playlist":
        return _spotify_source("playlist", parts[4], text)
    if len(parts) != 3:
        raise UnsupportedSourceError(f"malformed Spotify URI {text!r}; {ACCEPTED}")
    return _spotify_source(parts[1].lower(), parts[2], text)


def _parse_spotify_url(url: str, original: str) -> SpotifySource:
    path = urllib.parse.urlsplit(url).path
    match = SPOTIFY_PATH.match(path)
    if match is None:
        raise UnsupportedSourceError(f"not a Spotify track/album/playlist link: {original!r}")
    return _spotify_source(match["kind"], match["id"], original)


def _parse_http(text: str) -> Source:
    parts = urllib.parse.urlsplit(text)
    if not parts.hostname:
        raise UnsupportedSourceError(f"URL without a host: {text!r}; {ACCEPTED}")
    host = parts.hostname.lower()
    if host in SPOTIFY_HOSTS:
        return _parse_spotify_url(text, text)
    if host.endswith("spotify.link") or host.endswith("spotify.app.link"):
        raise UnsupportedSourceError(
            f"Spotify short links are not supported ({text!r}): open it in a browser and give "
            "the open.spotify.com link"
        )
    return HttpSource(text)


def _parse_file_url(text: str) -> LocalFileSource:
    parts = urllib.parse.urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        raise UnsupportedSourceError(
            f"file:// URL on another host ({parts.netloc!r}) in {text!r}: only local files"
        )
    path = urllib.parse.unquote(parts.path)
    if not path.startswith("/"):
        raise UnsupportedSourceError(f"a file:// URL needs an absolute path: {text!r}")
    return LocalFileSource(Path(path))
