"""The tempo of slow legato music read from its chord changes (`rhythm.harmonic_tempo`): a
chorale at 45-60 BPM whose inner voice takes an eighth-note passing tone on every beat, played
with soft attacks (the onsets carry no pulse), was read at twice its tempo, the eighth notes
as beats; slow strings (attacks swelling over a third of a second) were read at 4:3 or 3:2 of
their tempo, which halving cannot mend (`rhythm.chord_paced_tempo`); a chorale at 116-160 BPM
was read at half its tempo, every other chord as the beat. Its chroma is built here
directly: four voices, a chord per beat, the tenor moving a step on the second eighth, and the
flicker of swelling, beating partials over it."""

from __future__ import annotations

import numpy as np
import pytest

from soundforge.analysis.rhythm import (
    HARMONIC_MIN_BEATS,
    chord_paced_tempo,
    harmonic_novelty,
    harmonic_tempo,
    tempo_from_intervals,
    track_beats,
    track_beats_at,
)

SR = 22050
HOP = 512
# bass, tenor, alto, soprano pitch classes, a chord per beat: I IV V I ii V vi V in C major
CHORDS = [(0, 7, 4, 0), (5, 9, 0, 5), (7, 2, 11, 7), (0, 4, 7, 0), (2, 5, 9, 2), (7, 11, 2, 7),
          (9, 4, 0, 9), (7, 11, 2, 7)]  # fmt: skip


def chorale_chroma(tempo: float, seconds: float, seed: int, beats_per_chord: int = 1) -> np.ndarray:
    """Per frame, max-normalised chroma of the chorale at `tempo` (with `beats_per_chord` 4, a
    progression with a chord a bar and no passing tones instead)."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * SR / HOP)
    beat = 60.0 / tempo * SR / HOP
    chroma = np.zeros((frames, 12), np.float32)
    for frame in range(frames):
        position = frame / beat
        voices = list(CHORDS[int(position) // beats_per_chord % len(CHORDS)])
        if position % 1.0 >= 0.5 and beats_per_chord == 1:
            voices[1] = (voices[1] + 2) % 12  # the tenor's passing tone
        for pitch_class in voices:
            chroma[frame, pitch_class] += 1.0
    chroma += rng.uniform(0.0, 1.0, chroma.shape).astype(np.float32)
    normalised: np.ndarray = chroma / chroma.max(axis=1, keepdims=True)
    return normalised


def _tempo(tempo: float, seed: int) -> float | None:
    chroma = chorale_chroma(tempo, 20.0, seed)
    rng = np.random.default_rng(seed + 100)
    flat = np.asarray(rng.uniform(0.8, 1.2, chroma.shape[0]), np.float32)  # no onset pulse
    return track_beats(flat, flat.copy(), SR, HOP, drums=0.1, chroma=chroma).tempo


@pytest.mark.parametrize("tempo", [46.0, 50.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_slow_chorale_with_passing_eighths_is_not_read_at_twice_its_tempo(
    tempo: float, seed: int
) -> None:
    assert _tempo(tempo, seed) == pytest.approx(tempo, rel=0.04)


@pytest.mark.parametrize("tempo", [120.0, 132.0, 150.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_fast_chorale_is_not_read_at_half_its_tempo(tempo: float, seed: int) -> None:
    # the 80 BPM prior read every other chord as the beat from 116 BPM up (120 -> 60); the
    # chords change as often halfway between those beats as on them
    assert _tempo(tempo, seed) == pytest.approx(tempo, rel=0.04)


@pytest.mark.parametrize("tempo", [58.0, 70.0, 90.0, 104.0])
def test_a_chorale_at_its_tempo_keeps_it(tempo: float) -> None:
    assert _tempo(tempo, 0) == pytest.approx(tempo, rel=0.04)


def test_a_clip_too_short_for_enough_slower_beats_keeps_its_first_reading() -> None:
    # 20 s of the 46 BPM chorale read at 92 is halved; 10 s hold 7 of its slow beats, too few
    # to overrule the reading (short hymn excerpts at 81-103 BPM were halved to 40-51)
    chroma = chorale_chroma(46.0, 20.0, 0)
    novelty = harmonic_novelty(chroma)
    long_bpm, _ = harmonic_tempo(novelty, chroma, 92.0, SR, HOP)
    assert long_bpm == pytest.approx(46.0)
    short = chroma[: int(10.0 * SR / HOP)]
    short_bpm, beats = harmonic_tempo(harmonic_novelty(short), short, 92.0, SR, HOP)
    assert short_bpm == pytest.approx(92.0) and beats.size >= 10
    assert HARMONIC_MIN_BEATS > 7


def _paced(tempo: float, reading: float, beats_per_chord: int = 1) -> float | None:
    """The tempo of the chorale at `tempo`, first read at `reading`, after `chord_paced_tempo`."""
    chroma = chorale_chroma(tempo, 20.0, 0, beats_per_chord)
    novelty = harmonic_novelty(chroma)
    beats = track_beats_at(novelty, reading, SR, HOP)
    _, paced = chord_paced_tempo(novelty, chroma, reading, beats, SR, HOP)
    return tempo_from_intervals(paced, SR, HOP)


@pytest.mark.parametrize("tempo", [46.0, 54.0, 62.0])
@pytest.mark.parametrize("ratio", [4.0 / 3.0, 1.5])
def test_a_slow_chorale_read_at_four_thirds_or_three_halves_is_paced_by_its_chords(
    tempo: float, ratio: float
) -> None:
    # beats at 4:3 or 3:2 of the tempo drift across the chord changes; at the tempo they keep
    # time with them
    assert _paced(tempo, tempo * ratio) == pytest.approx(tempo, rel=0.04)


@pytest.mark.parametrize("tempo", [58.0, 84.0, 100.0])
def test_a_chorale_read_at_its_tempo_is_not_slowed_by_its_chords(tempo: float) -> None:
    assert _paced(tempo, tempo) == pytest.approx(tempo, rel=0.04)


@pytest.mark.parametrize("tempo", [100.0, 140.0, 150.0])
def test_a_progression_with_a_chord_a_bar_is_not_slowed_to_every_other_beat(tempo: float) -> None:
    # every other beat keeps time with its chord changes twice as well, but the chords do not
    # change on every one of those slower beats
    assert _paced(tempo, tempo, beats_per_chord=4) == pytest.approx(tempo, rel=0.04)


@pytest.mark.parametrize("tempo", [60.0, 78.0])
def test_a_chorale_read_from_its_chords_is_not_doubled_by_its_eighth_notes(tempo: float) -> None:
    # sharp chord changes make the harmonic novelty's pulse clear (clarity 10+, as drums), and
    # eighth notes as loud as the beats then doubled it: a string quartet hymn at 78 read 156
    chroma = chorale_chroma(tempo, 20.0, 0) ** 4
    flat = np.asarray(np.random.default_rng(7).uniform(0.8, 1.2, chroma.shape[0]), np.float32)
    eighths = np.zeros(chroma.shape[0], np.float32)
    eighths[np.round(np.arange(0, chroma.shape[0] - 1, 30.0 / tempo * SR / HOP)).astype(int)] = 1
    result = track_beats(flat, eighths, SR, HOP, drums=0.1, chroma=chroma)
    assert result.clarity > 5.0
    assert result.tempo == pytest.approx(tempo, rel=0.04)
