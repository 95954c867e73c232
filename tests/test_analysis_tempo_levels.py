"""The tempo of slow legato music read from its chord changes (`rhythm.harmonic_tempo`): a
chorale at 45-60 BPM whose inner voice takes an eighth-note passing tone on every beat, played
with soft attacks (the onsets carry no pulse), was read at twice its tempo, the eighth notes
as beats. Its chroma is built here directly: four voices, a chord per beat, the tenor moving a
step on the second eighth, and the flicker of swelling, beating partials over it."""

from __future__ import annotations

import numpy as np
import pytest

from soundforge.analysis.rhythm import (
    HARMONIC_MIN_BEATS,
    harmonic_novelty,
    harmonic_tempo,
    track_beats,
)

SR = 22050
HOP = 512
# bass, tenor, alto, soprano pitch classes, a chord per beat: I IV V I ii V vi V in C major
CHORDS = [(0, 7, 4, 0), (5, 9, 0, 5), (7, 2, 11, 7), (0, 4, 7, 0), (2, 5, 9, 2), (7, 11, 2, 7),
          (9, 4, 0, 9), (7, 11, 2, 7)]  # fmt: skip


def chorale_chroma(tempo: float, seconds: float, seed: int) -> np.ndarray:
    """Per frame, max-normalised chroma of the chorale at `tempo`."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * SR / HOP)
    beat = 60.0 / tempo * SR / HOP
    chroma = np.zeros((frames, 12), np.float32)
    for frame in range(frames):
        position = frame / beat
        voices = list(CHORDS[int(position) % len(CHORDS)])
        if position % 1.0 >= 0.5:
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


@pytest.mark.parametrize("tempo", [58.0, 70.0, 90.0])
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
