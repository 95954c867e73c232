"""`expand_source` + `fetch_audio` end to end: a local file, and a Spotify link resolved through
the loopback Web API stand-in and the real yt-dlp search -> pick -> download path (its generic
extractor reads a loopback podcast feed as the search results); bad cases leave no file."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from soundforge.errors import FfmpegMissingError, SourceError
from soundforge.source_policy import ImportRoots
from soundforge.sources import (
    NoMatchError,
    NotAudioError,
    ResolverUnavailableError,
    SourceConfig,
    SourceNotFoundError,
    TrackMetadata,
    expand_source,
    fetch_audio,
    parse_source,
)
from soundforge.sources.ytdlp_resolver import search_target
from soundforge.storage import Storage
from tests.support.audio import tone_bytes
from tests.support.fake_spotify import FakeSpotify
from tests.support.loopback_http import LoopbackServer, podcast_feed

TRACK_ID = uuid.UUID("00000000-0000-4000-8000-0000000000aa")


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "store")


def stored_files(storage: Storage) -> list[str]:
    return sorted(p.relative_to(storage.root).as_posix() for p in storage.walk_files())


# -- local files ------------------------------------------------------------------------------


def local_config(import_root: Path) -> SourceConfig:
    """Local sources allowed from the test's own folder only."""
    return SourceConfig(import_roots=ImportRoots((import_root,)))


def test_local_file_is_stored_as_a_copy_and_the_source_is_kept(
    tmp_path: Path, storage: Storage
) -> None:
    source_file = tmp_path / "Some Artist - Song.flac"
    source_file.write_bytes(tone_bytes(2.0, "flac"))
    config = local_config(tmp_path)
    (metadata,) = expand_source(parse_source(str(source_file)), config)
    assert metadata.title == "Some Artist - Song"
    assert metadata.origin == str(source_file)
    stored = fetch_audio(metadata, storage, TRACK_ID, config)
    assert stored.relative_path == f"downloads/{TRACK_ID}.flac"
    assert stored.duration_s == pytest.approx(2.0, abs=0.05)
    assert source_file.read_bytes() == storage.resolve(stored.relative_path).read_bytes()
    assert stored.file_size == source_file.stat().st_size
    assert stored_files(storage) == [stored.relative_path]


def test_local_file_on_the_same_filesystem_is_hard_linked(tmp_path: Path, storage: Storage) -> None:
    source_file = tmp_path / "song.wav"
    source_file.write_bytes(tone_bytes(1.0, "wav"))
    metadata = expand_source(parse_source(f"file://{source_file}"), local_config(tmp_path))[0]
    stored = fetch_audio(metadata, storage, TRACK_ID, local_config(tmp_path))
    assert os.path.samefile(source_file, storage.resolve(stored.relative_path))


def test_missing_local_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no such file"):
        expand_source(parse_source(str(tmp_path / "nope.mp3")), local_config(tmp_path))


def test_local_non_audio_is_refused_and_the_source_is_untouched(
    tmp_path: Path, storage: Storage
) -> None:
    source_file = tmp_path / "notes.mp3"
    source_file.write_bytes(b"just some text, not audio\n" * 100)
    source_file.chmod(stat.S_IRUSR)
    (metadata,) = expand_source(parse_source(str(source_file)), local_config(tmp_path))
    with pytest.raises(NotAudioError, match=f"{source_file}: no known audio signature"):
        fetch_audio(metadata, storage, TRACK_ID, local_config(tmp_path))
    assert source_file.exists() and source_file.stat().st_size == 2600
    assert stored_files(storage) == []


# -- Spotify through yt-dlp -------------------------------------------------------------------


@pytest.fixture
def media() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def spotify() -> Iterator[FakeSpotify]:
    with FakeSpotify() as server:
        yield server


def publish_candidates(media: LoopbackServer, candidates: list[tuple[str, str, float]]) -> str:
    """Serve each candidate (title, ext, seconds) as audio and list them in a feed; returns a
    `resolver_search_template` that makes yt-dlp 'search' that feed."""
    entries = []
    for index, (title, ext, seconds) in enumerate(candidates):
        url = media.serve_bytes(f"/media/{index}.{ext}", tone_bytes(seconds, ext), f"audio/{ext}")
        entries.append((title, url, seconds))
    feed = podcast_feed(entries)
    media.add("/search.rss", lambda request: _send_feed(request, feed))
    return media.url("/search.rss") + "?q={query}"


def _send_feed(request: Any, feed: bytes) -> None:
    request.send_response(200)
    request.send_header("Content-Type", "application/rss+xml")
    request.send_header("Content-Length", str(len(feed)))
    request.end_headers()
    request.wfile.write(feed)


def test_spotify_track_is_resolved_by_duration_downloaded_and_stored(
    media: LoopbackServer, spotify: FakeSpotify, storage: Storage
) -> None:
    track = spotify.add_track("Tone Poem", ["The Sines", "Co"], duration_ms=3_200, album="Waves")
    template = publish_candidates(media, [
        ("The Sines - Tone Poem (extended)", "wav", 9.0),
        ("The Sines - Tone Poem", "flac", 3.0),
        ("The Sines - Tone Poem (intro)", "mp3", 1.0),
    ])  # fmt: skip
    config = spotify.source_config(resolver_search_template=template)
    (metadata,) = expand_source(parse_source(f"spotify:track:{track['id']}"), config)
    assert (metadata.artist, metadata.album, metadata.duration) == ("The Sines, Co", "Waves", 3)

    progress: list[float] = []
    stored = fetch_audio(metadata, storage, TRACK_ID, config, progress.append)

    assert stored.relative_path == f"downloads/{TRACK_ID}.flac"
    assert stored.duration_s == pytest.approx(3.0, abs=0.05)
    assert stored_files(storage) == [stored.relative_path]
    (search,) = media.requests_for("/search.rss")
    assert "q=The%20Sines%2C%20Co%20-%20Tone%20Poem" in search.path
    assert media.requests_for("/media/1.flac"), "the closest duration was downloaded"
    assert not media.requests_for("/media/0.wav") and not media.requests_for("/media/2.mp3")
    assert progress == sorted(progress) and progress[-1] == 100.0


def test_spotify_track_without_a_close_enough_match_fails_and_leaves_nothing(
    media: LoopbackServer, spotify: FakeSpotify, storage: Storage
) -> None:
    track = spotify.add_track("Tone Poem", ["The Sines"], duration_ms=20_000)
    template = publish_candidates(media, [("Tone Poem (edit)", "flac", 3.0),
                                          ("Tone Poem (long)", "wav", 40.0)])  # fmt: skip
    config = spotify.source_config(resolver_search_template=template, duration_tolerance_s=5.0)
    (metadata,) = expand_source(parse_source(track["external_urls"]["spotify"]), config)
    with pytest.raises(NoMatchError, match=r"lasts 20 s within 5 s.*Tone Poem \(edit\)"):
        fetch_audio(metadata, storage, TRACK_ID, config)
    assert stored_files(storage) == []


def test_spotify_candidate_that_is_not_audio_is_refused_and_removed(
    media: LoopbackServer, spotify: FakeSpotify, storage: Storage
) -> None:
    track = spotify.add_track("Tone Poem", ["The Sines"], duration_ms=3_000)
    page = b"<html><body>" + b"<p>video unavailable</p>" * 100 + b"</body></html>"
    url = media.serve_bytes("/media/page.mp3", page, "audio/mpeg")
    feed = podcast_feed([("The Sines - Tone Poem", url, 3.0)])
    media.add("/search.rss", lambda request: _send_feed(request, feed))
    config = spotify.source_config(resolver_search_template=media.url("/search.rss?q={query}"))
    (metadata,) = expand_source(parse_source(f"spotify:track:{track['id']}"), config)
    with pytest.raises(NotAudioError, match=r"Tone Poem.*HTML page, not audio"):
        fetch_audio(metadata, storage, TRACK_ID, config)
    assert stored_files(storage) == []


def test_search_template_quotes_the_query_only_for_urls() -> None:
    assert search_target(SourceConfig(), "A & B - C") == "ytsearch5:A & B - C"
    url_config = SourceConfig(resolver_search_template="http://h/s?q={query}")
    assert search_target(url_config, "A & B") == "http://h/s?q=A%20%26%20B"


def test_spotify_album_cannot_be_fetched_without_expanding(storage: Storage) -> None:
    metadata = TrackMetadata("x", "y", None, None, None, None, None,
                             origin="spotify:album:4yP0hdKOZPNshxUOjY0cZj")  # fmt: skip
    with pytest.raises(SourceError, match="expand it first"):
        fetch_audio(metadata, storage, TRACK_ID, SourceConfig())
    assert stored_files(storage) == []


# -- spotdl -----------------------------------------------------------------------------------


def _spotdl_metadata() -> TrackMetadata:
    return TrackMetadata("Song", "Artist", None, None, 2, "4cOdK2wGLETKBW3PvgPWqT",
                         "https://open.spotify.com/track/4cOdK2wGLETKBW3PvgPWqT",
                         "spotify:track:4cOdK2wGLETKBW3PvgPWqT")  # fmt: skip


def _bin_dir(tmp_path: Path, scripts: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        script = bin_dir / name
        script.write_text(body)
        script.chmod(0o755)
    return bin_dir


def test_spotdl_resolver_not_installed_says_so(
    tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, {})))
    with pytest.raises(ResolverUnavailableError, match="spotdl is not installed"):
        fetch_audio(_spotdl_metadata(), storage, TRACK_ID, SourceConfig(resolver="spotdl"))
    assert stored_files(storage) == []


def test_spotdl_resolver_without_ffmpeg_says_ffmpeg_is_needed(
    tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(_bin_dir(tmp_path, {"spotdl": "#!/bin/sh\nexit 0\n"})))
    with pytest.raises(FfmpegMissingError, match="spotdl resolver needs ffmpeg"):
        fetch_audio(_spotdl_metadata(), storage, TRACK_ID, SourceConfig(resolver="spotdl"))
    assert stored_files(storage) == []


def test_spotdl_resolver_output_is_validated_and_stored(
    tmp_path: Path, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in spotdl executable: writes a WAV where `--output` says, as spotdl would.
    wav = tmp_path / "made.wav"
    wav.write_bytes(tone_bytes(2.0, "wav"))
    spotdl = (
        "#!/bin/sh\n"
        '[ "$1" = download ] || exit 2\n'
        'out="$4"; out="${out%%\\{track-id\\}.\\{output-ext\\}}"\n'
        f'cp "{wav}" "$out/4cOdK2wGLETKBW3PvgPWqT.wav"\n'
    )
    bin_dir = _bin_dir(tmp_path, {"spotdl": spotdl, "ffmpeg": "#!/bin/sh\nexit 1\n"})
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    stored = fetch_audio(_spotdl_metadata(), storage, TRACK_ID, SourceConfig(resolver="spotdl"))
    assert stored.relative_path == f"downloads/{TRACK_ID}.wav"
    assert stored_files(storage) == [stored.relative_path]
