"""Source parsing: a table of accepted inputs and their typed value, and of refused inputs and
what the error says."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundforge.errors import PermanentError
from soundforge.sources import (
    HttpSource,
    LocalFileSource,
    Source,
    SpotifySource,
    UnsupportedSourceError,
    parse_source,
)

TRACK_ID = "4cOdK2wGLETKBW3PvgPWqT"
ALBUM_ID = "4yP0hdKOZPNshxUOjY0cZj"
PLAYLIST_ID = "37i9dQZF1DXcBWIGoYBM5M"

GOOD: list[tuple[str, Source]] = [
    ("/music/song.flac", LocalFileSource(Path("/music/song.flac"))),
    ("  /music/with space.mp3  ", LocalFileSource(Path("/music/with space.mp3"))),
    ("file:///music/a%20b.wav", LocalFileSource(Path("/music/a b.wav"))),
    ("file://localhost/music/x.ogg", LocalFileSource(Path("/music/x.ogg"))),
    ("https://example.com/a.mp3", HttpSource("https://example.com/a.mp3")),
    ("http://127.0.0.1:8080/x?y=1", HttpSource("http://127.0.0.1:8080/x?y=1")),
    (f"https://open.spotify.com/track/{TRACK_ID}", SpotifySource("track", TRACK_ID)),
    (f"https://open.spotify.com/track/{TRACK_ID}?si=abc123", SpotifySource("track", TRACK_ID)),
    (f"https://open.spotify.com/intl-de/track/{TRACK_ID}", SpotifySource("track", TRACK_ID)),
    (f"https://open.spotify.com/intl-pt_BR/album/{ALBUM_ID}", SpotifySource("album", ALBUM_ID)),
    (f"open.spotify.com/album/{ALBUM_ID}?si=x&nd=1", SpotifySource("album", ALBUM_ID)),
    (f"https://open.spotify.com/playlist/{PLAYLIST_ID}", SpotifySource("playlist", PLAYLIST_ID)),
    (f"https://open.spotify.com/embed/track/{TRACK_ID}", SpotifySource("track", TRACK_ID)),
    (f"spotify:track:{TRACK_ID}", SpotifySource("track", TRACK_ID)),
    (f"spotify:album:{ALBUM_ID}", SpotifySource("album", ALBUM_ID)),
    (f"spotify:playlist:{PLAYLIST_ID}", SpotifySource("playlist", PLAYLIST_ID)),
    (f"spotify:user:someone:playlist:{PLAYLIST_ID}", SpotifySource("playlist", PLAYLIST_ID)),
    (TRACK_ID, SpotifySource("track", TRACK_ID)),
]

BAD: list[tuple[str, str]] = [
    ("", "empty source"),
    ("   ", "empty source"),
    ("hello", "not a recognised source"),
    ("ftp://example.com/a.mp3", "unsupported URL scheme 'ftp'"),
    ("https://", "URL without a host"),
    (f"https://open.spotify.com/artist/{TRACK_ID}", "Spotify artist links are not supported"),
    (f"spotify:show:{TRACK_ID}", "Spotify show links are not supported"),
    ("https://open.spotify.com/track/tooShort", "invalid Spotify id 'tooShort'"),
    ("spotify:track:abc:def", "malformed Spotify URI"),
    ("spotify:track:" + "x" * 23, "invalid Spotify id"),
    ("https://spotify.link/AbCdEf", "Spotify short links are not supported"),
    ("file://otherhost/music/a.mp3", "only local files"),
    (TRACK_ID + "X", "not a recognised source"),
]


@pytest.mark.parametrize(("text", "expected"), GOOD, ids=[g[0].strip() or "blank" for g in GOOD])
def test_parse_source_accepts_and_types(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


@pytest.mark.parametrize(("text", "message"), BAD, ids=[b[0] or "empty" for b in BAD])
def test_parse_source_refuses_with_a_clear_permanent_error(text: str, message: str) -> None:
    with pytest.raises(UnsupportedSourceError, match=message) as caught:
        parse_source(text)
    assert isinstance(caught.value, PermanentError)


def test_parse_error_lists_what_is_accepted() -> None:
    with pytest.raises(UnsupportedSourceError) as caught:
        parse_source("hello")
    for accepted in ("local file path", "http(s)://", "open.spotify.com", "spotify:track:ID"):
        assert accepted in str(caught.value)


def test_relative_path_becomes_absolute_against_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_source("song.mp3") == LocalFileSource(tmp_path / "song.mp3")
    assert parse_source("./dir/song") == LocalFileSource(tmp_path / "dir" / "song")


def test_spotify_source_gives_its_uri_and_link() -> None:
    source = SpotifySource("album", ALBUM_ID)
    assert source.uri == f"spotify:album:{ALBUM_ID}"
    assert parse_source(source.url) == source
    assert parse_source(source.uri) == source
