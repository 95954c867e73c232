"""Validation of every downloaded or imported audio file: big enough, a known container
signature, a consistent length, within the audio limits (rate, channels, duration, decoded size)
and a decode with a duration above zero and only finite samples. A file that fails is removed
and the error says what was wrong, in words: it never quotes the file's bytes (the error is
stored and shown to whoever can read job rows)."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from pathlib import Path

from soundforge import audio_io
from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.errors import AudioError, FfmpegMissingError
from soundforge.sources.errors import NotAudioError, TruncatedAudioError

logger = logging.getLogger(__name__)

MIN_AUDIO_BYTES = 1024
SNIFF_BYTES = 2 * audio_io.TS_PACKET_BYTES + 1  # enough to see three MPEG-TS packets
# A decoder may legitimately drop an encoder delay or a padding frame; more is truncation.
TRUNCATION_SLACK_FRAMES = 4096

MAGIC_NAMES = ("ID3/MPEG audio, RIFF/WAVE, fLaC, OggS, ftyp (M4A/MP4), EBML (WebM/Matroska) "
               "or MPEG-TS")


@dataclass(frozen=True)
class ValidatedAudio:
    """What validation learned: the container's extension, the duration and the size."""

    ext: str
    duration_s: float
    file_size: int


def sniff_extension(head: bytes) -> str | None:
    """The file extension the first bytes announce, or None when they are no known audio."""
    if head.startswith(b"ID3"):
        return "mp3"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"  # MPEG audio frame sync, layer I-III (layer bits 00 would be ADTS AAC)
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "wav"
    if head.startswith(b"fLaC"):
        return "flac"
    if head.startswith(b"OggS"):
        return "opus" if b"OpusHead" in head[:SNIFF_BYTES] else "ogg"
    if head[4:8] == b"ftyp":
        return "m4a"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if audio_io.is_transport_stream(head):
        return "ts"  # an HLS stream as yt-dlp fetched it (AAC or MP3 inside)
    return None


def describe_non_audio(head: bytes) -> str:
    """A short human description of bytes that are not audio, for error messages."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page, not audio"
    if text.startswith(b"<?xml") or text.startswith(b"<"):
        return "an XML/HTML document, not audio"
    if text.startswith((b"{", b"[")):
        return "JSON text, not audio"
    return f"no known audio signature (expected {MAGIC_NAMES})"  # never the bytes themselves


def validate_audio_file(
    path: Path, label: str | None = None, limits: AudioLimits = DEFAULT_LIMITS
) -> ValidatedAudio:
    """Check `path` and return what it holds; on any failure remove it and raise an
    `AudioError` (`NotAudioError`, `TruncatedAudioError`, `AudioLimitError`,
    `FfmpegMissingError`...) whose message starts with `label` (default: the file name)."""
    name = label or path.name
    try:
        return _validate(path, name, limits)
    except AudioError:
        path.unlink(missing_ok=True)
        raise


def _validate(path: Path, name: str, limits: AudioLimits) -> ValidatedAudio:
    if not path.is_file():
        raise AudioError(f"{name}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    ext = sniff_extension(head)
    if ext is None:
        raise NotAudioError(f"{name}: {describe_non_audio(head)}")
    if size < MIN_AUDIO_BYTES:
        raise NotAudioError(
            f"{name}: only {size} bytes, too small to be audio (at least {MIN_AUDIO_BYTES})"
        )
    if ext == "wav":
        _check_riff_length(head, size, name)
    duration_s = _decoded_duration(path, name, ext, limits)
    logger.debug("validated %s: %s, %.2f s, %d bytes", name, ext, duration_s, size)
    return ValidatedAudio(ext=ext, duration_s=duration_s, file_size=size)


def _check_riff_length(head: bytes, size: int, name: str) -> None:
    (declared,) = struct.unpack_from("<I", head, 4)
    # 0 and 0xFFFFFFFF mark streamed WAVs of unknown length.
    if declared not in (0, 0xFFFFFFFF) and declared + 8 > size:
        raise TruncatedAudioError(
            f"{name}: truncated WAV ({size} bytes, its header says {declared + 8})"
        )


def _decoded_duration(path: Path, name: str, ext: str, limits: AudioLimits) -> float:
    try:
        info = audio_io.probe(path, limits=limits)
        if info.decoder == "ffmpeg":  # probing with ffmpeg already decoded the whole stream
            decoded_frames = info.frames
        else:
            decoded_frames = sum(block.shape[0] for block in audio_io.iter_blocks(info))
    except FfmpegMissingError:
        raise FfmpegMissingError(f"{name}: decoding this format ({ext})") from None
    except AudioError as error:
        error.args = (str(error).replace(str(path), name).replace(path.name, name),)
        raise error from None  # the same type: callers tell a limit from a corrupt file
    if decoded_frames <= 0 or info.sample_rate <= 0:
        raise AudioError(f"{name}: decodes to no samples (duration 0)")
    if decoded_frames + TRUNCATION_SLACK_FRAMES < info.frames * 0.99:
        raise TruncatedAudioError(
            f"{name}: truncated audio (decoded {decoded_frames / info.sample_rate:.2f} s of "
            f"{info.duration_s:.2f} s)"
        )
    return decoded_frames / info.sample_rate
