"""Tempo and beats from the mel spectrum the spectral features already computed. All numpy:
librosa's beat tracker and tempo estimate are ported here (same results, `tests/
test_analysis_features.py`), because its numba kernels are compiled again in every fresh
process (~2.7 s, more than the analysis of a whole song).

1. Onset envelope: librosa's `onset.onset_strength` (mean rectified rise of the mel dB spectrum,
   shifted two frames as librosa does for centred frames), computed chunk by chunk with one frame
   of carry so a long file never needs its whole spectrogram in dB at once.
2. A first tempo: librosa's `feature.tempo` (tempogram peak weighted by a log-normal prior around
   120 BPM, nothing under 40 BPM), and the pulse clarity (that peak over the tempogram's
   median: noise ~1, legato music 1.1-3, drums 5-50), which becomes `tempo_confidence`. A weak
   pulse never erases the tempo (noise is told apart by the engine, which also knows whether
   there are notes). When the pulse is unclear (no drums), the prior is centred on 80 BPM
   instead: in legato music the notes moving in eighths otherwise make the eighth the beat
   (measured on the rendered corpus of `bench/analysis_corpus.py`: Acc1 0.49 -> 0.77 without
   drums, drums unchanged). The tempogram is librosa's, but averaged over windows every
   `TEMPOGRAM_HOP` frames instead of every frame: the mean is the same to within a bin and costs
   1/16 of the time and memory (librosa's full tempogram of 60 minutes would be 200 MB).
3. Beats: librosa's dynamic-programming `beat.beat_track` at that tempo. Legato music read from
   its harmonic novelty (no drums, unclear onsets) is first checked against a reading twice as
   fast and slower readings by where its chords change (`harmonic_tempo`): a chorale's chords
   change on nearly every beat,
   on the beat rather than between beats (the notes between are passing tones), so the chroma
   of the half beat before a true beat differs from that of the half beat after more than it
   does halfway between beats (`chord_contrast`). The 80 BPM prior reads a slow hymn (45-60
   BPM) with eighth-note passing tones twice as fast; this evidence, weighed at each
   reading's own beat length, picks the slower one (measured figures at `HARMONIC_BALANCE`).
   The same prior reads a hymn at 116-160 BPM at half its tempo, every other chord as a beat;
   the chords changing as often halfway between its beats as on them double it
   (`FASTER_MARGIN`).
   Slower tempi at any ratio are then searched for beats that keep time with the chord
   changes twice as well (`chord_paced_tempo`): slow strings were read at 4:3 and 3:2. A
   reading from the harmonic novelty is never doubled by the onsets (eighth notes as loud as
   the beats; the novelty's clarity is not a drum pulse). Goto and Muraoka (1999) choose the
   beat level of drumless audio by its chord changes in the same way.
4. Metrical level: a tempogram prior alone picks 90 for a 180 BPM beat and 140 for a 70 BPM beat
   with strong eighth notes. So the level is checked against the linear-power onset flux (loud
   events dominate it, hi-hats barely count): when the points halfway between beats are about as
   loud as the beats and the pulse is drum-clear, the beat is twice as fast; when every other
   beat is much weaker than its neighbours, those are off-beats and the beat is half as fast.
   With drums, the pattern decides next (`drum_level`): snares halfway between the beats double
   the beat, a snare on every fourth beat halves it. Beats are then tracked again at the chosen
   level (never above 200 BPM: a folk song strummed in eighths read 240).
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
DOUBLE_MIN_CLARITY = 5.0  # ...and a pulse this clear (drums); legato music stays under 3
# ...or, with drums (`percussiveness`), by the drum pattern itself, whatever the tempogram's prior
# says (`drum_level`), counting most of the beats (medians, quantiles), not one syncopated kick:
# - twice as fast (up to `MAX_DOUBLED_BPM`) when three in four points halfway between beats are
#   nearly as loud as the beats both in the bands under 4 kHz (`low_onsets`, dB: kick and snare
#   count alike, hi-hats hardly; `BACKBEAT_RATIO`) and in the linear-power flux
#   (`BACKBEAT_POWER_RATIO`), while the points a quarter of the way are weaker (`QUARTER_RATIO`:
#   the doubled beat is a grid, not a smear of notes). A backbeat groove has its kick and snare
#   a beat apart and the tempogram often peaks at the two-beat period: a 170 BPM groove read
#   85 BPM with its snares halfway (the old gate, doubling only under 85 BPM, left 170-180 BPM
#   halved). Measured at the tempogram's tempo (up to 100 BPM, clarity 1.3 and up) on the drum
#   clips of the rendered corpus (also cut 3 s in), four more rendered groove sets (60-180 BPM,
#   every pattern; not committed) and the synthesized grid: at half the tempo (143 clips) low
#   0.36-1.3, power 0.45-4, quarter 0.06-0.46; at the tempo (161) low 0.03-0.42, and low and
#   power both over the bars once (ride cymbal and choir at 99 BPM: quarter 0.61).
# - half as fast when the snare lands on every fourth beat instead of every other: the beat
#   phase (of four) second loudest in the 1.5-5 kHz bands (`snare_onsets`: the snare's noise,
#   hardly the kick) under `SNARE_PHASE_RATIO` of the loudest; or when alternate beats are weak
#   both in power (`HALVE_RATIO`) and under 4 kHz (`OFF_BEAT_LOW_RATIO`). Measured likewise (pulse
#   clarity 1.8 and up, where `metrical_level` keeps the level): eighth notes tracked as beats
#   (14 clips, funk with sixteenth-note hats at 60-85 BPM) snare 0.49-0.76, and once 0.90 with
#   alternations 0.11 / 0.25; beats tracked at the tempo (165) snare 0.78-1.0, alternations from
#   0.17 / 0.50.
BACKBEAT_RATIO = 0.35
HALFWAY_QUANTILE = 0.25
QUARTER_RATIO = 0.55
BACKBEAT_POWER_RATIO = 0.4
BACKBEAT_BANDS = 90  # mel bands (of 128 at 22.05 kHz) under 4 kHz
SNARE_BANDS = (54, 99)  # mel bands (of 128 at 22.05 kHz) from 1.5 to 5 kHz
SNARE_PHASE_RATIO = 0.7
OFF_BEAT_LOW_RATIO = 0.35
MAX_DOUBLED_BPM = 200.0
DRUM_PERCUSSIVENESS = 0.35
DRUM_MIN_CLARITY = 1.8  # pulse clarity to halve by the pattern
# ...and to double: over noise (1.0-1.1), where a legato vibraphone or string piece with plucked
# attacks (percussiveness 0.4-0.5, clarity 1.0-1.2) was doubled; a ride cymbal under strings or
# reeds at half its tempo reads 1.4 and up
DRUM_DOUBLE_MIN_CLARITY = 1.3
# Legato music without drums (strings, choir, organ: soft or hidden attacks) leaves the onset
# envelope flat (pulse clarity 1.0-1.1), and its tempo was the prior's. Its chords change on
# the beat, so its pulse is taken from the harmonic novelty instead: the cosine distance
# between the mean chroma of the `NOVELTY_HALF_FRAMES` frames before and after each frame.
# Tuning / validation part, Acc1, hymns 0.90 -> 0.95 / 0.71 -> 0.96, other music without drums
# 0.73 -> 0.87 / 0.75 -> 0.90, drums unchanged (half-windows of 10 and 14 frames: within a clip).
# Its own bumps are two half-windows wide, so it is searched below 60 / that (161 BPM).
NOVELTY_HALF_FRAMES = 8  # 0.19 s
HALVE_RATIO = 0.15
# Legato music read from its harmonic novelty at 80 BPM or more (`harmonic_tempo`) is read half
# as fast when, at the slower beat, the chords change on every beat (the balance of alternate
# beats' changes at least `HARMONIC_BALANCE`) and keep time with it better (the contrast up by
# `HARMONIC_MARGIN`). Measured on the 366 clips that take the novelty path (212 of them read at
# 80 BPM or more): the rendered corpus (also cut 3 s in), the synthesized grid, 128 more
# rendered hymns (45-110 BPM, 3/4 and 4/4, eighth-note passing tones in 35 % and 70 % of the
# voices moving by a third; bench/hymns.py, not committed) and 100 rendered after the tuning
# (35 % and 50 %): hymns read at twice their tempo gain +0.035 to +0.17 at balance 0.63-0.98
# (one more at 0.44 stays doubled); the music this must leave alone (chords a bar long:
# progressions at 83-95 BPM, the grid) gains up to +0.23, but at balance 0.43 and under; one
# hymn read at 1.56 times its tempo (already wrong) is halved to 0.78 times. Tempo Acc1,
# tuning / validation part of the corpus: unchanged without drums (0.943 / 0.979; hymns
# 1.000 / 0.964), cut 3 s in 0.943 / 0.958 -> 0.971 / 0.958 (hymns 0.950 / 0.929 -> 1.000 /
# 0.929); drums and the grid unchanged (1.0; 0.987 / 0.810); the 128 hymns: misses 9 -> 4
# (doubled 6 -> 1, leaving aside a piano one, whose onsets take the drum path); the 100 hymns
# rendered after: misses 9 -> 7, none new. Slower readings at 2:3, 3:4 and 4:5 (for hymns read
# at 3:2, 4:3, 5:4 of their tempo) were tried the same way (the slower reading's contrast 1.4
# times as large, where the chords changed on every beat of the first, and the tracker
# keeping it) and left out: they fixed 5 clips of the corpus and the 128 hymns but, on the 100
# rendered after, fixed 1 and broke 2 (a correct 62 BPM read at 42).
HARMONIC_BALANCE = 0.6
HARMONIC_MARGIN = 0.02
# ...and only over at least this many of the slower beats (16 s at 45 BPM): on the hymns cut to
# their first 8 or 12 s (108 clips, both hymn sets), hymns at 81-103 BPM were halved to 40-51
# (3 new misses at 8 s, 2 at 12 s) and no doubled one was mended. Whole clips (20 s) are
# unchanged; cut 3 s in, one 53 BPM hymn read at 95 is no longer halved (tempo Acc1 without
# drums 0.969 -> 0.954 on the tuning half, hymns unchanged). 10 beats scored the same.
HARMONIC_MIN_BEATS = 12
# The reading is first checked the other way (up to `novelty_fastest_bpm`, 161 BPM): twice as
# fast where the chords keep time with the faster beat better (its `chord_contrast` up by
# `FASTER_MARGIN`) and change on nearly every faster beat (balance from `FASTER_BALANCE`). The
# 80 BPM prior read hymns at 116-160 BPM at half their tempo (chords changing on every beat
# make the novelty's tempogram as high at two beats as at one), and the hymns the rest was
# tuned on ran to 110 BPM only. Measured on the novelty-path clips of the rendered corpus
# (both fonts) and of 192 hymns rendered for this (plain and ornamented, 96-140 and 40-160 BPM,
# FluidR3 and TimGM6mb; not committed; the corpus's fast hymn set is written like them): of
# the 48 read at half their tempo, the faster beat kept time better by -0.10 to +0.31 (by 0.01
# or more at balance 0.4 or more in 45); of the 202 read at their tempo, none better (-0.04 at
# most). Tempo Acc1 of those hymns, tuning / validation: 96-140 BPM 0.75 / 0.63 -> 0.96 / 0.88
# (FluidR3), 0.71 / 0.63 -> 0.96 / 1.00 (TimGM6mb); 40-160 BPM, rendered after the margin was
# set, 0.83 / 0.67 -> 0.96 / 0.96 and 0.71 / 0.75 -> 0.88 / 0.92; the corpus unchanged but one
# 112 BPM woodwind piece mended, and its fast set (111-160 BPM) 0.50 / 0.46 -> 0.85 / 0.96.
# Through MuseScore_General_Lite, a font nothing was tuned on, the whole corpus without drums
# went from 0.924 / 0.895 to 0.979 / 0.979.
FASTER_MARGIN = 0.01
FASTER_BALANCE = 0.4
# Slow strings (attacks swelling over a third of a second) and choirs leave even the harmonic
# novelty's tempogram unclear (clarity 1.0-1.1); its peak then lands at 4:3, 3:2 or 2:1 of the
# tempo (a hymn at 54 BPM read 81), and halving cannot mend the first two. So the slower tempi
# are searched (`chord_paced_tempo`, from the reading down to `PRIOR_MIN_BPM` in 3 % steps) for
# beats that keep time with the chord changes (`chord_contrast`) at least `CHORD_SCAN_RATIO`
# times as well as the reading's. Measured on the clips that take the novelty path (the
# rendered corpus, its fermata hymns, 48 modulating hymns of another branch and 144 hymns
# rendered for this, 40-110 BPM; not committed): where the reading was wrong and the best
# slower tempo right, that tempo kept time about 1.1-3.4 times as well (2.0 and up in 10 of
# 13); where the reading was right, a slower one (a half, or 0.8-0.95) at most 1.86 times as
# well (legato progressions, a chord a bar; hymns 1.4). Tempo Acc1 without drums, tuning /
# validation: the rendered corpus 0.954 / 0.974 -> 0.969 / 0.987, cut 3 s in 0.954 / 0.962
# -> 0.969 / 0.974; fermata and modulating hymns 0.950 / 0.929 -> 0.975 / 0.946; the 144
# hymns 0.926 / 0.895 -> 0.926 / 0.947; all those hymns cut to their first 8 s 0.83 / 0.84
# -> 0.85 / 0.87 (2 new misses, 12 mended), 12 s 0.91 / 0.90 -> 0.92 / 0.93 (none new, 9
# mended); drums unchanged (the path is drumless). The search costs about 0.03 s of CPU for
# 20 s, 0.06 s for 3 minutes and 0.2 s for an hour (only the first `CHORD_SCAN_SECONDS`).
CHORD_SCAN_RATIO = 2.0
CHORD_SCAN_FLOOR = 0.01  # a reading that keeps no time with the chords counts as this much
CHORD_SCAN_STEP = 1.03
CHORD_SCAN_SECONDS = 60.0
# ...and only where the chords change on nearly every slower beat (the balance of alternate
# beats' changes, as at `HARMONIC_BALANCE`): music with a chord a bar (the synthesized grid's
# progressions at 100 BPM, no drums) keeps time with every other beat twice as well, but its
# alternate beats change balance 0.00; the hymns mended above 0.34-0.94.
CHORD_SCAN_MIN_BALANCE = 0.25
STRENGTH_RADIUS = 2  # frames either side of a beat searched for its onset peak
PRIOR_BPM = 120.0  # librosa.feature.tempo's start_bpm (log-normal prior, one octave wide)
PRIOR_MAX_BPM = 320.0  # ...and its max_tempo
PRIOR_MIN_BPM = 40.0
LEGATO_PRIOR_BPM = 80.0
LEGATO_MAX_CLARITY = 3.0
MIN_TEMPO_BPM = 55.0  # a level change never goes below this (halving a 2:3 error would)
MAX_TEMPO_BPM = 240.0  # top of the band the pulse clarity's median is taken over
MIN_BEATS = 4
MIN_PULSE_CLARITY = 1.1  # tempogram peak over its median: noise ~1.1, legato music 1.1-1.5
CLEAR_PULSE = 3.0  # ...steady drums 10+
REGULAR_INTERVAL = 0.1  # intervals within 10 % of the median count towards the tempo


@dataclass(frozen=True)
class BeatResult:
    """Tempo in BPM (None with a reason in `warning` when there is none), beat frames, and the
    pulse clarity behind them (tempogram peak over its median: ~1 for noise, 10+ for drums)."""

    tempo: float | None
    beat_frames: IntArray
    warning: str | None = None
    clarity: float = 0.0

    @property
    def confidence(self) -> float:
        """0..1 from the pulse clarity: 0 at `MIN_PULSE_CLARITY` and below, 1 from
        `CLEAR_PULSE` up (a legato piece without drums: ~0.1-0.5; a drum groove: 1)."""
        span = CLEAR_PULSE - MIN_PULSE_CLARITY
        return float(min(max((self.clarity - MIN_PULSE_CLARITY) / span, 0.0), 1.0))


def rectified_rise(rows: FloatArray, previous: FloatArray | None) -> FloatArray:
    """Per frame, the rectified rise of each band since the frame before, shaped like `rows`
    (the first frame rises from `previous`, or from itself when there is none)."""
    before = np.concatenate((rows[:1] if previous is None else previous[None, :], rows[:-1]))
    rise: FloatArray = np.maximum(rows - before, np.float32(0.0))
    return rise


def align_onsets(flux: FloatArray) -> FloatArray:
    """Shift a per-frame flux the way librosa's `onset_strength` does for centred frames."""
    return np.concatenate((np.zeros(ONSET_LAG_FRAMES, np.float32), flux))[: flux.size]


def periodic_hann(length: int) -> npt.NDArray[np.float64]:
    """The periodic Hann window (`scipy.signal.get_window("hann", length, fftbins=True)`)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def tempo_frequencies(n_bins: int, sample_rate: int, hop_length: int) -> npt.NDArray[np.float64]:
    """BPM of each autocorrelation lag (`librosa.tempo_frequencies`; lag 0 is infinite)."""
    bpms = np.full(n_bins, np.inf)
    bpms[1:] = 60.0 * sample_rate / (hop_length * np.arange(1.0, n_bins))
    return bpms


def mean_tempogram(onset_envelope: FloatArray, sample_rate: int, hop_length: int) -> FloatArray:
    """`librosa.feature.tempogram` (Hann-windowed autocorrelation, each window normalised by its
    zero lag, `center=True`) averaged over windows taken every `TEMPOGRAM_HOP` frames; shaped
    (win_length, 1) as `librosa.feature.tempo(tg=...)` takes it."""
    win_length = int(np.floor(AC_SIZE_S * sample_rate / hop_length))  # librosa.time_to_frames
    padded = np.pad(onset_envelope.astype(np.float64), win_length // 2, mode="linear_ramp",
                    end_values=(0.0, 0.0))  # fmt: skip
    windows = np.lib.stride_tricks.sliding_window_view(padded, win_length)[::TEMPOGRAM_HOP]
    window = periodic_hann(win_length)
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
    onset_envelope: FloatArray, sample_rate: int, hop_length: int,
    max_bpm: float = PRIOR_MAX_BPM,
) -> tuple[float, float]:
    """`prior_tempo` with librosa's prior; when the pulse is unclear (no drums), again with the
    prior of unaccompanied legato music (`LEGATO_PRIOR_BPM`), whose notes moving in eighths
    otherwise make the eighth the beat. Tempi from `max_bpm` up are not considered."""
    tempo, clarity = prior_tempo(onset_envelope, sample_rate, hop_length, PRIOR_BPM, max_bpm)
    if clarity < LEGATO_MAX_CLARITY:
        tempo, _ = prior_tempo(onset_envelope, sample_rate, hop_length, LEGATO_PRIOR_BPM,
                               max_bpm)  # fmt: skip
    return tempo, clarity


def prior_tempo(
    onset_envelope: FloatArray, sample_rate: int, hop_length: int, prior_bpm: float,
    max_bpm: float = PRIOR_MAX_BPM,
) -> tuple[float, float]:
    """librosa's tempogram-and-prior tempo estimate (`feature.tempo`: a log-normal prior around
    120 BPM, one octave wide, nothing at or above 320 BPM; one octave choice, bin-quantised),
    and the pulse clarity: the tempogram at that tempo over its median across 55-240 BPM (about
    1 for noise, over 10 for a steady drum beat)."""
    tempogram = mean_tempogram(onset_envelope, sample_rate, hop_length)[:, 0].astype(np.float64)
    bpms = tempo_frequencies(tempogram.size, sample_rate, hop_length)
    with np.errstate(divide="ignore"):
        log_prior = -0.5 * (np.log2(bpms) - np.log2(prior_bpm)) ** 2
    log_prior[: int(np.argmax(bpms < max_bpm))] = -np.inf
    log_prior[bpms < PRIOR_MIN_BPM] = -np.inf  # a chord per bar is not a 25 BPM beat
    best = int(np.argmax(np.log1p(1e6 * tempogram) + log_prior))
    tempo = float(bpms[best])
    band = tempogram[(bpms > MIN_TEMPO_BPM) & (bpms < MAX_TEMPO_BPM)]
    median = float(np.median(band)) if band.size else 0.0
    return tempo, float(tempogram[best]) / median if median > 0 else 0.0


def _local_score(onset_envelope: npt.NDArray[np.float64], frames_per_beat: int) -> npt.NDArray[
        np.float64]:  # fmt: skip
    """The onset envelope over its standard deviation, smoothed by a Gaussian of one beat's
    width (librosa's `__beat_local_score`: a same-mode convolution)."""
    normalised = onset_envelope / (onset_envelope.std(ddof=1) + np.finfo(np.float64).tiny)
    offsets = np.arange(-frames_per_beat, frames_per_beat + 1)
    window = np.exp(-0.5 * (offsets * 32.0 / frames_per_beat) ** 2)
    full = np.convolve(normalised, window)
    half = window.size // 2
    return full[half : half + normalised.size]


def _beat_dp(local_score: npt.NDArray[np.float64], frames_per_beat: int,
             tightness: float) -> tuple[IntArray, npt.NDArray[np.float64]]:  # fmt: skip
    """librosa's beat-tracking dynamic program (Ellis 2007), vectorised: a beat at frame i
    follows the best earlier beat between half and twice a beat before, penalised by
    `tightness` times the squared log of the interval over the beat. Every predecessor of the
    frames in a block of half a beat lies before the block, so each block is one array step
    instead of a numba loop (whose compilation cost ~2.7 s in every fresh process)."""
    count = local_score.size
    shortest = max(int(np.round(frames_per_beat / 2)), 1)
    lags = np.arange(shortest, 2 * frames_per_beat + 1)
    penalty = tightness * (np.log(lags) - np.log(frames_per_beat)) ** 2
    cumulative = local_score.copy()
    backlink = np.full(count, -1, dtype=np.int64)
    for start in range(shortest, count, shortest):
        frames = np.arange(start, min(start + shortest, count))
        previous = frames[:, None] - lags[None, :]
        scores = np.where(previous >= 0, cumulative[np.maximum(previous, 0)] - penalty, -np.inf)
        best = np.argmax(scores, axis=1)
        best_score = scores[np.arange(frames.size), best]
        found = np.isfinite(best_score)
        cumulative[frames] = local_score[frames] + np.where(found, best_score, 0.0)
        backlink[frames] = np.where(found, previous[np.arange(frames.size), best], -1)
    above = np.flatnonzero(local_score >= 0.01 * local_score.max())
    backlink[: above[0] if above.size else count] = -1  # no beat before the first onset
    return backlink, cumulative


def _last_beat(cumulative: npt.NDArray[np.float64]) -> int:
    """The last local maximum of the cumulative score above half the median of its maxima."""
    before = np.concatenate((cumulative[:1], cumulative[:-1]))
    after = np.concatenate((cumulative[1:], cumulative[-1:]))
    peaks = (cumulative > before) & (cumulative >= after)
    if not peaks.any():
        return cumulative.size - 1
    threshold = 0.5 * float(np.median(cumulative[peaks]))
    candidates = np.flatnonzero(peaks & (cumulative >= threshold))
    return int(candidates[-1]) if candidates.size else cumulative.size - 1


def _trimmed(local_score: npt.NDArray[np.float64], beats: IntArray) -> IntArray:
    """Drop leading and trailing beats whose local score is under half the RMS of the smoothed
    beat scores (librosa's `__trim_beats`)."""
    if beats.size == 0:
        return beats
    smooth = np.convolve(local_score[beats], np.hanning(5))[2 : 2 + beats.size]
    threshold = 0.5 * float(np.sqrt(np.mean(smooth**2)))
    strong = np.flatnonzero(local_score > threshold)
    if strong.size == 0:
        return beats[:0]
    kept: IntArray = beats[(beats >= strong[0]) & (beats <= strong[-1])]
    return kept


def track_beats_at(onset_envelope: FloatArray, bpm: float, sample_rate: int, hop_length: int,
                   tightness: float = 100.0) -> IntArray:  # fmt: skip
    """Beat frames at a given tempo: `librosa.beat.beat_track(onset_envelope=..., bpm=...)`
    in numpy (same local score, dynamic program, last-beat choice, backtracking and trim)."""
    envelope = np.asarray(onset_envelope, dtype=np.float64)
    if envelope.size == 0 or not np.any(envelope):
        return np.zeros(0, dtype=np.int64)
    frames_per_beat = max(int(np.round(sample_rate / hop_length * 60.0 / bpm)), 1)
    local_score = _local_score(envelope, frames_per_beat)
    backlink, cumulative = _beat_dp(local_score, frames_per_beat, tightness)
    beats = []
    frame = _last_beat(cumulative)
    while frame >= 0:
        beats.append(frame)
        frame = int(backlink[frame])
    return _trimmed(local_score, np.asarray(beats[::-1], dtype=np.int64))


def _strengths(flux: FloatArray, frames: IntArray) -> npt.NDArray[np.float64]:
    """The largest flux within `STRENGTH_RADIUS` frames of each position."""
    offsets = np.arange(-STRENGTH_RADIUS, STRENGTH_RADIUS + 1)
    positions = np.clip(frames[:, None] + offsets[None, :], 0, flux.size - 1)
    return np.asarray(flux[positions].max(axis=1), dtype=np.float64)


def _balance(first: npt.NDArray[np.float64], second: npt.NDArray[np.float64]) -> float:
    """Mean strength of the weaker of two interleaved phases over that of the stronger."""
    means = sorted((float(first.mean()), float(second.mean())))
    return means[0] / means[1] if means[1] > 0 else 1.0


def metrical_level(beat_frames: IntArray, power_flux: FloatArray, may_double: bool = True) -> float:
    """2.0 when the beat is twice as fast as `beat_frames` says, 0.5 when half, else 1.0.
    Doubling needs `may_double`: a clear, drum-like pulse (without drums, notes moving in
    eighths are as loud as the beat and would double every chorale)."""
    on_beat = _strengths(power_flux, beat_frames)
    midpoints = (beat_frames[:-1] + beat_frames[1:]) // 2
    if may_double and _balance(on_beat[:-1], _strengths(power_flux, midpoints)) >= DOUBLE_RATIO:
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


def cumulative_chroma(chroma: FloatArray) -> npt.NDArray[np.float64]:
    """The chroma's running sum per frame, with a leading zero row (window sums by difference)."""
    cumulative: npt.NDArray[np.float64] = np.concatenate(
        (np.zeros((1, chroma.shape[1])), np.cumsum(chroma, axis=0, dtype=np.float64)))
    return cumulative


def harmonic_novelty(chroma: FloatArray, half: int = NOVELTY_HALF_FRAMES) -> FloatArray:
    """Per frame, 1 - cosine similarity of the summed chroma of the `half` frames before and
    the `half` frames from it on (0 within a chord, up to 1 where it changes)."""
    change = _chord_change(cumulative_chroma(chroma), np.arange(chroma.shape[0]), half)
    novelty: FloatArray = change.astype(np.float32)
    return novelty


def _chord_change(cumulative: npt.NDArray[np.float64], frames: IntArray,
                  half: int) -> npt.NDArray[np.float64]:  # fmt: skip
    """`harmonic_novelty` at `frames`, from `cumulative_chroma` and a half-window of `half`
    frames."""
    count = cumulative.shape[0] - 1
    at = np.clip(frames, 0, count)
    before = cumulative[at] - cumulative[np.maximum(at - half, 0)]
    after = cumulative[np.minimum(at + half, count)] - cumulative[at]
    norms = np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1)
    similarity = np.divide((before * after).sum(axis=1), norms, out=np.ones(at.size),
                           where=norms > 0)  # fmt: skip
    change: npt.NDArray[np.float64] = 1.0 - similarity
    return change


def chord_contrast(cumulative: npt.NDArray[np.float64], beat_frames: IntArray) -> tuple[float,
        float]:  # fmt: skip
    """How well the chord changes keep time with `beat_frames`: the mean chord change (chroma
    of the half beat before against the half beat after) on the beats minus halfway between
    them, and the balance of the two alternate sets of beats (the weaker's mean change over the
    stronger's: ~1 when the chord changes on every beat, low when on every other one)."""
    if beat_frames.size < MIN_BEATS:
        return 0.0, 0.0
    half = max(int(np.median(np.diff(beat_frames))) // 2, 1)
    on_beat = _chord_change(cumulative, beat_frames, half)
    halfway = _chord_change(cumulative, (beat_frames[:-1] + beat_frames[1:]) // 2, half)
    return float(on_beat.mean() - halfway.mean()), _balance(on_beat[0::2], on_beat[1::2])


def novelty_fastest_bpm(sample_rate: int, hop_length: int) -> float:
    """The fastest beat the harmonic novelty can show: one bump is its two half-windows."""
    return 60.0 * sample_rate / (2 * NOVELTY_HALF_FRAMES * hop_length)


def harmonic_tempo(envelope: FloatArray, chroma: FloatArray, bpm: float, sample_rate: int,
                   hop_length: int) -> tuple[float, IntArray]:  # fmt: skip
    """`bpm` and its beats on `envelope` (the harmonic novelty of `chroma`), or twice it where
    the chords keep time with the faster beat better (`chord_contrast` up by `FASTER_MARGIN`)
    and change on nearly every one of its beats (balance from `FASTER_BALANCE`): the reading
    was every other chord. Else half of it where the chords keep time with the slower beat
    clearly better (up by `HARMONIC_MARGIN`) and change on every one of its beats (balance
    from `HARMONIC_BALANCE`): the notes moving between those beats are passing tones."""
    beats = track_beats_at(envelope, bpm, sample_rate, hop_length)
    cumulative = cumulative_chroma(chroma)
    contrast, _ = chord_contrast(cumulative, beats)
    if 2.0 * bpm <= novelty_fastest_bpm(sample_rate, hop_length):
        faster = track_beats_at(envelope, 2.0 * bpm, sample_rate, hop_length)
        faster_contrast, balance = chord_contrast(cumulative, faster)
        if balance >= FASTER_BALANCE and faster_contrast >= contrast + FASTER_MARGIN:
            return 2.0 * bpm, faster
    if bpm / 2.0 < PRIOR_MIN_BPM:
        return bpm, beats
    slower = track_beats_at(envelope, bpm / 2.0, sample_rate, hop_length)
    if slower.size < HARMONIC_MIN_BEATS:
        return bpm, beats
    slower_contrast, balance = chord_contrast(cumulative, slower)
    if balance >= HARMONIC_BALANCE and slower_contrast >= contrast + HARMONIC_MARGIN:
        return bpm / 2.0, slower
    return bpm, beats


def chord_paced_tempo(envelope: FloatArray, chroma: FloatArray, bpm: float, beats: IntArray,
                      sample_rate: int, hop_length: int) -> tuple[float, IntArray]:  # fmt: skip
    """`bpm` and its `beats` on `envelope` (the harmonic novelty of `chroma`), or the slower
    tempo (down to `PRIOR_MIN_BPM`, in steps of `CHORD_SCAN_STEP`) whose beats keep time with
    the chord changes best (`chord_contrast`), where they do so at least `CHORD_SCAN_RATIO`
    times as well and the chords change on nearly every one of them (`CHORD_SCAN_MIN_BALANCE`);
    beats tracked slower than `PRIOR_MIN_BPM` (a bar of a progression with a chord a bar,
    where the tracker allows twice the beat) do not count. Searched over the first
    `CHORD_SCAN_SECONDS` (the cost of a long file)."""
    frames = min(envelope.size, int(CHORD_SCAN_SECONDS * sample_rate / hop_length))
    window, cumulative = envelope[:frames], cumulative_chroma(chroma[:frames])
    contrast, _ = chord_contrast(cumulative, beats[beats < frames])
    best_contrast, best_bpm = CHORD_SCAN_RATIO * max(contrast, CHORD_SCAN_FLOOR), bpm
    candidate = bpm / CHORD_SCAN_STEP
    while candidate >= PRIOR_MIN_BPM:
        slower_beats = track_beats_at(window, candidate, sample_rate, hop_length)
        slower, balance = chord_contrast(cumulative, slower_beats)
        if (slower >= best_contrast and balance >= CHORD_SCAN_MIN_BALANCE
                and (tempo_from_intervals(slower_beats, sample_rate, hop_length) or 0.0)
                >= PRIOR_MIN_BPM):  # fmt: skip
            best_contrast, best_bpm = slower, candidate
        candidate /= CHORD_SCAN_STEP
    if best_bpm == bpm:
        return bpm, beats
    return best_bpm, track_beats_at(envelope, best_bpm, sample_rate, hop_length)


def percussiveness(broadband: FloatArray) -> float:
    """How drum-like the onsets are: the mean, over the 2 % of frames where it is highest, of
    the share of mel bands rising together (`broadband`, per frame): a drum hit rises across
    the spectrum at once, a note only at its partials."""
    if broadband.size == 0:
        return 0.0
    top = np.sort(broadband)[-max(1, broadband.size // 50):]
    return float(top.mean())


def _halfway_ratio(envelope: FloatArray, beat_frames: IntArray) -> float:
    """How loud the points halfway between beats are, nearly all of them (the strength three
    in four exceed), over the median strength on the beats."""
    on_beat = float(np.median(_strengths(envelope, beat_frames)))
    midpoints = (beat_frames[:-1] + beat_frames[1:]) // 2
    between = float(np.quantile(_strengths(envelope, midpoints), HALFWAY_QUANTILE))
    return between / on_beat if on_beat > 0 else 0.0


def drum_level(beat_frames: IntArray, bpm: float, clarity: float, low_onsets: FloatArray,
               power_flux: FloatArray, snare_onsets: FloatArray) -> float:  # fmt: skip
    """2.0, 0.5 or 1.0: the metrical level a drum groove's pattern asks for (see
    `BACKBEAT_RATIO` and `SNARE_PHASE_RATIO`), given the pulse clarity at `bpm`."""
    if beat_frames.size < 2 * MIN_BEATS:
        return 1.0
    if (2.0 * bpm <= MAX_DOUBLED_BPM and clarity >= DRUM_DOUBLE_MIN_CLARITY
            and _halfway_ratio(low_onsets, beat_frames) >= BACKBEAT_RATIO
            and _halfway_ratio(power_flux, beat_frames) >= BACKBEAT_POWER_RATIO
            and _quarter_ratio(low_onsets, beat_frames) < QUARTER_RATIO):
        return 2.0  # fmt: skip
    if clarity < DRUM_MIN_CLARITY or bpm / 2.0 < MIN_TEMPO_BPM:
        return 1.0
    snare = _strengths(snare_onsets, beat_frames)
    bars = snare.size // 4
    phases = np.sort(np.median(snare[: 4 * bars].reshape(bars, 4), axis=0))
    if phases[-2] < SNARE_PHASE_RATIO * phases[-1]:
        return 0.5
    if (_median_alternation(power_flux, beat_frames) < HALVE_RATIO
            and _median_alternation(low_onsets, beat_frames) < OFF_BEAT_LOW_RATIO):
        return 0.5  # fmt: skip
    return 1.0


def _quarter_ratio(envelope: FloatArray, beat_frames: IntArray) -> float:
    """Median strength a quarter and three quarters of the way between beats over the median
    strength on the beats and halfway between them."""
    before, after = beat_frames[:-1], beat_frames[1:]
    grid = np.concatenate((beat_frames, (before + after) // 2))
    quarters = np.concatenate(((3 * before + after) // 4, (before + 3 * after) // 4))
    on_grid = float(np.median(_strengths(envelope, grid)))
    return float(np.median(_strengths(envelope, quarters))) / on_grid if on_grid > 0 else 1.0


def _median_alternation(envelope: FloatArray, beat_frames: IntArray) -> float:
    """Median strength of the weaker of the two alternate sets of beats over the stronger's."""
    strengths = _strengths(envelope, beat_frames)
    medians = sorted((float(np.median(strengths[0::2])), float(np.median(strengths[1::2]))))
    return medians[0] / medians[1] if medians[1] > 0 else 1.0


def track_beats(
    onset_envelope: FloatArray,
    power_flux: FloatArray,
    sample_rate: int,
    hop_length: int,
    drums: float = 0.0,
    chroma: FloatArray | None = None,
    low_onsets: FloatArray | None = None,
    snare_onsets: FloatArray | None = None,
) -> BeatResult:
    """Tempo and beats of a whole file from its onset envelope and linear-power flux (both
    aligned per frame, see `align_onsets`); `drums`: the `percussiveness` of its onsets;
    `chroma`: its chroma per frame, whose `harmonic_novelty` is the envelope used instead when
    the pulse of the onsets is unclear and there are no drums (`harmonic_tempo`);
    `low_onsets`: the onset envelope of the bands under 4 kHz (aligned), for the backbeat
    check; `snare_onsets`: that of the bands from 1.5 to 5 kHz (aligned), for the snare's
    period."""
    no_beats = np.zeros(0, dtype=np.int64)
    if not np.any(onset_envelope > 0):
        return BeatResult(None, no_beats, "no onsets found: no tempo")
    bpm, clarity = first_tempo(onset_envelope, sample_rate, hop_length)
    beats = None
    may_double = clarity >= DOUBLE_MIN_CLARITY  # the onsets' clarity, not the novelty's
    if (chroma is not None and chroma.shape[0] == onset_envelope.size
            and clarity < LEGATO_MAX_CLARITY and drums < DRUM_PERCUSSIVENESS):  # fmt: skip
        novelty = harmonic_novelty(chroma)
        if np.any(novelty > 0):
            onset_envelope = novelty  # it cannot show beats shorter than its two half-windows
            fastest = novelty_fastest_bpm(sample_rate, hop_length)
            bpm, clarity = first_tempo(onset_envelope, sample_rate, hop_length, fastest)
            bpm, beats = harmonic_tempo(onset_envelope, chroma, bpm, sample_rate, hop_length)
            bpm, beats = chord_paced_tempo(onset_envelope, chroma, bpm, beats, sample_rate,
                                           hop_length)  # fmt: skip
    if beats is None:
        beats = track_beats_at(onset_envelope, bpm, sample_rate, hop_length)
    if beats.size >= MIN_BEATS:
        level = metrical_level(beats, power_flux, may_double)
        if (level == 1.0 and low_onsets is not None and snare_onsets is not None
                and drums >= DRUM_PERCUSSIVENESS):  # fmt: skip
            level = drum_level(beats, bpm, clarity, low_onsets, power_flux, snare_onsets)
        if level != 1.0 and MIN_TEMPO_BPM <= bpm * level <= MAX_DOUBLED_BPM:
            bpm *= level
            beats = track_beats_at(onset_envelope, bpm, sample_rate, hop_length)
    tempo = tempo_from_intervals(beats, sample_rate, hop_length)
    if tempo is None:
        return BeatResult(None, no_beats, f"only {beats.size} beats found: no tempo", clarity)
    return BeatResult(tempo, beats, None, clarity)
