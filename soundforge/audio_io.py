"""Audio decoding shared by every engine: one place that turns a file into float32 samples.

libsndfile (through soundfile) reads WAV, FLAC, OGG/Vorbis/Opus-in-Ogg and MP3 directly; what it
cannot read (M4A/AAC, WebM, Matroska...) is piped through an `ffmpeg` subprocess as raw float32.
Long files are decoded block by block and resampled with a streaming soxr resampler, so peak
memory is the output array plus one block, never the whole file at its native rate.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from soundforge.errors import AudioError, FfmpegMissingError

BLOCK_FRAMES = 1 << 18  # ~6 s at 44.1 kHz per decode block
FFMPEG_NATIVE_RATE = 44100

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds, read from its header (or ffprobe-equivalent via ffmpeg)."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    decoder: str  # "soundfile" or "ffmpeg"

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")


def ffmpeg_path() -> str | None:
    """The ffmpeg executable on PATH, or None."""
    return shutil.which("ffmpeg")


def probe(path: Path | str) -> AudioInfo:
    """Header facts of an audio file; `AudioError` when it is not decodable audio."""
    path = Path(path)
    _check_readable(path)
    try:
        info = soundfile.info(str(path))
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        return _probe_with_ffmpeg(path)
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: audio stream holds no samples")
    return AudioInfo(
        path=path,
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
        decoder="soundfile",
    )


def _probe_with_ffmpeg(path: Path) -> AudioInfo:
    # Decoding everything is the only reliable length for streams without a duration header.
    channels = 2
    frames = 0
    for block in _ffmpeg_blocks(path, FFMPEG_NATIVE_RATE, channels):
        frames += block.shape[0]
    if frames == 0:
        raise AudioError(f"{path}: not an audio file we can decode (no audio stream)")
    return AudioInfo(path, FFMPEG_NATIVE_RATE, channels, frames, "ffmpeg", "ffmpeg")


def _ffmpeg_blocks(path: Path, sample_rate: int, channels: int) -> Iterator[FloatArray]:
    executable = ffmpeg_path()
    if executable is None:
        raise FfmpegMissingError(f"{path.name}: this format (not WAV/FLAC/OGG/MP3)")
    command = [
        executable, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", str(path),
        "-vn", "-f", "f32le", "-acodec", "pcm_f32le",
        "-ac", str(channels), "-ar", str(sample_rate), "pipe:1",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    bytes_per_frame = 4 * channels
    chunk_bytes = BLOCK_FRAMES * bytes_per_frame
    pending = b""
    try:
        while True:
            data = process.stdout.read(chunk_bytes)
            if not data:
                break
            data = pending + data
            usable = len(data) - len(data) % bytes_per_frame
            pending = data[usable:]
            if usable:
                yield np.frombuffer(data[:usable], dtype="<f4").reshape(-1, channels).copy()
        stderr = process.stderr.read().decode(errors="replace").strip()
        if process.wait() != 0:
            reason = stderr.splitlines()[-1] if stderr else f"ffmpeg exit {process.returncode}"
            raise AudioError(f"{path}: not an audio file we can decode ({reason})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def iter_blocks(path: Path | str, block_frames: int = BLOCK_FRAMES) -> Iterator[FloatArray]:
    """Yield the file as float32 blocks shaped (frames, channels) at its native rate."""
    info = probe(path)
    if info.decoder == "ffmpeg":
        yield from _ffmpeg_blocks(info.path, info.sample_rate, info.channels)
        return
    try:
        with soundfile.SoundFile(str(info.path)) as handle:
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                yield block
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise AudioError(f"{info.path}: audio data is corrupt or truncated ({error})") from None


def decode(
    path: Path | str,
    sample_rate: int | None = None,
    mono: bool = True,
) -> tuple[FloatArray, int]:
    """Decode a whole file. `mono` downmixes to shape (frames,), else (channels, frames);
    `sample_rate` resamples (soxr, streaming) when it differs from the file's rate."""
    info = probe(path)
    target_rate = sample_rate or info.sample_rate
    channels = 1 if mono else info.channels
    expected = int(np.ceil(info.frames * target_rate / info.sample_rate)) + 64
    output = np.empty((expected, channels), dtype=np.float32)
    resampler = (
        soxr.ResampleStream(info.sample_rate, target_rate, channels, dtype="float32", quality="HQ")
        if target_rate != info.sample_rate
        else None
    )
    written = 0
    blocks = iter_blocks(info.path)
    for block in blocks:
        samples = block.mean(axis=1, keepdims=True, dtype=np.float32) if mono else block
        if resampler is not None:
            samples = resampler.resample_chunk(samples)
        written = _append(output, written, samples)
    if resampler is not None:
        written = _append(output, written, resampler.resample_chunk(
            np.zeros((0, channels), dtype=np.float32), last=True))  # fmt: skip
    if written == 0:
        raise AudioError(f"{info.path}: audio stream holds no samples")
    result = output[:written]
    if mono:
        return np.ascontiguousarray(result[:, 0]), target_rate
    return np.ascontiguousarray(result.T), target_rate


def _append(output: FloatArray, written: int, samples: FloatArray) -> int:
    count = min(samples.shape[0], output.shape[0] - written)
    output[written : written + count] = samples[:count]
    return int(written + count)
