"""The separation input: the file decoded once, block by block, to a temporary float32 file at
the model's rate and channel count, with the whole-track statistics demucs normalises by; then
read back window by window, so the mix is never held in memory whole.

Channel conversion follows `demucs.audio.convert_audio_channels` (mono is duplicated, extra
channels are dropped) and the statistics follow `demucs.api.Separator.separate_tensor` (mean and
unbiased standard deviation of the channel mean, plus 1e-8). Resampling, when the file's rate
differs, uses soxr's streaming resampler instead of demucs' whole-signal julius resampler.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import soxr
import torch

from soundforge import audio_io
from soundforge.errors import AudioError

FloatArray = npt.NDArray[np.float32]
SAMPLE_BYTES = 4


@dataclass(frozen=True)
class PreparedMix:
    """The decoded mix on disk: `frames` x `channels` interleaved float32 at `path`."""

    path: Path
    frames: int
    channels: int
    sample_rate: int
    mean: float
    std: float


class _RunningStats:
    """Mean and variance of a stream of blocks (Chan et al.'s pairwise update, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, values: FloatArray) -> None:
        if values.size == 0:
            return
        block = values.astype(np.float64)
        block_mean = float(block.mean())
        block_m2 = float(np.square(block - block_mean).sum())
        total = self.count + block.size
        delta = block_mean - self.mean
        self.mean += delta * block.size / total
        self.m2 += block_m2 + delta * delta * self.count * block.size / total
        self.count = total

    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0


def convert_channels(block: FloatArray, channels: int) -> FloatArray:
    """`(frames, source_channels)` -> `(frames, channels)` as demucs converts channels."""
    source_channels = block.shape[1]
    if source_channels == channels:
        return block
    if channels == 1:
        return cast(FloatArray, block.mean(axis=1, keepdims=True, dtype=np.float32))
    if source_channels == 1:
        return np.repeat(block, channels, axis=1)
    if source_channels > channels:
        return block[:, :channels]
    raise AudioError(f"cannot make {channels} channels out of {source_channels}")


def prepare_mix(
    info: audio_io.AudioInfo, raw_path: Path, sample_rate: int, channels: int
) -> PreparedMix:
    """Decode the probed file into `raw_path` (created; the caller removes it) at `sample_rate`
    with `channels`; `AudioError` when it is not decodable audio. The caller checks the
    decoded-size budget first (`AudioLimits.check_budget`); what is written is bounded by what
    really decodes (`audio_io` stops at the duration limit, whatever the header said)."""
    source = info.path
    resampler = (
        soxr.ResampleStream(info.sample_rate, sample_rate, channels, dtype="float32",
                            quality="HQ")
        if info.sample_rate != sample_rate
        else None
    )  # fmt: skip
    stats = _RunningStats()
    frames = 0
    with open(raw_path, "xb") as raw:

        def append(samples: FloatArray) -> None:
            nonlocal frames
            samples = np.ascontiguousarray(samples, dtype=np.float32)
            raw.write(samples.tobytes())
            stats.add(samples.mean(axis=1, dtype=np.float32))
            frames += samples.shape[0]

        for block in audio_io.iter_blocks(info):
            converted = convert_channels(block, channels)
            append(resampler.resample_chunk(converted) if resampler else converted)
        if resampler is not None:
            append(resampler.resample_chunk(np.zeros((0, channels), np.float32), last=True))
    if frames < 2:
        raise AudioError(f"{source}: too short to separate ({frames} frame(s))")
    return PreparedMix(raw_path, frames, channels, sample_rate, stats.mean, stats.std() + 1e-8)


class MixReader:
    """Windows of the normalised mix, `(channels, length)` float32, zero outside the track."""

    def __init__(self, mix: PreparedMix) -> None:
        self.mix = mix
        self._mean = torch.tensor(mix.mean, dtype=torch.float32)
        self._std = torch.tensor(mix.std, dtype=torch.float32)
        self._fd = os.open(mix.path, os.O_RDONLY)

    @property
    def frames(self) -> int:
        return self.mix.frames

    def window(self, start: int, length: int) -> torch.Tensor:
        channels = self.mix.channels
        window = torch.zeros(channels, length, dtype=torch.float32)
        first = max(start, 0)
        last = min(start + length, self.mix.frames)
        if last > first:
            data = os.pread(self._fd, (last - first) * channels * SAMPLE_BYTES,
                            first * channels * SAMPLE_BYTES)
            samples = torch.from_numpy(
                np.frombuffer(data, dtype="<f4").reshape(last - first, channels).T.copy()
            )
            window[:, first - start : last - start] = (samples - self._mean) / self._std
        return window

    def close(self) -> None:
        os.close(self._fd)
