"""Synthesized audio files for source tests (numpy + soundfile; nothing is committed)."""

from __future__ import annotations

import io

import numpy as np
import soundfile

FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone_bytes(seconds: float, ext: str = "wav", sample_rate: int = 22050) -> bytes:
    """A stereo 440/660 Hz tone of `seconds`, encoded as `ext` (wav, flac, ogg, mp3)."""
    frames = int(seconds * sample_rate)
    t = np.arange(frames) / sample_rate
    samples = np.stack(
        [0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1
    ).astype(np.float32)
    container, subtype = FORMATS[ext]
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()
