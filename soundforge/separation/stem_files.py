"""Stem files: separated spans are spooled to temporary float32 files as they arrive, then each
stem is encoded (FLAC or WAV, 16-bit PCM, at the model's rate; the stems on parallel threads) to a
temporary name in the output folder, fsynced, and all are renamed into place together at the end.

The spool exists because demucs' CLI protects against clipping by dividing a whole stem by
`max(1.01 * peak, 1)`; the peak is known only once the last segment is done, and keeping the
stems in memory until then would make memory grow with the track.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import soundfile
import torch

from soundforge.storage import TEMP_PREFIX, fsync_dir

StemFormat = Literal["flac", "wav"]
SOUNDFILE_FORMATS: dict[str, str] = {"flac": "FLAC", "wav": "WAV"}
PCM_SUBTYPE = "PCM_16"
ENCODE_BLOCK_FRAMES = 1 << 18
SAMPLE_BYTES = 4


def temp_name(token: str, name: str) -> str:
    """A hidden temporary file name the orphan cleaner skips (see `soundforge.storage`)."""
    return f"{TEMP_PREFIX}{token}-{name}"


def clip_divisor(peak: float) -> float:
    """demucs' `rescale` clip protection: what a stem with this peak is divided by."""
    return max(1.01 * peak, 1.0)


class StemWriter:
    """Spools stem spans, then writes the final stem files atomically; `close()` removes every
    temporary file it made (call it in a `finally`)."""

    def __init__(self, out_dir: Path, stems: Sequence[str], channels: int, token: str) -> None:
        self.out_dir = out_dir
        self.stems = tuple(stems)
        self.channels = channels
        self.token = token
        self.peaks = [0.0] * len(self.stems)
        self.frames = 0
        self._temporaries: list[Path] = []
        self._spools: list[BinaryIO] = []
        for stem in self.stems:
            path = self._temporary(f"{stem}.f32")
            self._spools.append(open(path, "xb"))  # noqa: SIM115 -- closed in close()

    def _temporary(self, name: str) -> Path:
        path = self.out_dir / temp_name(self.token, name)
        self._temporaries.append(path)
        return path

    def append(self, block: torch.Tensor) -> None:
        """Add the next `(stems, channels, frames)` span."""
        for index, spool in enumerate(self._spools):
            samples = block[index].T.contiguous().numpy()
            self.peaks[index] = max(self.peaks[index], float(np.abs(samples).max(initial=0.0)))
            spool.write(samples.tobytes())
        self.frames += block.shape[-1]

    def finish(
        self,
        sample_rate: int,
        stem_format: StemFormat,
        between_stems: Callable[[], None] = lambda: None,
    ) -> dict[str, Path]:
        """Encode every stem, then rename them all into place; returns stem -> final path."""
        for spool in self._spools:
            spool.close()
        between_stems()
        encoded = [self._temporary(f"{stem}.{stem_format}") for stem in self.stems]
        # libsndfile and numpy release the GIL: the stems encode side by side, one per core.
        with ThreadPoolExecutor(min(len(self.stems), os.cpu_count() or 1),
                                thread_name_prefix="stem-encode") as encoders:
            futures = [
                encoders.submit(self._encode, self._temporaries[index], target, sample_rate,
                                stem_format, clip_divisor(self.peaks[index]))
                for index, target in enumerate(encoded)
            ]  # fmt: skip
            try:
                for future in futures:
                    future.result()
                    between_stems()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        finals = {}
        for stem, temporary in zip(self.stems, encoded, strict=True):
            final = self.out_dir / f"{stem}.{stem_format}"
            os.replace(temporary, final)
            finals[stem] = final
        fsync_dir(self.out_dir)
        return finals

    def _encode(self, spool: Path, target: Path, sample_rate: int, stem_format: StemFormat,
                divisor: float) -> None:
        block_bytes = ENCODE_BLOCK_FRAMES * self.channels * SAMPLE_BYTES
        with open(spool, "rb") as source, soundfile.SoundFile(
            str(target), "x", samplerate=sample_rate, channels=self.channels,
            format=SOUNDFILE_FORMATS[stem_format], subtype=PCM_SUBTYPE,
        ) as sink:  # fmt: skip
            while data := source.read(block_bytes):
                samples = np.frombuffer(data, dtype="<f4").reshape(-1, self.channels)
                sink.write(np.clip(samples / np.float32(divisor), -1.0, 1.0))
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())

    def close(self) -> None:
        for spool in self._spools:
            spool.close()
        for path in self._temporaries:
            path.unlink(missing_ok=True)


def new_token() -> str:
    return uuid.uuid4().hex
