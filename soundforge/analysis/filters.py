"""Filter banks and the tuning estimate of librosa, ported to numpy: the mel bank
(`filters.mel`, Slaney scale and norm), the chroma bank (`filters.chroma`) and `estimate_tuning`
(`piptrack` peaks, then the histogram of their deviation from A440).

Written here rather than called because reaching `librosa.filters` imports librosa's core and
sets up its numba functions: seconds in every fresh process, more than the analysis of a short
file. `tests/test_analysis_features.py` pins each one to librosa's output.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Float64Array = npt.NDArray[np.float64]

_MEL_LINEAR_HZ = 200.0 / 3  # Slaney's mel scale: linear below 1 kHz, logarithmic above
_MEL_LOG_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0
TINY64 = np.finfo(np.float64).tiny


def fft_frequencies(sample_rate: int, n_fft: int) -> Float64Array:
    return np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)


def hz_to_mel(frequencies: Float64Array) -> Float64Array:
    mels = frequencies / _MEL_LINEAR_HZ
    log_region = frequencies >= _MEL_LOG_HZ
    mels[log_region] = _MEL_LOG_HZ / _MEL_LINEAR_HZ + np.log(
        frequencies[log_region] / _MEL_LOG_HZ) / _MEL_LOG_STEP  # fmt: skip
    return mels


def mel_to_hz(mels: Float64Array) -> Float64Array:
    frequencies = _MEL_LINEAR_HZ * mels
    start = _MEL_LOG_HZ / _MEL_LINEAR_HZ
    log_region = mels >= start
    frequencies[log_region] = _MEL_LOG_HZ * np.exp(_MEL_LOG_STEP * (mels[log_region] - start))
    return frequencies


def mel_bank(sample_rate: int, n_fft: int, n_mels: int) -> Float64Array:
    """Triangular filters on the Slaney mel scale from 0 Hz to Nyquist, area-normalised;
    shaped (n_mels, 1 + n_fft // 2)."""
    bins = fft_frequencies(sample_rate, n_fft)
    lowest, highest = hz_to_mel(np.array([0.0, sample_rate / 2.0]))
    mel_edges = mel_to_hz(np.linspace(lowest, highest, n_mels + 2))
    widths = np.diff(mel_edges)
    ramps = np.subtract.outer(mel_edges, bins)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_edges[2:] - mel_edges[:-2]))[:, None]
    return weights


def chroma_bank(sample_rate: int, n_fft: int, tuning: float = 0.0,
                n_chroma: int = 12) -> Float64Array:  # fmt: skip
    """Gaussian bumps around each pitch class, centred on octave 5 (two octaves wide), each bin
    L2-normalised across pitch classes; shaped (n_chroma, 1 + n_fft // 2), C first."""
    frequencies = np.linspace(0, sample_rate, n_fft, endpoint=False)[1:]
    a440 = 440.0 * 2.0 ** (tuning / n_chroma)
    octaves = n_chroma * np.log2(frequencies / (a440 / 16.0))
    octaves = np.concatenate(([octaves[0] - 1.5 * n_chroma], octaves))
    widths = np.concatenate((np.maximum(octaves[1:] - octaves[:-1], 1.0), [1.0]))
    distance = np.subtract.outer(octaves, np.arange(n_chroma, dtype=np.float64)).T
    half = np.round(n_chroma / 2.0)
    distance = np.remainder(distance + half + 10 * n_chroma, n_chroma) - half
    weights = np.exp(-0.5 * (2.0 * distance / widths[None, :]) ** 2)
    norms = np.sqrt(np.sum(weights**2, axis=0))
    weights /= np.where(norms < TINY64, 1.0, norms)
    weights *= np.exp(-0.5 * ((octaves / n_chroma - 5.0) / 2.0) ** 2)[None, :]
    weights = np.roll(weights, -3 * (n_chroma // 12), axis=0)
    return np.ascontiguousarray(weights[:, : 1 + n_fft // 2])


def _parabolic_shift(spectrum: Float64Array) -> Float64Array:
    """Per bin, the offset of the parabola through it and its neighbours (0 at the edges and
    where the optimum lies more than a bin away); `spectrum` is (frames, bins)."""
    shift = np.zeros_like(spectrum)
    below, centre, above = spectrum[:, :-2], spectrum[:, 1:-1], spectrum[:, 2:]
    curvature = above + below - 2.0 * centre
    slope = (above - below) / 2.0
    inside = np.abs(slope) < np.abs(curvature)
    shift[:, 1:-1] = np.where(inside, -slope / np.where(inside, curvature, 1.0), 0.0)
    return shift


def estimate_tuning(power: npt.NDArray[np.floating], sample_rate: int, n_fft: int,
                    n_chroma: int = 12) -> float:  # fmt: skip
    """Deviation from A440 in fractions of a chroma bin, from a time-major power spectrum:
    spectral peaks between 150 Hz and 4 kHz above a tenth of their frame's maximum, refined by
    parabolic interpolation; the histogram peak (0.01 wide) of their deviations, counting the
    peaks at least as strong as their median. 0.0 when there are none."""
    spectrum = np.asarray(power, dtype=np.float64)
    if spectrum.size == 0:
        return 0.0
    bins = fft_frequencies(sample_rate, n_fft)
    shift = _parabolic_shift(spectrum)
    skew = 0.5 * np.gradient(spectrum, axis=1) * shift
    in_range = (bins >= 150.0) & (bins < min(4000.0, sample_rate / 2.0))
    floored = spectrum * (spectrum > 0.1 * spectrum.max(axis=1, keepdims=True))
    padded = np.pad(floored, ((0, 0), (1, 1)), mode="edge")
    peaks = (floored > padded[:, :-2]) & (floored >= padded[:, 2:]) & in_range[None, :]
    frames, columns = np.nonzero(peaks)
    pitches = (columns + shift[frames, columns]) * float(sample_rate) / n_fft
    magnitudes = spectrum[frames, columns] + skew[frames, columns]
    voiced = pitches > 0
    if not voiced.any():
        return 0.0
    threshold = np.median(magnitudes[voiced])
    selected = pitches[(magnitudes >= threshold) & voiced]
    if selected.size == 0:
        return 0.0
    residual = np.mod(n_chroma * np.log2(selected / (440.0 / 16.0)), 1.0)
    residual[residual >= 0.5] -= 1.0
    edges = np.linspace(-0.5, 0.5, 101)
    counts, _ = np.histogram(residual, edges)
    return float(edges[int(np.argmax(counts))])
