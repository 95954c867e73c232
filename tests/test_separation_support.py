"""Helpers shared by the separation tests (no tests here): synthesized input audio and a tiny
local demucs repo, so every test runs the real loading path with no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

SAMPLE_RATE = 44100


def write_mix(path: Path, seconds: float, *, sample_rate: int = SAMPLE_RATE, channels: int = 2,
              seed: int = 0, peak: float = 0.5) -> Path:
    """Two tones plus noise per channel (16-bit), different per channel."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    columns = [
        np.sin(2 * np.pi * (110.0 * (index + 1)) * t) + 0.5 * np.sin(2 * np.pi * 1760.0 * t)
        + 0.3 * rng.standard_normal(t.size)
        for index in range(channels)
    ]  # fmt: skip
    mix = np.stack(columns, axis=1)
    mix *= peak / np.abs(mix).max()
    soundfile.write(str(path), mix.astype(np.float32), sample_rate, subtype="PCM_16")
    return path


def read_stem(path: Path) -> npt.NDArray[np.float32]:
    samples, _ = soundfile.read(str(path), dtype="float32", always_2d=True)
    return np.asarray(samples, dtype=np.float32)
