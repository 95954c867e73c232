"""Validation of downloaded/imported audio: size floor, magic bytes, a full decode; a failing
file is removed and the error names what was wrong."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from soundforge.errors import AudioError, FfmpegMissingError
from soundforge.sources import NotAudioError, TruncatedAudioError, validate_audio_file
from soundforge.sources.validate import sniff_extension
from tests.support.audio import tone_bytes


@pytest.mark.parametrize(
    ("head", "ext"),
    [
        (b"ID3\x04\x00\x00\x00\x00\x00\x00", "mp3"),
        (b"\xff\xfb\x90\x64\x00", "mp3"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "wav"),
        (b"fLaC\x00\x00\x00\x22", "flac"),
        (b"OggS\x00\x02" + b"\x00" * 22 + b"\x01vorbis", "ogg"),
        (b"OggS\x00\x02" + b"\x00" * 22 + b"OpusHead", "opus"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00", "m4a"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", "webm"),
        (b"\xff\xf1\x50\x80", None),  # ADTS AAC: not on the list
        (b"<!DOCTYPE html><html>", None),
        (b"PK\x03\x04", None),
    ],
)
def test_sniff_extension_knows_the_audio_signatures(head: bytes, ext: str | None) -> None:
    assert sniff_extension(head) == ext


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_valid_audio_passes_with_its_extension_and_duration(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"song.{ext}"
    path.write_bytes(tone_bytes(2.0, ext))
    validated = validate_audio_file(path)
    assert validated.ext == ext
    assert validated.duration_s == pytest.approx(2.0, abs=0.1)
    assert validated.file_size == path.stat().st_size
    assert path.exists()


def _assert_rejected(path: Path, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_audio_file(path, label="the-label")
    assert not path.exists(), "a rejected file must be removed"


def test_html_page_is_rejected_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "page.bin"
    path.write_bytes(b"<!DOCTYPE html><html><body>" + b"x" * 2000 + b"</body></html>")
    _assert_rejected(path, NotAudioError, "the-label: an HTML page, not audio")


def test_unknown_bytes_are_rejected_naming_the_signatures(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x00\x01\x02\x03" * 512)
    _assert_rejected(path, NotAudioError, "no known audio signature.*RIFF/WAVE")


def test_the_error_for_a_non_audio_file_quotes_none_of_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "shadow"
    secret = b"root:$6$saltsalt$hashedpasswordhashedpassword:19000:0:99999:7:::\n"
    path.write_bytes(secret * 40)
    with pytest.raises(NotAudioError) as raised:
        validate_audio_file(path)
    message = str(raised.value)
    assert message.startswith("shadow: no known audio signature")
    for fragment in (secret[:4], secret[:8].hex(" ").encode(), secret[:4].hex().encode()):
        assert fragment.decode() not in message


def test_file_under_1024_bytes_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tiny.wav"
    path.write_bytes(tone_bytes(2.0, "wav")[:1000])
    _assert_rejected(path, NotAudioError, "only 1000 bytes, too small")


def test_truncated_wav_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    data = tone_bytes(2.0, "wav")
    path.write_bytes(data[: len(data) // 2])
    _assert_rejected(path, TruncatedAudioError, "the-label: truncated WAV")


@pytest.mark.parametrize("ext", ["flac", "mp3"])
def test_truncated_compressed_audio_is_rejected(tmp_path: Path, ext: str) -> None:
    path = tmp_path / f"cut.{ext}"
    data = tone_bytes(3.0, ext)
    path.write_bytes(data[: len(data) // 2])
    _assert_rejected(path, AudioError, "the-label: .*(truncated|corrupt)")


def test_wav_header_without_samples_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    fmt = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, 8000, 16000, 2, 16)
    junk = struct.pack("<4sI", b"JUNK", 1100) + b"\x00" * 1100
    body = fmt + junk + struct.pack("<4sI", b"data", 0)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    _assert_rejected(path, AudioError, "the-label")


def test_m4a_without_ffmpeg_fails_saying_ffmpeg_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    path = tmp_path / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00" + b"\x00" * 4096)
    _assert_rejected(
        path, FfmpegMissingError, r"the-label: decoding this format \(m4a\) needs ffmpeg"
    )
