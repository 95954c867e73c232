"""Chords beat by beat from the transcribed notes, and the key evidence in their order.

Counting pitch classes cannot tell some keys apart: a ii-V-I-vi loop's notes fit the key a
fifth up nearly as well as its own, and the notes of a minor loop are its relative major's.
The chords can: in A major, Bm-E-A-F#m are ii-V-I-vi, all diatonic, with a dominant resolving
to the tonic; in E major the Bm is foreign and nothing resolves.

Each beat (pairs of beats when they are under `MIN_SEGMENT_SECONDS`; blocks of
`notes.BLOCK_FRAMES` spectra without beats) is transcribed from its mean note spectrum
(`notes.transcribe`, one more pass over the file's segments) and matched against the 24 major
and minor triads (cosine of the chroma, plus the bass register's share on the chord's root),
smoothed by Viterbi with a cost per change. Per key the evidence is the share of the time in
chords diatonic to it (V major counts in minor, and v and VII as much as popular music's minor
loops use them or as little as a chorale does, by the harmonic rhythm: `COMMON_PRACTICE_MINOR`;
each chord weighted down linearly with its time
in the clip, to 1 - `EARLY_WEIGHT` at its end: the key a piece is annotated with is the one it
opens in, and a chorale modulates on the way, see `key`), and the share of chord changes that are a
major triad resolving down a fifth to its tonic (V-I, V-i), each counted by how long its
arrival is held against the median chord (up to `MAX_ARRIVAL_WEIGHT`: a phrase's cadence lands
on a held chord, a V/vi-vi on the way does not; measured in `key`), up to `MAX_CADENCE_SHARE`: a
two-chord vamp alternates them in every other change, and C-F-C-F is I-IV in C as often as
V-I in F (uncapped, four synthesized I-IV vamps of four came out in the key of their IV;
capped, two of four with drums still do; the corpus scored the same either way). Monophonic
music (a folk song's melody) matches triads poorly and makes no chords: the evidence is scaled
by `chordness`, from 0 at a mean match of `CHORDLESS_MATCH` to 1 at `CHORDAL_MATCH` (melodies
alone 0.52-0.65, grooves 0.62-0.83, four-part hymns 0.69-0.84).

The cost is one more transcription, of a segment per beat: `bench/analysis.py` (180 s, warm,
best of 3, two runs each, back to back under the bench lock) 0.314 / 0.324 s against 0.314 /
0.291 s before, 11.8x / 11.1x librosa's calls against 12.3x / 12.8x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from soundforge.analysis import notes

Float64Array = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MIN_SEGMENT_SECONDS = 0.3  # beats faster than this are taken in pairs
CHANGE_PENALTY = 0.15  # a chord change costs this much of a segment's match (smoothing)
BASS_ROOT_WEIGHT = 0.3  # the bass register's share on a chord's root adds this to its match
MAX_CADENCE_SHARE = 0.25  # a V-I in one change of four says it all (a I-IV vamp: V-I-V-I?)
MAX_ARRIVAL_WEIGHT = 2.0  # a resolution counts its arrival's length over the median chord's
EARLY_WEIGHT = 0.3  # a chord at the clip's end counts 1 - EARLY_WEIGHT of one at its start
CHORDLESS_MATCH = 0.55
CHORDAL_MATCH = 0.65
NO_CHORD = -1
# (root above tonic, minor?, weight): the chords diatonic to a key
MAJOR_DIATONIC = ((0, 0, 1.0), (2, 1, 1.0), (4, 1, 1.0), (5, 0, 1.0), (7, 0, 1.0), (9, 1, 1.0))
# ...in the minor of popular music (Aeolian, V borrowed): loops like i-VII-VI-VII and i-v-iv
MINOR_DIATONIC = ((0, 1, 1.0), (3, 0, 1.0), (5, 1, 1.0), (7, 1, 1.0), (7, 0, 1.0), (8, 0, 1.0),
                  (10, 0, 1.0))  # fmt: skip
# ...and in common-practice minor (a chorale's, a hymn's): the dominant is V, v passes by, and
# VII is the relative major's dominant (a modulation to it, not the key itself). With the
# Aeolian set every chord of a major key is diatonic to its relative minor too, so the minor
# reading lost nothing and a major hymn went to its relative minor, or to its ii or iii.
COMMON_PRACTICE_MINOR = ((0, 1, 1.0), (3, 0, 1.0), (5, 1, 1.0), (7, 1, 0.5), (7, 0, 1.0),
                         (8, 0, 1.0), (10, 0, 0.0))  # fmt: skip
# Which minor a piece is in is told by its harmonic rhythm, the share of segments (beats) where
# the chord changes: a loop holds a chord a bar (grooves with drums 0.00-0.71, nine in ten
# under 0.32; the legato progressions 0.19-0.50), common-practice harmony moves on nearly every
# beat (hymns 0.29-0.92, nine in ten over 0.52). The common-practice set's share rises from 0
# at `LOOP_RHYTHM` to 1 at `CHORALE_RHYTHM`.
LOOP_RHYTHM = 0.3
CHORALE_RHYTHM = 0.5


@dataclass(frozen=True)
class ChordSequence:
    """One chord per segment: 0-11 the major triads on C..B, 12-23 the minor ones, `NO_CHORD`
    where nothing sounds; each segment's length in spectra and its chord's match (0..1)."""

    chords: IntArray
    lengths: Float64Array
    matches: Float64Array


@dataclass(frozen=True)
class ChordEvidence:
    """Per key (the 24 of `key`, C..B major then minor): the share of the time in chords
    diatonic to it and the share of chord changes that resolve a dominant to its tonic; and
    how chordal the music is (0..1)."""

    diatonic: Float64Array
    cadences: Float64Array
    chordness: float


def _triads() -> Float64Array:
    """(24, 12) unit-norm triads: major on C..B, then minor."""
    templates = np.zeros((24, 12))
    for root in range(12):
        for quality, third in ((0, 4), (1, 3)):
            templates[12 * quality + root, [root, (root + third) % 12, (root + 7) % 12]] = 1.0
    normed: Float64Array = templates / np.sqrt(3.0)
    return normed


def _diatonic_table(minor_chords: tuple[tuple[int, int, float], ...]) -> Float64Array:
    """(24 keys, 24 chords): the weight of each chord diatonic to each key (0 elsewhere), the
    minor keys' chords from `minor_chords`."""
    table = np.zeros((24, 24))
    for key in range(24):
        for interval, minor, weight in MAJOR_DIATONIC if key < 12 else minor_chords:
            table[key, 12 * minor + (key + interval) % 12] = weight
    return table


TRIADS = _triads()
DIATONIC = _diatonic_table(MINOR_DIATONIC)
DIATONIC_COMMON_PRACTICE = _diatonic_table(COMMON_PRACTICE_MINOR)


def segment_starts(beat_times: npt.ArrayLike, frame_count: int, frame_seconds: float) -> IntArray:
    """First spectrum of each segment: a segment per beat (`beat_times` in seconds, spectra
    centred every `frame_seconds`), the spectra before the first beat one more; blocks of
    `notes.BLOCK_FRAMES` without beats."""
    beats = np.round(np.asarray(beat_times, dtype=np.float64) / frame_seconds)
    beats = np.unique(np.clip(beats, 0, frame_count).astype(np.int64))
    beats = beats[beats < frame_count]
    if beats.size < 2:
        return np.arange(0, frame_count, notes.BLOCK_FRAMES, dtype=np.int64)
    if float(np.median(np.diff(beats))) * frame_seconds < MIN_SEGMENT_SECONDS:
        beats = beats[::2]
    starts: IntArray = np.unique(np.concatenate(([0], beats))).astype(np.int64)
    return starts


def segment_notes(spectra: npt.NDArray[np.floating], starts: IntArray,
                  tuning: float) -> tuple[Float64Array, Float64Array, Float64Array]:  # fmt: skip
    """Per segment: the chroma of the notes transcribed from its mean spectrum, that of its
    bass register, and its length in spectra."""
    if spectra.shape[0] == 0 or starts.size == 0:
        return np.zeros((0, 12)), np.zeros((0, 12)), np.zeros(0)
    sums = np.add.reduceat(spectra, starts, axis=0, dtype=np.float64)
    lengths = np.diff(np.append(starts, spectra.shape[0])).astype(np.float64)
    activations = notes.transcribe(notes.whiten(sums / lengths[:, None]), tuning)
    pitches = np.arange(notes.NOTE_LOWEST, notes.NOTE_HIGHEST + 1)
    chroma, bass = np.zeros((activations.shape[0], 12)), np.zeros((activations.shape[0], 12))
    np.add.at(chroma.T, pitches % 12, activations.T)
    low = pitches <= notes.BASS_HIGHEST
    np.add.at(bass.T, pitches[low] % 12, activations[:, low].T)
    return chroma, bass, lengths


def recognise(chroma: Float64Array, bass: Float64Array, lengths: Float64Array) -> ChordSequence:
    """The triad of each segment: cosine with the 24 triads plus `BASS_ROOT_WEIGHT` times the
    bass register's share on the root, each segment weighted by its length, smoothed by
    Viterbi with `CHANGE_PENALTY` per change (a segment that does not sound: `NO_CHORD`)."""
    count = chroma.shape[0]
    if count == 0:
        return ChordSequence(np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
    norms = np.linalg.norm(chroma, axis=1)
    match = (chroma / np.maximum(norms, 1e-12)[:, None]) @ TRIADS.T  # (segments, 24)
    bass_share = bass / np.maximum(bass.sum(axis=1, keepdims=True), 1e-12)
    match += BASS_ROOT_WEIGHT * np.tile(bass_share, 2)
    sounding = norms > 1e-3 * max(float(norms.max()), 1e-12)
    score = match * np.where(sounding, lengths / max(float(lengths.mean()), 1e-12), 0.0)[:, None]
    total = score[0].copy()
    back = np.zeros((count, 24), np.int64)
    for index in range(1, count):
        best = int(np.argmax(total))
        move = total[best] - CHANGE_PENALTY
        back[index] = np.where(total >= move, np.arange(24), best)
        total = np.maximum(total, move) + score[index]
    path = np.zeros(count, np.int64)
    path[-1] = int(np.argmax(total))
    for index in range(count - 1, 0, -1):
        path[index - 1] = back[index, path[index]]
    matches = np.where(sounding, match[np.arange(count), path] / (1.0 + BASS_ROOT_WEIGHT), 0.0)
    path[~sounding] = NO_CHORD
    return ChordSequence(path, lengths.astype(np.float64), matches)


def evidence(sequence: ChordSequence) -> ChordEvidence | None:
    """The key evidence of a chord sequence; None when no segment sounds."""
    known = sequence.chords != NO_CHORD
    if not np.any(known):
        return None
    chords, lengths = sequence.chords[known], sequence.lengths[known]
    ends = np.cumsum(sequence.lengths)
    middles = (ends - sequence.lengths / 2.0)[known] / float(ends[-1])
    weights = lengths * sequence.matches[known] * (1.0 - EARLY_WEIGHT * middles)
    changes = np.flatnonzero(np.r_[True, np.diff(chords) != 0])
    rhythm = (changes.size - 1) / max(chords.size - 1, 1)  # harmonic rhythm: changes per beat
    common = min(max((rhythm - LOOP_RHYTHM) / (CHORALE_RHYTHM - LOOP_RHYTHM), 0.0), 1.0)
    table = (1.0 - common) * DIATONIC + common * DIATONIC_COMMON_PRACTICE
    diatonic = table[:, chords] @ weights / max(float(weights.sum()), 1e-12)
    runs = chords[changes]  # repeated chords merged
    held = np.add.reduceat(lengths, changes)  # each run's length
    previous, following = runs[:-1], runs[1:]
    resolving = (previous < 12) & (following % 12 == (previous + 5) % 12)  # major, down a fifth
    arrival = np.minimum(held[1:] / float(np.median(held)), MAX_ARRIVAL_WEIGHT)
    share = (np.bincount(following[resolving], weights=arrival[resolving], minlength=24)
             / max(runs.size - 1, 1))  # fmt: skip
    cadences = np.minimum(share, MAX_CADENCE_SHARE)
    mean_match = float(np.average(sequence.matches[known], weights=lengths))
    chordness = (mean_match - CHORDLESS_MATCH) / (CHORDAL_MATCH - CHORDLESS_MATCH)
    return ChordEvidence(diatonic, cadences, min(max(chordness, 0.0), 1.0))
