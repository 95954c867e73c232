"""Musical key from the file's note chroma (`notes`: transcribed notes, not raw spectra, so
overtones do not pull the key towards the dominant), by correlation with 24 rotated key profiles.

Profile and note-template decay chosen by measurement (2026-12-01), every profile scored on the
same chroma, mir_eval weighted score (MIREX), on 70 FluidSynth renderings of real compositions
and progressions through many GM instruments (`bench/analysis_corpus.py`) and 48 synthesized
progressions (`tests/audio_synth.py`):

    decay 0.8, no bass weight   drums   no drums   grid
    krumhansl                   0.826    0.889     1.000   <- default
    edma                        0.794    0.866     1.000
    shaath                      0.797    0.837     1.000
    temperley                   0.774    0.829     0.883  (tonic-light minor loops -> major)
    kostka-payne                0.749    0.874     0.667
    bellman-budge               0.643    0.814     0.487

Decay 0.7 / 0.9 with Krumhansl: drums 0.757 / 0.840, no drums 0.866 / 0.883, grid 1.0 both.
Adding the bass register's chroma (weight 0.2) lowered every profile (0.76 / 0.87 / 1.0 here),
so `BASS_WEIGHT` is 0. Pearson correlation as in Krumhansl's algorithm; the confidence is the
winning correlation clipped to 0..1.

The key a score is annotated with is its opening (and closing) key; a chorale or a hymn
modulates in its middle phrases, and a loop in the relative minor sounds major when taken as a
whole. So the opening (`OPENING_SECONDS` from the first sounding block) is correlated too and
added with `OPENING_WEIGHT`, and the share of the bass register's notes on each key's tonic with
`BASS_TONIC_WEIGHT`. Chosen on the tuning half of the 150-clip corpus (the second set adds
four-part hymns and minor-loop grooves), every class also better on the held-back half (MIREX,
no drums / hymns / drums):

                               tuning                  validation
    global chroma only         0.820 / 0.855 / 0.719    0.940 / 0.850 / 0.787
    + opening 2 s x 0.45       0.853 / 0.965 / 0.841    0.975 / 0.929 / 0.860
      (+ bass tonic x 0.1)
    ...among keys within 0.1   0.853 / 0.940 / 0.822    0.975 / 0.929 / 0.870

Openings of 3 / 5 / 8 s scored lower on validation; a larger bass weight raised some classes
and lowered others. The opening is only right when the clip starts where the piece does: with
the first 3 s of every clip cut off, it scored 0.573 / 0.865 / 0.584 (tuning) against 0.820 /
0.830 / 0.668 for the whole file alone. So it only chooses among the keys whose whole-file
correlation is within `CANDIDATE_MARGIN` of the best (the relative, the neighbours a fifth
away), and it counts fully only for the keys whose tonic is the opening's main bass note (a
tonic region; `OFF_TONIC_OPENING` times for the others): a clip cut mid-loop opens on any chord
of the loop. The bass is read from the harmonic part of the spectra (`notes`: a kick drum
leaks into the bass register otherwise). Measured 2026-12-01 with `bench/analysis_accuracy.py`
(`--skip-seconds 3` for the cut clips), MIREX, no drums / hymns / drums:

                               tuning                  validation
    opening among keys in 0.1  0.903 / 0.940 / 0.822    0.948 / 0.929 / 0.870
    + opening bass on tonic    0.889 / 0.940 / 0.835    0.948 / 0.929 / 0.903
    first 3 s cut, before      0.797 / 0.865 / 0.641    0.775 / 0.775 / 0.517
    first 3 s cut, now         0.797 / 0.865 / 0.630    0.777 / 0.786 / 0.577
    librosa, whole clips       0.797 / 0.780 / 0.751    0.833 / 0.843 / 0.693
    librosa, first 3 s cut     0.760 / 0.755 / 0.676    0.690 / 0.714 / 0.630

What drums do to the key was measured by rendering the 32 grooves of the second set again
without their drums: 0.855 / 0.758 (tuning / validation) without, 0.805 / 0.842 with; the errors
were the loops' own (a ii-V-I-vi loop's notes fit the dominant's key, i-VI-III-VII and I-vi-IV-V
share their notes), not leaked drums. Separating the harmonic part before the chord chroma too
(`notes.harmonic_part` on every block, without the bass gate) did not help: drums 0.849 /
0.837, lower on validation; median widths 3-9 frames and 7-31 bins all scored 0.78-0.84 there.

Counting pitch classes cannot solve those; the order of the chords can (`chords`: a triad per
beat from the notes and the bass). Given the chords, `DIATONIC_WEIGHT` times the share of the
time in chords diatonic to a key and `CADENCE_WEIGHT` times the share of chord changes that
resolve its dominant to its tonic are added, times how chordal the music is (a melody alone
makes no chords), among the keys within `CHORD_MARGIN` of the best whole-file correlation.
Chosen on the tuning half, whole clips and clips cut 3 s in together; measured 2026-12-01 with
`bench/analysis_accuracy.py` (`--skip-seconds 3`), MIREX, no drums / hymns / drums:

                               tuning                  validation
    before the chords          0.889 / 0.940 / 0.835    0.948 / 0.929 / 0.903
    + chords                   0.960 / 1.000 / 0.954    0.938 / 0.929 / 0.960
    first 3 s cut, before      0.797 / 0.865 / 0.630    0.777 / 0.786 / 0.577
    first 3 s cut, + chords    0.897 / 0.965 / 0.846    0.933 / 0.939 / 0.867
    librosa, whole clips       0.797 / 0.780 / 0.751    0.833 / 0.843 / 0.693
    librosa, first 3 s cut     0.760 / 0.755 / 0.676    0.690 / 0.714 / 0.630

The synthesized grid stays at 1.000 (drums and none). On a grid of 0.4-2.5 for each weight
and margins 0.2-0.5 the tuning half's best settings lie on a plateau (mean of the six tuning
classes 0.93-0.94 against 0.826 before); 1.6 / 1.2 with margin 0.3 is inside it (0.937; 1.2 /
1.2: 0.935, 2.0 / 1.2: 0.942 but two more validation misses without drums). Below a diatonic
weight of 1.6 a minor loop heard from its iv chord (a test) went to the iv's minor key: the
opening pulls there, and at margin 0.3 that key is a candidate; its loop's IV (major) is no
diatonic chord of it. The one validation clip lost without drums is a melody-only folk song
(F major -> G minor). Tried and dropped, on the tuning half: weighting the chords by
function (I 1, IV and V 0.6, ii and vi 0.5, iii 0.4: mean 0.86 at best); the first and
last chord as the tonic (no gain on whole clips, a loss on cut ones, whose first chord is any
chord of the loop); the tonic chord's share of the time (no gain); weights fitted by a softmax
over the keys (the chords outweighed the opening and validation fell, drums 0.83-0.86). Chords
from the fixed half-second blocks instead of beats scored the same on the tuning half (0.936 vs
0.934, mean of the six) and lower on validation (cut clips 0.881 / 0.850 vs 0.933 / 0.867 no
drums / drums); the segments' bass from their harmonic part (a second transcription) scored the
same as from the one transcription kept. The chordness scale (mean triad match 0.55..0.65)
changed nothing on the tuning half and was added for the validation half's melody-only folk
songs (an unaccompanied line makes no chords; without the scale two of them went to a
neighbouring key at 1.2 / 1.2).

A hymn's first chord is its tonic, but its first two seconds hold two or three chords, and the
loudest or longest bass among them was often the IV's (an E major hymn opening E-A-F#m went to
A major, a D# minor one opening i-iv to G# minor). So the opening's bass weighs each block
`OPENING_BASS_DECAY` times the one before (`opening_bass`: the first chord leads), and a V-I
counts its arrival's length (`chords`: a phrase's cadence lands on a held chord). Measured
2026-12-01 (tuning / validation, MIREX; a third corpus set added for it: 60 hymns with
secondary dominants, V/V, V/vi..., as chorales have):

                                hymns          chromatic hymns   drums          no drums, others
    before                      1.000 / 0.929  0.910 / 0.873     0.954 / 0.960  0.960 / 0.921
    first chord's bass + held   1.000 / 0.964  0.917 / 0.920     0.981 / 0.960  0.960 / 0.942
    first 3 s cut, before       0.965 / 0.939  -                 0.846 / 0.867  0.897 / 0.933
    first 3 s cut, now          0.940 / 0.939  -                 0.865 / 0.857  0.883 / 0.933

(no drums, others: the first corpus set's compositions and progressions with the hymns of the
second, as before.) Decays 0.3-0.5 scored alike; 0 (the first block alone) lost a validation
drum groove. The synthesized grid stays 1.000. Counting a secondary dominant
as belonging to the key of the chord it resolves to raised the chromatic hymns further (0.95)
but lowered the cut grooves (0.70-0.82: in a I-IV vamp every I is a V/IV), so it was left out.

A chorale modulates: a middle phrase turns on a pivot chord to the dominant (or the relative
major, or the minor dominant) and cadences there, and the last phrase comes home; an excerpt may
stop inside the modulation. A fourth corpus set measures it: 48 modulating hymns
(`bench/hymns.py` `write_modulating_hymn`), a third ending inside the clip on the home cadence,
a third going on past the clip, a third excerpts of their first two phrases that end at rest on
the other key's cadence. The key they are annotated with is the one they open in, so the chords'
diatonic share weighs each chord down linearly with its time in the clip (`chords.EARLY_WEIGHT`:
0.3, a chord at the end counts 0.7 of one at the start). Measured 2026-12-02 with
`bench/analysis_accuracy.py`, MIREX tuning / validation:

                               modulating hymns   no drums (all)   drums
    whole clips, before        0.940 / 0.982      0.940 / 0.946    0.981 / 0.960
    whole clips, now           0.940 / 0.982      0.940 / 0.946    0.981 / 0.960
    first 3 s cut, before      0.680 / 0.850      0.809 / 0.880    0.865 / 0.857
    first 3 s cut, now         0.715 / 0.850      0.818 / 0.880    0.873 / 0.857
    librosa (modulating hymns) whole 0.690 / 0.629, first 3 s cut 0.605 / 0.586

The hymns, the chromatic hymns and the grid are unchanged. Weights 0.2-0.3 scored alike; 0.4-0.5
lost a cut chromatic hymn on the tuning half; weighting the cadences by time too lost cut drum
grooves. On the first version of the set (no excerpts; the rest as now) the weight won a cut
validation clip, and on its hymns cut after their second phrase (all ending at rest in the
other key) one validation clip (0.886 -> 0.904).

Tried and dropped: the last chord's root as the tonic when the music stops before the clip does
(its last block under `SOUNDING` of the median's; either mode, for a minor piece's major final
chord). It put every hymn that ends on its home cadence right (1.000 both halves, cut or not),
but an excerpt that stops at rest after a phrase in the other key then took that key: the
excerpts 0.850 / 0.938 -> 0.600 / 0.550, the set 0.940 / 0.982 -> 0.840 / 0.871 (whole clips).
Counting the last chord only where its root is the opening's bass (the piece ends where it
began) still lost an excerpt whose opening bass was misread (0.915 / 0.982). A clip's end says
nothing of its key unless the piece is known to end there. (A 2 s fade-out seldom reaches the
rest level: with every clip faded so, 3 more of 258 ended at rest.) The misses left are
excerpts that stop inside a modulation after a half cadence on the dominant (V-I into it
twice), and clips cut so that they open on a chord other than the tonic.

In the minor of popular music (Aeolian: i-VII-VI-VII, i-v-iv loops) every chord of the relative
major key is diatonic too, so the chords' diatonic share never told a major hymn from its
relative minor: most key misses left without drums were a major hymn read as its vi (G major
-> E minor), some as its ii or iii. A chorale's minor is the common-practice one: V, v only in
passing, VII the relative major's dominant. So v counts half and VII not at all
(`chords.COMMON_PRACTICE_MINOR`) in music whose chord changes on nearly every beat, and the
loop's set stays for music that holds a chord a bar (`chords.LOOP_RHYTHM`,
`chords.CHORALE_RHYTHM`: by the harmonic rhythm, not by the drums, since a piano hymn's onsets
are as percussive as a kit's). Measured 2026-12-02 (session 26), MIREX tuning / validation,
without drums / drums (FluidR3, 401 clips; TimGM6mb, 402, nothing tuned on it):

                                 FluidR3                        TimGM6mb
    before                       0.940 / 0.947, 0.961 / 0.913   0.933 / 0.949, 0.941 / 0.983
    common-practice minor        0.957 / 0.971, 0.961 / 0.913   0.957 / 0.987, 0.954 / 0.983
    first 3 s cut, before        0.880 / 0.885, 0.869 / 0.813
    first 3 s cut, now           0.909 / 0.899, 0.869 / 0.835

Through MuseScore_General_Lite (402 clips, rendered after the weights were set): 0.948 / 0.939
-> 0.970 / 0.968 without drums, 0.968 / 0.810 -> 0.949 / 0.810 with (an E minor groove whose
chord changes on most beats went to G major; 12 misses mended, 2 made in all). On 96 hymns
rendered for the tempo (40-160 BPM, a different seed, not committed) 0.921 ->
0.979 (FluidR3), 1.000 both (TimGM6mb); the synthesized grid stays 1.000. Over the corpus
in both fonts, 26 misses were mended (and a song's E major -> F# minor became B major) and 4
made: minor hymns with secondary dominants or a modulation read as their relative major or
dominant minor (their VII is the relative major's V). The weights were chosen on
the tuning halves, where v 0 or 0.5 and VII 0 or 0.5 scored alike (0.957-0.961), and VII at
0.7 or more lost; a harmonic-rhythm switch from 0.35 to 0.45 scored the same. Switching the
set by the onsets' percussiveness (drums) instead kept the piano and drawbar-organ hymns on
the loop's set (0.952 / 0.959 on FluidR3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from soundforge.analysis.chords import ChordEvidence

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

# Each profile: (major, minor), twelve weights from the tonic upwards.
KEY_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    # Krumhansl & Kessler (1982), probe-tone ratings.
    "krumhansl": (
        (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
        (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
    ),
    # Temperley (1999), "What's key for key?".
    "temperley": (
        (5.0, 2.0, 3.5, 2.0, 4.5, 4.0, 2.0, 4.5, 2.0, 3.5, 1.5, 4.0),
        (5.0, 2.0, 3.5, 4.5, 2.0, 4.0, 2.0, 4.5, 3.5, 2.0, 1.5, 4.0),
    ),
    # Temperley (2007), Kostka-Payne corpus frequencies.
    "kostka-payne": (
        (0.748, 0.060, 0.488, 0.082, 0.670, 0.460, 0.096, 0.715, 0.104, 0.366, 0.057, 0.400),
        (0.712, 0.084, 0.474, 0.618, 0.049, 0.460, 0.105, 0.747, 0.404, 0.067, 0.133, 0.330),
    ),
    # Faraldo et al. (2016), EDM-derived "edma" profile as shipped in Essentia.
    "edma": (
        (1.0, 0.2875, 0.502, 0.4048, 0.605, 0.5614, 0.3205, 0.7966, 0.3159, 0.4506, 0.4202, 0.3889),
        (
            1.0,
            0.3096,
            0.4415,
            0.5827,
            0.3262,
            0.4948,
            0.2889,
            0.7804,
            0.4328,
            0.2903,
            0.5331,
            0.3217,
        ),
    ),
    # Bellman (2005), chord-based frequencies from Budge (1943).
    "bellman-budge": (
        (16.80, 0.86, 12.95, 1.41, 13.49, 11.93, 1.25, 20.28, 1.80, 8.04, 0.62, 10.57),
        (18.16, 0.69, 12.99, 13.34, 1.07, 11.15, 1.38, 21.07, 7.49, 1.53, 0.92, 10.21),
    ),
    # Sha'ath (2011), libKeyFinder.
    "shaath": (
        (6.6, 2.0, 3.5, 2.3, 4.6, 4.0, 2.5, 5.2, 2.4, 3.7, 2.3, 3.4),
        (6.5, 2.7, 3.5, 5.4, 2.6, 3.5, 2.5, 5.2, 4.0, 2.7, 4.3, 3.2),
    ),
}
DEFAULT_PROFILE = "krumhansl"
BASS_WEIGHT = 0.0
OPENING_SECONDS = 2.0
OPENING_WEIGHT = 0.45
BASS_TONIC_WEIGHT = 0.1
CANDIDATE_MARGIN = 0.1  # the opening and bass choose only among keys the whole file nearly fits
OFF_TONIC_OPENING = 0.5  # the opening's weight for keys whose tonic is not its main bass note
OPENING_BASS_DECAY = 0.4  # each block of the opening's bass counts this much of the one before
DIATONIC_WEIGHT = 1.6  # times the share of the time in chords diatonic to the key
CADENCE_WEIGHT = 1.2  # times the share of chord changes resolving the key's dominant to its tonic
CHORD_MARGIN = 0.3  # with chords known, they choose among keys the whole file fits this well
SOUNDING = 0.1  # a block sounds when its notes carry a tenth of the median block's energy


@dataclass(frozen=True)
class KeyEstimate:
    """A key name like "F# minor" (sharps spelling) and its correlation, clipped to 0..1."""

    name: str
    confidence: float


def _key_templates(profile: str) -> tuple[npt.NDArray[np.float64], list[str]]:
    """24 z-scored templates (12 major keys, then 12 minor) and their names."""
    templates, names = [], []
    for mode, weights in zip(("major", "minor"), KEY_PROFILES[profile], strict=True):
        base = np.asarray(weights, dtype=np.float64)
        base = (base - base.mean()) / base.std()
        for tonic in range(12):
            templates.append(np.roll(base, tonic))
            names.append(f"{PITCH_CLASSES[tonic]} {mode}")
    return np.stack(templates), names


def _correlations(chroma: npt.ArrayLike, profile: str) -> npt.NDArray[np.float64] | None:
    """Pearson correlation with the 24 keys (`_key_templates` order); None when flat."""
    values = np.asarray(chroma, dtype=np.float64)
    spread = values.std()
    if values.shape != (12,) or not np.isfinite(spread) or spread == 0:
        return None
    templates, _ = _key_templates(profile)
    correlations: npt.NDArray[np.float64] = templates @ ((values - values.mean()) / spread) / 12.0
    return correlations


def key_correlations(mean_chroma: npt.ArrayLike,
                     profile: str = DEFAULT_PROFILE) -> dict[str, float]:  # fmt: skip
    """Pearson correlation of a 12-bin chroma vector with every key, by key name."""
    correlations = _correlations(mean_chroma, profile)
    if correlations is None:
        return {}
    _, names = _key_templates(profile)
    return dict(zip(names, (float(value) for value in correlations), strict=True))


def opening_span(chroma: npt.NDArray[np.float64], block_seconds: float) -> slice:
    """The blocks of the first `OPENING_SECONDS` from the first block that sounds."""
    if chroma.size == 0:
        return slice(0, 0)
    energy = chroma.sum(axis=1)
    sounding = np.flatnonzero(energy > SOUNDING * float(np.median(energy)))
    if sounding.size == 0:
        return slice(0, 0)
    first = int(sounding[0])
    return slice(first, first + max(1, round(OPENING_SECONDS / block_seconds)))


def key_profile_input(chroma: npt.NDArray[np.float64], bass_chroma: npt.NDArray[np.float64],
                      bass_weight: float = BASS_WEIGHT) -> list[float]:  # fmt: skip
    """The 12 values the key profiles are matched against: the file's pitch-class energy of
    the transcribed notes (each block's chroma summed), plus `bass_weight` times that of the
    bass register, each normalised to sum 1 (all zeros for silence)."""
    total = np.zeros(12)
    for values, weight in ((chroma, 1.0), (bass_chroma, bass_weight)):
        summed = values.sum(axis=0) if values.size else np.zeros(12)
        if summed.sum() > 0:
            total += weight * summed / summed.sum()
    if total.sum() > 0:
        total /= total.sum()
    return [round(float(value), 5) for value in total]


def opening_bass(bass_blocks: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The opening's bass chroma, each block weighted `OPENING_BASS_DECAY` times the one before:
    the first chord's bass decides which keys the opening counts fully for."""
    weights = OPENING_BASS_DECAY ** np.arange(bass_blocks.shape[0])
    summed: npt.NDArray[np.float64] = (bass_blocks * weights[:, None]).sum(axis=0)
    return summed


def _tonic_gate(opening_bass: npt.ArrayLike | None) -> npt.NDArray[np.float64]:
    """Per key: 1 where its tonic is the opening's strongest bass pitch class (or nothing is
    known of the bass), `OFF_TONIC_OPENING` elsewhere."""
    bass = np.asarray(opening_bass if opening_bass is not None else np.zeros(12), np.float64)
    if bass.shape != (12,) or bass.max() <= 0:
        return np.ones(24)
    return np.tile(np.where(bass >= bass.max(), 1.0, OFF_TONIC_OPENING), 2)


def estimate_key(mean_chroma: npt.ArrayLike, profile: str = DEFAULT_PROFILE,
                 opening_chroma: npt.ArrayLike | None = None,
                 bass_chroma: npt.ArrayLike | None = None,
                 opening_bass: npt.ArrayLike | None = None,
                 chords: ChordEvidence | None = None) -> KeyEstimate | None:  # fmt: skip
    """The best key, or None for a flat (toneless or silent) chroma vector: the correlation
    of the whole file's chroma, plus `OPENING_WEIGHT` times that of the opening's and
    `BASS_TONIC_WEIGHT` times the bass register's share on the tonic, when given. Given the
    opening's bass chroma, the opening counts fully only for keys whose tonic is its main bass
    note (a tonic region), `OFF_TONIC_OPENING` times for the others. Given the chords
    (`chords.evidence`), their diatonic share and cadences count too (`DIATONIC_WEIGHT`,
    `CADENCE_WEIGHT`, times their chordness), among the keys within `CHORD_MARGIN` of the best
    correlation instead of `CANDIDATE_MARGIN`. The confidence is the whole file's correlation
    with that key, clipped to 0..1."""
    correlations = _correlations(mean_chroma, profile)
    if correlations is None:
        return None
    scores = correlations.copy()
    opening_correlations = (_correlations(opening_chroma, profile)
                            if opening_chroma is not None else None)  # fmt: skip
    if opening_correlations is not None:
        scores += OPENING_WEIGHT * opening_correlations * _tonic_gate(opening_bass)
    bass = np.asarray(bass_chroma if bass_chroma is not None else np.zeros(12), np.float64)
    if bass.shape == (12,) and bass.sum() > 0:
        scores += BASS_TONIC_WEIGHT * np.tile(bass / bass.sum(), 2)
    margin = CANDIDATE_MARGIN
    if chords is not None:
        scores += chords.chordness * (DIATONIC_WEIGHT * chords.diatonic
                                      + CADENCE_WEIGHT * chords.cadences)  # fmt: skip
        margin = CHORD_MARGIN
    scores[correlations < correlations.max() - margin] = -np.inf
    _, names = _key_templates(profile)
    best = int(np.argmax(scores))
    return KeyEstimate(names[best], min(max(float(correlations[best]), 0.0), 1.0))
