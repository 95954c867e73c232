"""Tempo and beats from the mel spectrum the spectral features already computed.

1. Onset envelope: librosa's `onset.onset_strength` (mean rectified rise of the mel dB spectrum,
   shifted two frames as librosa does for centred frames), computed chunk by chunk with one frame
   of carry so a long file never needs its whole spectrogram in dB at once.
2. A first tempo: librosa's `feature.tempo` (tempogram peak weighted by a log-normal prior around
   120 BPM). When that peak barely stands above the tempogram's median (noise, drones), there is
   no steady beat and no tempo. The tempogram is librosa's, but averaged over windows every
   `TEMPOGRAM_HOP` frames instead of every frame: the mean is the same to within a bin and costs
   1/16 of the time and memory (librosa's full tempogram of 60 minutes would be 200 MB).
3. Beats: librosa's dynamic-programming `beat.beat_track` at that tempo.
4. Metrical level: a tempogram prior alone picks 90 for a 180 BPM beat and 140 for a 70 BPM beat
   with strong eighth notes. So the level is checked against the linear-power onset flux (loud
   events dominate it, hi-hats barely count): when the points halfway between beats are about as
   loud as the beats, the beat is twice as fast; when every other beat is much weaker than its
   neighbours, those are off-beats and the beat is half as fast. Beats are then tracked again at
   the chosen level.
5. Tempo: 60 / the mean inter-beat interval, over the intervals within 10 % of the median (a
   missed or doubled beat does not drag it). Averaging frame-quantised intervals gives a tempo
   finer than the 23 ms frame grid and than librosa's tempogram bins.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

ONSET_LAG_FRAMES = 2  # librosa.onset.onset_strength: lag 1 + n_fft // (2 * hop) - 1 of the diff
AC_SIZE_S = 8.0  # librosa.feature.tempo's default autocorrelation window
TEMPOGRAM_HOP = 16
# Overrule the tempogram's octave only on clear evidence (measured on the synthesized grid of
# bench/analysis_accuracy.py): off-beats at least 60 % as loud as the beats (a steady beat
# twice as fast: 0.7-0.9; syncopated kicks between beats: 0.3-0.5), or every other beat under
# 15 % of its neighbours (off-beats tracked as beats: under 0.05; a backbeat: 0.3 and up).
DOUBLE_RATIO = 0.6
HALVE_RATIO = 0.15
STRENGTH_RADIUS = 2  # frames either side of a beat searched for its onset peak
MIN_TEMPO_BPM = 55.0  # a level change never goes below this (halving a 2:3 error would)
MAX_TEMPO_BPM = 240.0
MIN_BEATS = 4
MIN_PULSE_CLARITY = 1.25  # tempogram peak over its median: noise ~1.1, steady beats 10+
REGULAR_INTERVAL = 0.1  # intervals within 10 % of the median count towards the tempo


@dataclass(frozen=True)
class BeatResult:
    """Tempo in BPM (None with a reason in `warning` when there is none) and beat frames."""

    tempo: float | None
    beat_frames: IntArray
    warning: str | None = None


def rectified_rise(rows: FloatArray, previous: FloatArray | None) -> FloatArray:
    """Per frame, the rectified rise of each band since the frame before, shaped like `rows`
    (the first frame rises from `previous`, or from itself when there is none)."""
    before = np.concatenate((rows[:1] if previous is None else previous[None, :], rows[:-1]))
    rise: FloatArray = np.maximum(rows - before, np.float32(0.0))
    return rise


def align_onsets(flux: FloatArray) -> FloatArray:
    """Shift a per-frame flux the way librosa's `onset_strength` does for centred frames."""
    return np.concatenate((np.zeros(ONSET_LAG_FRAMES, np.float32), flux))[: flux.size]


def mean_tempogram(onset_envelope: FloatArray, sample_rate: int, hop_length: int) -> FloatArray:
    """`librosa.feature.tempogram` (Hann-windowed autocorrelation, each window normalised by its
    zero lag, `center=True`) averaged over windows taken every `TEMPOGRAM_HOP` frames; shaped
    (win_length, 1) as `librosa.feature.tempo(tg=...)` takes it."""
    import librosa

    win_length = int(librosa.time_to_frames(AC_SIZE_S, sr=sample_rate, hop_length=hop_length))
    padded = np.pad(onset_envelope.astype(np.float64), win_length // 2, mode="linear_ramp",
                    end_values=(0.0, 0.0))  # fmt: skip
    windows = np.lib.stride_tricks.sliding_window_view(padded, win_length)[::TEMPOGRAM_HOP]
    window = librosa.filters.get_window("hann", win_length, fftbins=True)
    n_fft = 1 << int(np.ceil(np.log2(2 * win_length - 1)))
    total = np.zeros(win_length)
    for start in range(0, windows.shape[0], 1024):  # bounded temporaries for long files
        spectra = np.fft.rfft(windows[start : start + 1024] * window, n=n_fft, axis=1)
        autocorrelation = np.fft.irfft(np.abs(spectra) ** 2, n=n_fft, axis=1)[:, :win_length]
        zero_lag = autocorrelation[:, :1]
        total += np.divide(autocorrelation, zero_lag, out=np.zeros_like(autocorrelation),
                           where=zero_lag > np.finfo(np.float64).tiny).sum(axis=0)  # fmt: skip
    mean: FloatArray = (total / max(windows.shape[0], 1)).astype(np.float32)[:, None]
    return mean


def first_tempo(
    onset_envelope: FloatArray, sample_rate: int, hop_length: int
) -> tuple[float, float]:
    """librosa's tempogram-and-prior tempo estimate (one octave choice, bin-quantised), and the
    pulse clarity: the tempogram at that tempo over its median across 55-240 BPM (about 1 for
    noise, over 10 for a steady drum beat)."""
    import librosa

    tempogram = mean_tempogram(onset_envelope, sample_rate, hop_length)
    tempo = float(np.asarray(librosa.feature.tempo(tg=tempogram, sr=sample_rate,
                                                   hop_length=hop_length)).ravel()[0])  # fmt: skip
    bpms = librosa.tempo_frequencies(tempogram.shape[0], sr=sample_rate, hop_length=hop_length)
    band = tempogram[(bpms > MIN_TEMPO_BPM) & (bpms < MAX_TEMPO_BPM), 0]
    peak = float(tempogram[int(np.argmin(np.abs(bpms - tempo))), 0])
    median = float(np.median(band)) if band.size else 0.0
    return tempo, peak / median if median > 0 else 0.0


def _beats_at(onset_envelope: FloatArray, bpm: float, sample_rate: int,
              hop_length: int) -> IntArray:  # fmt: skip
    import librosa

    _, beats = librosa.beat.beat_track(onset_envelope=onset_envelope, sr=sample_rate,
                                       hop_length=hop_length, bpm=bpm, units="frames")  # fmt: skip
    return np.asarray(beats, dtype=np.int64)


def _strengths(flux: FloatArray, frames: IntArray) -> npt.NDArray[np.float64]:
    """The largest flux within `STRENGTH_RADIUS` frames of each position."""
    offsets = np.arange(-STRENGTH_RADIUS, STRENGTH_RADIUS + 1)
    positions = np.clip(frames[:, None] + offsets[None, :], 0, flux.size - 1)
    return np.asarray(flux[positions].max(axis=1), dtype=np.float64)


def _balance(first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]) -> float:
    """Mean strength of the weaker of two interleaved phases over that of the stronger."""
    means = sorted((float(first.mean()), float(second.mean())))
    return means[0] / means[1] if means[1] > 0 else 1.0


def metrical_level(beat_frames: IntArray, power_flux: FloatArray) -> float:
    """2.0 when the beat is twice as fast as `beat_frames` says, 0.5 when half, else 1.0."""
    on_beat = _strengths(power_flux, beat_frames)
    midpoints = (beat_frames[:-1] + beat_frames[1:]) // 2
    if _balance(on_beat[:-1], _strengths(power_flux, midpoints)) >= DOUBLE_RATIO:
        return 2.0
    if _balance(on_beat[0::2], on_beat[1::2]) < HALVE_RATIO:
        return 0.5
    return 1.0


def tempo_from_intervals(beat_frames: IntArray, sample_rate: int,
                         hop_length: int) -> float | None:  # fmt: skip
    """60 / mean of the regular inter-beat intervals (within 10 % of the median), in BPM."""
    intervals = np.diff(beat_frames).astype(np.float64) * hop_length / sample_rate
    if intervals.size < MIN_BEATS - 1:
        return None
    median = float(np.median(intervals))
    regular = intervals[np.abs(intervals - median) <= REGULAR_INTERVAL * median]
    return 60.0 / float(regular.mean()) if regular.size and median > 0 else None


def track_beats(
    onset_envelope: FloatArray,
    power_flux: FloatArray,
    sample_rate: int,
    hop_length: int,
) -> BeatResult:
    """Tempo and beats of a whole file from its onset envelope and linear-power flux (both
    aligned per frame, see `align_onsets`)."""
    no_beats = np.zeros(0, dtype=np.int64)
    if not np.any(onset_envelope > 0):
        return BeatResult(None, no_beats, "no onsets found: no tempo")
    bpm, clarity = first_tempo(onset_envelope, sample_rate, hop_length)
    if clarity < MIN_PULSE_CLARITY:
        return BeatResult(None, no_beats, f"no steady beat (pulse clarity {clarity:.2f}): no tempo")
    beats = _beats_at(onset_envelope, bpm, sample_rate, hop_length)
    if beats.size >= MIN_BEATS:
        level = metrical_level(beats, power_flux)
        if level != 1.0 and MIN_TEMPO_BPM <= bpm * level <= MAX_TEMPO_BPM:
            bpm *= level
            beats = _beats_at(onset_envelope, bpm, sample_rate, hop_length)
    tempo = tempo_from_intervals(beats, sample_rate, hop_length)
    if tempo is None:
        return BeatResult(None, no_beats, f"only {beats.size} beats found: no tempo")
    return BeatResult(tempo, beats)
