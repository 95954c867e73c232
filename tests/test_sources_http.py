"""http(s) sources end to end against a loopback server on a real socket: download, redirects,
statuses, timeouts, resume after a dropped connection, size limit, non-audio and truncated
bodies; each bad case ends in a clear error with nothing left under the storage root."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from soundforge.errors import PermanentError, TransientError
from soundforge.sources import (
    DownloadError,
    DownloadNetworkError,
    DownloadTooLargeError,
    NotAudioError,
    SourceConfig,
    SourceNotFoundError,
    StoredAudio,
    TruncatedAudioError,
    expand_source,
    fetch_audio,
    parse_source,
)
from soundforge.sources.http_download import download_http
from soundforge.storage import Storage
from tests.support.audio import tone_bytes
from tests.support.loopback_http import LOOPBACK_POLICY, LoopbackServer

TRACK_ID = uuid.UUID("00000000-0000-4000-8000-000000000001")


@pytest.fixture(scope="module")
def flac_bytes() -> bytes:
    return tone_bytes(3.0, "flac")


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as running:
        yield running


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    return Storage(tmp_path / "store")


def config(**overrides: Any) -> SourceConfig:
    values: dict[str, Any] = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0,
                              "max_redirects": 3, "resume_attempts": 2,
                              "destinations": LOOPBACK_POLICY}  # fmt: skip
    values.update(overrides)
    return SourceConfig(**values)


def fetch_url(url: str, storage: Storage, source_config: SourceConfig | None = None,
              progress: list[float] | None = None) -> StoredAudio:  # fmt: skip
    chosen = source_config or config()
    (metadata,) = expand_source(parse_source(url), chosen)
    callback = progress.append if progress is not None else None
    return fetch_audio(metadata, storage, TRACK_ID, chosen, callback)


def stored_files(storage: Storage) -> list[str]:
    return sorted(p.relative_to(storage.root).as_posix() for p in storage.walk_files())


def test_plain_download_is_stored_under_downloads_with_progress(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/music/My%20Song.flac", flac_bytes, "audio/flac")
    progress: list[float] = []
    stored = fetch_url(url, storage, progress=progress)
    assert stored.relative_path == f"downloads/{TRACK_ID}.flac"
    assert stored.file_size == len(flac_bytes)
    assert stored.duration_s == pytest.approx(3.0, abs=0.05)
    assert storage.resolve(stored.relative_path).read_bytes() == flac_bytes
    assert stored_files(storage) == [stored.relative_path]
    assert progress == sorted(progress) and progress[-1] == 100.0


def test_url_title_comes_from_the_path() -> None:
    (metadata,) = expand_source(parse_source("http://h/a/My%20Song.flac?x=1"), config())
    assert metadata.title == "My Song"
    assert metadata.origin == "http://h/a/My%20Song.flac?x=1"
    assert metadata.spotify_id is None


def test_redirect_is_followed(server: LoopbackServer, storage: Storage, flac_bytes: bytes) -> None:
    server.serve_bytes("/real.flac", flac_bytes, "audio/flac")
    server.redirect("/hop2", "/real.flac", 301)
    url = server.redirect("/hop1", server.url("/hop2"))
    assert fetch_url(url, storage).file_size == len(flac_bytes)


def test_more_redirects_than_the_limit_fail_permanently(
    server: LoopbackServer, storage: Storage
) -> None:
    for hop in range(5):
        server.redirect(f"/r{hop}", f"/r{hop + 1}")
    with pytest.raises(DownloadError, match="more than 3 redirects"):
        fetch_url(server.url("/r0"), storage)
    assert stored_files(storage) == []


def test_404_is_a_permanent_not_found_error(server: LoopbackServer, storage: Storage) -> None:
    with pytest.raises(SourceNotFoundError, match="HTTP 404") as caught:
        fetch_url(server.url("/missing.mp3"), storage)
    assert isinstance(caught.value, PermanentError)
    assert stored_files(storage) == []


def test_server_error_is_transient(server: LoopbackServer, storage: Storage) -> None:
    url = server.status("/busy.mp3", 503, b"try later")
    with pytest.raises(DownloadNetworkError, match="HTTP 503") as caught:
        fetch_url(url, storage)
    assert isinstance(caught.value, TransientError)
    assert stored_files(storage) == []


def test_slow_server_hits_the_read_timeout_as_a_transient_error(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/slow.flac", flac_bytes, "audio/flac", stall_s=30.0, drops=0)
    with pytest.raises(DownloadNetworkError, match=r"timed out after 0\.2 s") as caught:
        fetch_url(url, storage, config(read_timeout_s=0.2, resume_attempts=1))
    assert isinstance(caught.value, TransientError)
    assert stored_files(storage) == []


def test_refused_connection_is_transient(storage: Storage) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DownloadNetworkError, match="cannot connect"):
        fetch_url(f"http://127.0.0.1:{port}/a.flac", storage)


def test_dropped_connection_is_resumed_with_range(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/drop.flac", flac_bytes, "audio/flac", drop_after=5000)
    stored = fetch_url(url, storage)
    assert storage.resolve(stored.relative_path).read_bytes() == flac_bytes
    first, second = server.requests_for("/drop.flac")
    assert "Range" not in first.headers
    assert second.headers["Range"] == "bytes=5000-"
    assert second.headers["If-Range"].startswith('"')


def test_server_ignoring_range_restarts_from_the_beginning(
    server: LoopbackServer, tmp_path: Path, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/norange.flac", flac_bytes, "audio/flac", drop_after=5000,
                             ranges=False)  # fmt: skip
    seen: list[tuple[int, int | None]] = []
    size = download_http(url, tmp_path / "out", config(), lambda d, t: seen.append((d, t)))
    assert size == len(flac_bytes)
    assert (tmp_path / "out").read_bytes() == flac_bytes
    assert seen[-1] == (len(flac_bytes), len(flac_bytes))


def test_connection_dropped_on_every_attempt_gives_up_transiently(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/flaky.flac", flac_bytes, "audio/flac", drop_after=3000, drops=10)
    with pytest.raises(DownloadNetworkError, match="gave up after 2 resume attempts"):
        fetch_url(url, storage)
    assert len(server.requests_for("/flaky.flac")) == 3
    assert stored_files(storage) == []


def test_oversize_body_is_refused_from_its_content_length(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/big.flac", flac_bytes, "audio/flac")
    with pytest.raises(DownloadTooLargeError, match="exceeds the download limit of 4096"):
        fetch_url(url, storage, config(max_download_bytes=4096))
    assert stored_files(storage) == []


def test_oversize_body_without_length_stops_at_the_limit(
    server: LoopbackServer, storage: Storage, flac_bytes: bytes
) -> None:
    url = server.serve_bytes("/big-chunked.flac", flac_bytes, "audio/flac", content_length=False)
    with pytest.raises(DownloadTooLargeError, match="exceeds the download limit of 4096"):
        fetch_url(url, storage, config(max_download_bytes=4096))
    assert stored_files(storage) == []


def test_html_page_instead_of_audio_is_refused(server: LoopbackServer, storage: Storage) -> None:
    page = b"<!DOCTYPE html><html><head><title>Login</title></head>" + b"<p>x</p>" * 500
    url = server.serve_bytes("/song.mp3", page, "text/html")
    with pytest.raises(NotAudioError, match=r"song\.mp3: an HTML page, not audio"):
        fetch_url(url, storage)
    assert stored_files(storage) == []


def test_truncated_audio_file_is_rejected_and_removed(
    server: LoopbackServer, storage: Storage
) -> None:
    wav = tone_bytes(2.0, "wav")
    url = server.serve_bytes("/cut.wav", wav[: len(wav) // 2], "audio/wav")
    with pytest.raises(TruncatedAudioError, match=r"cut\.wav: truncated WAV"):
        fetch_url(url, storage)
    assert stored_files(storage) == []
