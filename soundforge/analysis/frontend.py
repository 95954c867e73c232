"""Short-time front end of the analysis: turns a stream of mono sample blocks into chunks of
frames, each with its magnitude spectrum and its time-domain statistics (RMS, zero-crossing
rate). One STFT per frame, shared by every spectral feature downstream.

Frames follow librosa's conventions (n_fft 2048, hop 512, periodic Hann window, `center=True`
with zero padding), so frame t is centred on sample t * hop and n samples give 1 + n // hop
frames. The framing is written here instead of calling `librosa.stft` / `librosa.feature.rms` /
`zero_crossing_rate` because those need the whole signal in memory (60 minutes at 22.05 kHz is
318 MB before any spectrum) and each would frame the signal again; this keeps one chunk of frames
in memory for any file length. RMS and zero crossings come from running sums over the samples
rather than from the 4x-overlapping frames: the same numbers, a quarter of the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from soundforge.analysis.rhythm import periodic_hann

N_FFT = 2048
HOP_LENGTH = 512
CHUNK_FRAMES = 1024  # ~24 s at 22.05 kHz: 4 MB per (frames, bins) float32 array
ZERO_THRESHOLD = 1e-10  # librosa.zero_crossings: |y| <= this counts as 0, i.e. positive

FloatArray = npt.NDArray[np.float32]
RealFft = Callable[..., npt.NDArray[np.complexfloating[Any, Any]]]
# scipy's rfft runs 2-3x faster than numpy's but importing scipy.fft costs more than the whole
# analysis of a short file (it pulls in scipy.special): worth it from about this length on.
SCIPY_FFT_FROM_S = 30.0


def real_fft(duration_s: float) -> RealFft:
    """The rfft to use for a file of this length (see `SCIPY_FFT_FROM_S`)."""
    if duration_s < SCIPY_FFT_FROM_S:
        return np.fft.rfft
    import scipy.fft

    return scipy.fft.rfft  # type: ignore[no-any-return]


@dataclass(frozen=True)
class FrameChunk:
    """Consecutive frames: `magnitude` is |STFT| shaped (frames, 1 + n_fft // 2), time-major so
    every per-frame reduction runs along contiguous memory; `rms` and `zero_crossing_rate` are
    shaped (frames,)."""

    magnitude: FloatArray
    rms: FloatArray
    zero_crossing_rate: FloatArray

    @property
    def frame_count(self) -> int:
        return int(self.magnitude.shape[0])


class StftFrontend:
    """Push mono float32 blocks in, get `FrameChunk`s out; `finish()` flushes the last frames.

    >>> frontend = StftFrontend()
    >>> chunks = [*frontend.push(samples), *frontend.finish()]
    """

    def __init__(
        self,
        n_fft: int = N_FFT,
        hop_length: int = HOP_LENGTH,
        chunk_frames: int = CHUNK_FRAMES,
        rfft: RealFft = np.fft.rfft,
    ) -> None:
        self.n_fft = n_fft
        self._rfft = rfft
        self.hop_length = hop_length
        self.chunk_frames = chunk_frames
        if n_fft % hop_length:
            raise ValueError("n_fft must be a multiple of hop_length")
        self.window = periodic_hann(n_fft).astype(np.float32)
        # The buffer starts at the first sample of the next frame (centre padding included).
        self._buffer: FloatArray = np.zeros(n_fft // 2, dtype=np.float32)
        self._frames_emitted = 0
        self._samples_pushed = 0
        self._finished = False

    @property
    def samples_pushed(self) -> int:
        return self._samples_pushed

    def push(self, samples: FloatArray) -> Iterator[FrameChunk]:
        """Add samples; yield every whole chunk of frames they complete."""
        if self._finished:
            raise RuntimeError("push() after finish()")
        self._samples_pushed += samples.shape[0]
        self._buffer = np.concatenate((self._buffer, samples.astype(np.float32, copy=False)))
        while self._available_frames() >= self.chunk_frames:
            yield self._emit(self.chunk_frames)

    def finish(self) -> Iterator[FrameChunk]:
        """Pad the end like librosa (`center=True`) and yield the remaining frames."""
        if self._finished:
            return
        self._finished = True
        padding = np.zeros(self.n_fft // 2, dtype=np.float32)
        self._buffer = np.concatenate((self._buffer, padding))
        remaining = 1 + self._samples_pushed // self.hop_length - self._frames_emitted
        while remaining > 0:
            count = min(remaining, self.chunk_frames)
            yield self._emit(count)
            remaining -= count

    def _available_frames(self) -> int:
        length = self._buffer.shape[0]
        return 0 if length < self.n_fft else 1 + (length - self.n_fft) // self.hop_length

    def _emit(self, count: int) -> FrameChunk:
        span = (count - 1) * self.hop_length + self.n_fft
        region = self._buffer[:span]
        starts = np.arange(count) * self.hop_length
        frames = np.lib.stride_tricks.sliding_window_view(region, self.n_fft)[:: self.hop_length]
        spectrum = self._rfft(frames * self.window, axis=1)
        magnitude = np.abs(spectrum)
        del spectrum

        # Frames start every hop and span n_fft // hop hops, so per-hop sums give per-frame sums.
        hops_per_frame = self.n_fft // self.hop_length
        hop_blocks = region.reshape(-1, self.hop_length)
        hop_energy = np.einsum("ij,ij->i", hop_blocks, hop_blocks, dtype=np.float64)
        energy = _frame_sums(hop_energy, hops_per_frame)
        rms = np.sqrt(np.maximum(energy, 0.0) / self.n_fft).astype(np.float32)

        negative = region < -ZERO_THRESHOLD
        crossing = np.empty(span, dtype=np.int32)  # crossing[i]: sign changes from i to i + 1
        np.not_equal(negative[1:], negative[:-1], out=crossing[:-1])
        crossing[-1] = 0
        hop_crossings = crossing.reshape(-1, self.hop_length).sum(axis=1)
        # A frame's pairs stop at its last sample: drop the pair that leaves the frame.
        counts = _frame_sums(hop_crossings, hops_per_frame) - crossing[starts + self.n_fft - 1]
        zero_crossing_rate = (counts / self.n_fft).astype(np.float32)

        self._buffer = self._buffer[count * self.hop_length :].copy()
        self._frames_emitted += count
        return FrameChunk(magnitude, rms, zero_crossing_rate)


def _frame_sums(per_hop: npt.NDArray[np.generic], hops_per_frame: int) -> npt.NDArray[np.float64]:
    """Sum of `hops_per_frame` consecutive per-hop values for every frame start."""
    cumulative = np.concatenate(([0.0], np.cumsum(per_hop, dtype=np.float64)))
    return cumulative[hops_per_frame:] - cumulative[:-hops_per_frame]
