"""The kinds of stream yt-dlp can find, against real loopback servers: an HLS stream, plain or
AES-128 encrypted (segments cut and encrypted by the real ffmpeg), is fetched by yt-dlp's own
downloader through the policy proxy and stored as the MPEG-TS it is, which the decoder reads;
a stream only an external program could fetch (RTMP for rtmpdump, SAMPLE-AES HLS that yt-dlp
hands to ffmpeg) fails permanently before that program runs or anything internal is reached.

An `ffmpeg` on PATH that only records that it ran stands guard where no decoding is needed:
yt-dlp must never start it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from soundforge.audio_io import decode, sniff_format
from soundforge.errors import PermanentError
from soundforge.source_policy import DestinationPolicy
from soundforge.sources import SourceConfig, StreamNotFetchableError, validate_audio_file
from soundforge.sources.ytdlp_resolver import download_entry
from tests.support.loopback_http import LoopbackServer

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def config(**overrides: object) -> SourceConfig:
    """Sources that may reach the 'public' 127.0.0.1 only."""
    values: dict[str, object] = {"connect_timeout_s": 2.0, "read_timeout_s": 5.0,
                                 "resume_attempts": 1,
                                 "destinations": DestinationPolicy.allowing("127.0.0.1/32")}
    return SourceConfig(**(values | overrides))  # type: ignore[arg-type]


def hls_stream(server: LoopbackServer, folder: Path, seconds: float, encrypted: bool) -> str:
    """A 440 Hz tone cut into 1-second AAC/MPEG-TS segments by ffmpeg (AES-128 with a key the
    server hands out, when `encrypted`); every file is served under /hls/. Returns the
    playlist's URL."""
    folder.mkdir()
    key_options: list[str] = []
    if encrypted:
        (folder / "stream.key").write_bytes(bytes(range(16)))
        (folder / "key-info").write_text(
            f"{server.url('/hls/stream.key')}\n{folder / 'stream.key'}\n")
        key_options = ["-hls_key_info_file", str(folder / "key-info")]
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi",
         "-i", f"sine=frequency=440:duration={seconds}:sample_rate=44100", "-c:a", "aac",
         "-f", "hls", "-hls_time", "1", "-hls_list_size", "0", *key_options,
         "-hls_segment_filename", str(folder / "seg%d.ts"), str(folder / "list.m3u8")],
        check=True,
    )  # fmt: skip
    for path in folder.iterdir():
        if path.suffix in (".ts", ".key", ".m3u8"):
            kind = {".ts": "video/mp2t", ".key": "application/octet-stream",
                    ".m3u8": "application/vnd.apple.mpegurl"}[path.suffix]  # fmt: skip
            server.serve_bytes(f"/hls/{path.name}", path.read_bytes(), kind)
    return server.url("/hls/list.m3u8")


@pytest.fixture
def ffmpeg_sentinel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An `ffmpeg` (and `rtmpdump`) first on PATH that only notes it was started."""
    folder = tmp_path / "sentinel-bin"
    folder.mkdir()
    marker = tmp_path / "external-program-ran"
    for name in ("ffmpeg", "ffprobe", "rtmpdump"):
        script = folder / name
        script.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {marker}\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return marker


@needs_ffmpeg
@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "aes-128"])
def test_an_hls_stream_is_fetched_in_process_and_decoded(
    public: LoopbackServer, tmp_path: Path, encrypted: bool
) -> None:
    playlist = hls_stream(public, tmp_path / "served", 4.0, encrypted)
    entry = {"_type": "url", "url": playlist, "title": "hls tone", "ie_key": "Generic"}
    path = download_entry(entry, tmp_path / "staging", config())
    assert sniff_format(path) == "mpegts"  # as yt-dlp fetched it: no ffmpeg fix-up ran
    validated = validate_audio_file(path, "hls tone")  # what the download job does next
    assert validated.ext == "ts" and abs(validated.duration_s - 4.0) < 0.2
    audio, rate = decode(path, sample_rate=22050)
    spectrum = np.abs(np.fft.rfft(audio[rate : 3 * rate]))
    assert abs(np.argmax(spectrum) * rate / (2 * rate) - 440) < 2  # the tone, decrypted
    fetched = {request.path for request in public.requests}
    assert {"/hls/list.m3u8", "/hls/seg0.ts", "/hls/seg3.ts"} <= fetched
    assert ("/hls/stream.key" in fetched) == encrypted


def _sample_aes_playlist(public: LoopbackServer, internal_port: int) -> str:
    segment = f"http://127.0.0.2:{internal_port}/secret"
    playlist = ("#EXTM3U\n#EXT-X-TARGETDURATION:10\n"
                f'#EXT-X-KEY:METHOD=SAMPLE-AES,URI="{public.url("/key")}"\n'
                f"#EXTINF:10,\n{segment}\n#EXT-X-ENDLIST\n")  # fmt: skip
    return public.serve_bytes("/sample-aes.m3u8", playlist.encode(),
                              "application/vnd.apple.mpegurl")  # fmt: skip


@pytest.mark.parametrize("kind", ["rtmp", "rtmp-by-generic", "sample-aes-hls"])
def test_a_stream_only_an_external_program_could_fetch_is_refused_before_it_runs(
    public: LoopbackServer, internal: LoopbackServer, tmp_path: Path, ffmpeg_sentinel: Path,
    kind: str,
) -> None:  # fmt: skip
    port = int(internal.base_url.rsplit(":", 1)[1])
    entry: dict[str, object] = {"_type": "url", "title": "odd stream"}
    if kind == "rtmp":  # yt-dlp's RTMP extractor lists it for rtmpdump
        entry["url"] = f"rtmp://127.0.0.2:{port}/secret"
    elif kind == "rtmp-by-generic":  # the generic extractor has no client for the scheme
        entry |= {"url": f"rtmp://127.0.0.2:{port}/secret", "ie_key": "Generic"}
    else:  # an encryption yt-dlp's own HLS downloader cannot read: it would call ffmpeg
        entry |= {"url": _sample_aes_playlist(public, port), "ie_key": "Generic"}
    with pytest.raises(StreamNotFetchableError, match=r"odd stream: .*; refused") as refused:
        download_entry(entry, tmp_path / "staging", config())
    assert isinstance(refused.value, PermanentError)
    assert not ffmpeg_sentinel.exists(), ffmpeg_sentinel.read_text()
    assert internal.requests == []
    assert list(tmp_path.glob("staging*")) == []
