"""Per-frame spectral features computed from one shared magnitude spectrum: centroid, bandwidth,
roll-off, flatness, octave-band contrast, chroma and the mel power spectrum (for MFCCs and the
onset envelope).

The filter banks are librosa's (`filters.mel`, `filters.chroma`, `estimate_tuning`, ported to
numpy in `filters`) and every formula is librosa's (`feature.spectral_*`, `feature.chroma_stft`),
with its defaults. The reductions themselves are written here because librosa's versions take a
(bins, frames) array, recompute their filter banks on every call and allocate several full-size
temporaries each; these run along contiguous time-major rows on a chunk at a time, which makes
all of them together cheaper than the STFT. `tests/test_analysis_features.py` pins them to
librosa's output.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from soundforge.analysis import filters

FloatArray = npt.NDArray[np.float32]

AMIN = 1e-10  # librosa's floor before a logarithm
ROLL_PERCENT = 0.85
ROLLOFF_BLOCK = 32  # bins per block of the two-level roll-off search
CONTRAST_FMIN = 200.0
CONTRAST_BANDS = 6  # six octaves above fmin...
N_CONTRAST = CONTRAST_BANDS + 1  # ...plus the band below it: 7 values
CONTRAST_QUANTILE = 0.02
N_MELS = 128
N_CHROMA = 12


@dataclass(frozen=True)
class ContrastBand:
    """Bins of one spectral-contrast band and how many of them make its peak and valley."""

    start: int
    stop: int
    quantile_count: int


@dataclass(frozen=True)
class Filterbanks:
    """Everything that depends only on (sample_rate, n_fft, tuning), built once."""

    frequencies: npt.NDArray[np.float64]
    mel_chroma: FloatArray  # (n_bins, n_mels + 12): both filter banks, one matrix product
    moments: FloatArray  # (n_bins, 3): 1, f - m, (f - m)^2 with m the middle frequency
    contrast_bands: tuple[ContrastBand, ...]


@lru_cache(maxsize=8)
def filterbanks(sample_rate: int, n_fft: int, tuning: float = 0.0) -> Filterbanks:
    frequencies = filters.fft_frequencies(sample_rate, n_fft)
    mel = filters.mel_bank(sample_rate, n_fft, N_MELS)
    chroma = filters.chroma_bank(sample_rate, n_fft, tuning, N_CHROMA)
    shifted = frequencies - _middle(frequencies)
    return Filterbanks(
        frequencies=frequencies,
        mel_chroma=np.ascontiguousarray(np.concatenate((mel, chroma)).T, dtype=np.float32),
        moments=np.stack([np.ones_like(shifted), shifted, shifted**2], axis=1).astype(np.float32),
        contrast_bands=_contrast_bands(frequencies, sample_rate),
    )


def _middle(frequencies: npt.NDArray[np.float64]) -> float:
    return float(frequencies[-1]) / 2.0


def _contrast_bands(frequencies: npt.NDArray[np.float64], sample_rate: int) -> tuple[
        ContrastBand, ...]:  # fmt: skip
    """The bands of `librosa.feature.spectral_contrast`: below fmin, then octaves, the last one
    reaching Nyquist; each band but the first also takes the bin just below it, and each band but
    the last drops its top bin (librosa's own edge handling, kept so the numbers match)."""
    edges = np.zeros(CONTRAST_BANDS + 2)
    edges[1:] = CONTRAST_FMIN * 2.0 ** np.arange(CONTRAST_BANDS + 1)
    if np.any(edges[:-1] >= 0.5 * sample_rate):
        raise ValueError(f"spectral contrast bands exceed Nyquist at {sample_rate} Hz")
    bands = []
    for index, (low, high) in enumerate(itertools.pairwise(edges)):
        inside = np.flatnonzero((frequencies >= low) & (frequencies <= high))
        start = int(inside[0]) - (1 if index > 0 else 0)
        stop = frequencies.size if index == CONTRAST_BANDS else int(inside[-1]) + 1
        selected = stop - start
        if index < CONTRAST_BANDS:
            stop -= 1
        count = max(int(np.rint(CONTRAST_QUANTILE * selected)), 1)
        bands.append(ContrastBand(start, stop, count))
    return tuple(bands)


def estimate_tuning(power: FloatArray, sample_rate: int, n_fft: int) -> float:
    """Deviation from A440 in fractions of a chroma bin (`librosa.estimate_tuning`, as
    `chroma_stft` does), from a time-major power spectrum."""
    tuning = filters.estimate_tuning(power, sample_rate, n_fft, N_CHROMA)
    return tuning if np.isfinite(tuning) else 0.0


def spectral_centroid_bandwidth(
    magnitude: FloatArray, banks: Filterbanks
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.float64]]:
    """Per-frame centroid and bandwidth (p = 2) of the magnitude spectrum in Hz, and each
    frame's total magnitude.

    Bandwidth is sqrt(E[(f - c)^2]) = sqrt(E[f'^2] - (c - m)^2) with f' = f - m, m the middle
    frequency: one (frames, 3) matrix product instead of (frames, bins) temporaries, and the
    shift keeps float32 cancellation small. Silent frames get 0 for both (as in librosa)."""
    sums = (magnitude @ banks.moments).astype(np.float64)  # total, sum f', sum f'^2
    total = sums[:, 0]
    safe_total = np.where(total > np.finfo(np.float32).tiny, total, np.inf)
    mean_shift = sums[:, 1] / safe_total
    centroid = np.where(np.isfinite(safe_total), mean_shift + _middle(banks.frequencies), 0.0)
    variance = np.maximum(sums[:, 2] / safe_total - mean_shift**2, 0.0)
    return centroid.astype(np.float32), np.sqrt(variance).astype(np.float32), total


def spectral_rolloff(
    magnitude: FloatArray, frequencies: npt.NDArray[np.float64], total: npt.NDArray[np.float64]
) -> FloatArray:
    """Lowest frequency below which `ROLL_PERCENT` of each frame's magnitude (`total`) lies.

    A cumulative sum over every bin of every frame is the slow way; this sums blocks of
    `ROLLOFF_BLOCK` bins, finds the block where the threshold is crossed, and accumulates only
    inside that block."""
    frames, bins = magnitude.shape
    block_count = (bins - 1) // ROLLOFF_BLOCK
    blocked = magnitude[:, : block_count * ROLLOFF_BLOCK].reshape(frames, block_count, -1)
    block_cumulative = np.cumsum(blocked.sum(axis=2, dtype=np.float64), axis=1)
    threshold = ROLL_PERCENT * total
    block = np.count_nonzero(block_cumulative < threshold[:, None], axis=1)
    rows = np.arange(frames)
    before = np.where(block > 0, block_cumulative[rows, np.maximum(block - 1, 0)], 0.0)
    columns = np.minimum(block[:, None] * ROLLOFF_BLOCK + np.arange(ROLLOFF_BLOCK), bins - 1)
    inside = before[:, None] + np.cumsum(magnitude[rows[:, None], columns], axis=1,
                                         dtype=np.float64)  # fmt: skip
    index = block * ROLLOFF_BLOCK + np.count_nonzero(inside < threshold[:, None], axis=1)
    rolloff: FloatArray = frequencies[np.minimum(index, bins - 1)].astype(np.float32)
    return rolloff


def spectral_flatness(power: FloatArray) -> FloatArray:
    """Geometric over arithmetic mean of each frame's power spectrum (floored at `AMIN`)."""
    floored = np.maximum(power, np.float32(AMIN))
    geometric = np.exp(np.mean(np.log(floored), axis=1).astype(np.float64))
    arithmetic = np.mean(floored, axis=1).astype(np.float64)
    flatness: FloatArray = (geometric / arithmetic).astype(np.float32)
    return flatness


def spectral_contrast_levels(
    magnitude: FloatArray, bands: tuple[ContrastBand, ...]
) -> tuple[FloatArray, FloatArray]:
    """Per-frame peak and valley of each band in dB (mean of the top / bottom quantile of the
    sorted band), shaped (frames, bands). Contrast is peak - valley once librosa's 80 dB floor,
    relative to the loudest peak / valley of the whole file, has been applied
    (`clip_top_db`): that floor needs every frame, so it is applied at the end."""
    frames = magnitude.shape[0]
    peak = np.empty((frames, len(bands)), dtype=np.float64)
    valley = np.empty((frames, len(bands)), dtype=np.float64)
    for index, band in enumerate(bands):
        ordered = np.sort(magnitude[:, band.start : band.stop], axis=1)
        valley[:, index] = ordered[:, : band.quantile_count].mean(axis=1, dtype=np.float64)
        peak[:, index] = ordered[:, -band.quantile_count :].mean(axis=1, dtype=np.float64)
    return power_to_db(peak), power_to_db(valley)


def power_to_db(values: npt.NDArray[np.floating]) -> FloatArray:
    """10 log10(max(values, AMIN)), without librosa's top_db floor (see `clip_top_db`)."""
    levels_db: FloatArray = (10.0 * np.log10(np.maximum(values, AMIN))).astype(np.float32)
    return levels_db


def clip_top_db(levels_db: FloatArray, top_db: float = 80.0) -> FloatArray:
    """librosa's `power_to_db(top_db=80)` floor: nothing more than `top_db` below the maximum."""
    if levels_db.size == 0:
        return levels_db
    return np.maximum(levels_db, np.float32(levels_db.max() - top_db))


def mel_and_chroma(power: FloatArray, banks: Filterbanks) -> tuple[FloatArray, FloatArray]:
    """Mel power spectrum (`librosa.feature.melspectrogram`) and chroma, max-normalised per frame
    (`librosa.feature.chroma_stft`, norm=inf; frames without energy stay zero), from one product
    of the power spectrum with both filter banks."""
    product = power @ banks.mel_chroma
    mel, raw_chroma = product[:, :N_MELS], product[:, N_MELS:]
    peak = raw_chroma.max(axis=1, keepdims=True)
    chroma = np.divide(raw_chroma, peak, out=np.zeros_like(raw_chroma),
                       where=peak > np.finfo(np.float32).tiny)  # fmt: skip
    return np.ascontiguousarray(mel), chroma
