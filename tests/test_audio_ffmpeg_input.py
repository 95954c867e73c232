"""What ffmpeg may open when it decodes a file for SoundForge: that file only. A file name that
reads as an ffmpeg protocol (`concat:`) names the file itself, and a playlist without an audio
signature (HLS) can make ffmpeg open neither another local file nor a URL."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from soundforge import audio_io
from soundforge.errors import AudioError
from tests.support.loopback_http import LoopbackServer

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")


def _m4a(path: Path, seconds: float) -> Path:
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", "-c:a", "aac", str(path)],
                   check=True)  # fmt: skip
    return path


def test_a_file_named_like_an_ffmpeg_protocol_is_read_as_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _m4a(tmp_path / "long.m4a", 6.0)
    _m4a(tmp_path / "concat:long.m4a", 1.0)  # read as `concat:` it would be long.m4a, 6 s
    info = audio_io.probe(Path("concat:long.m4a"))
    assert info.decoder == "ffmpeg" and info.duration_s == pytest.approx(1.0, abs=0.1)


def test_an_hls_playlist_cannot_make_ffmpeg_read_another_local_file(tmp_path: Path) -> None:
    private = _m4a(tmp_path / "private.m4a", 2.0)
    playlist = tmp_path / "innocent.audio"
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n"
                        f"file:{private}\n#EXT-X-ENDLIST\n")  # fmt: skip
    with pytest.raises(AudioError, match="not an audio file we can decode"):
        audio_io.probe(playlist)


def test_an_hls_playlist_cannot_make_ffmpeg_fetch_a_url(tmp_path: Path) -> None:
    with LoopbackServer() as server:
        segment = server.serve_bytes("/secret.ts", b"\x47" * 188 * 10, "video/mp2t")
        playlist = tmp_path / "innocent.audio"
        playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n"
                            f"{segment}\n#EXT-X-ENDLIST\n")  # fmt: skip
        with pytest.raises(AudioError):
            audio_io.probe(playlist)
        assert server.requests == []
