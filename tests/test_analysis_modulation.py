"""The key of music that modulates (`soundforge.analysis.key`, `chords`): a chorale's middle
phrases cadence in its dominant or relative key and its last phrase comes home; the key it is
annotated with is the one it opens (and closes) in, also for an excerpt that stops in the middle
of the modulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundforge.analysis import analyze, chords
from tests.audio_synth import PITCH_CLASSES, chord_sequence, write_mono

SR = 22050
TEMPO = 90.0
# Four voices, bass first (MIDI notes), in C major and A minor and their related keys.
VOICINGS: dict[str, tuple[int, ...]] = {
    "C": (48, 55, 64, 72), "F": (41, 57, 65, 72), "Dm": (50, 57, 65, 69), "G": (43, 55, 62, 71),
    "Am": (45, 57, 64, 72), "D": (50, 54, 62, 69), "Em": (40, 55, 64, 71), "E": (40, 56, 64, 71),
    "B": (47, 51, 59, 66),
    # baroque figures: a Picardy third, dominant sevenths, 4-3 suspensions over the dominant
    "A": (45, 57, 61, 69), "E7": (40, 56, 62, 71), "Esus": (40, 57, 64, 71),
    "G7": (43, 53, 62, 71), "Gsus": (43, 55, 60, 72),
}  # fmt: skip
# Phrases of a chord a beat, the cadence chord held two.
HOME_IN_C = ["C", "F", "Dm", "G", "C", "Am", "G", "C", "C"]
TO_THE_DOMINANT = ["C", "Am", "D", "G", "Em", "Am", "D", "G", "G"]  # Am is ii of G: the pivot
BACK_HOME_IN_C = ["G", "C", "F", "Dm", "G", "C", "F", "G", "C", "C"]
HOME_IN_A_MINOR = ["Am", "Dm", "E", "Am", "F", "Dm", "E", "Am", "Am"]
TO_THE_RELATIVE = ["Am", "F", "G", "C", "Dm", "G", "C", "C"]  # F is VI of A minor, IV of C
BACK_HOME_IN_A_MINOR = ["C", "Dm", "E", "Am", "F", "Dm", "E", "Am", "Am"]
TO_THE_MINOR_DOMINANT = ["Am", "Dm", "Em", "B", "Em", "Am", "B", "Em", "Em"]  # Am: iv of Em


def _piece(phrases: list[list[str]], semitones: int, timbre: str) -> np.ndarray:
    """The phrases one after the other, a chord per beat at `TEMPO` (a held chord repeated)."""
    names = [name for phrase in phrases for name in phrase]
    voiced = [tuple(note + semitones for note in VOICINGS[name]) for name in names]
    return chord_sequence(voiced, 1.0, TEMPO, len(voiced) * 60.0 / TEMPO, SR, timbre)


def _key(tonic: str, semitones: int, mode: str) -> str:
    return f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic) + semitones) % 12]} {mode}"


@pytest.mark.parametrize(("semitones", "timbre"), [(0, "organ"), (2, "strings"), (-3, "piano")])
def test_a_piece_that_cadences_in_its_dominant_and_comes_home_is_in_its_home_key(
    tmp_path: Path, semitones: int, timbre: str
) -> None:
    mix = _piece([HOME_IN_C, TO_THE_DOMINANT, BACK_HOME_IN_C], semitones, timbre)
    report = analyze(write_mono(tmp_path / "to_the_dominant.wav", mix, SR))
    assert report.key == _key("C", semitones, "major")


@pytest.mark.parametrize(("semitones", "timbre"), [(0, "organ"), (5, "strings")])
def test_an_excerpt_that_stops_on_the_dominants_cadence_is_in_its_home_key(
    tmp_path: Path, semitones: int, timbre: str
) -> None:
    mix = _piece([HOME_IN_C, TO_THE_DOMINANT], semitones, timbre)
    report = analyze(write_mono(tmp_path / "excerpt.wav", mix, SR))
    assert report.key == _key("C", semitones, "major")


@pytest.mark.parametrize(("phrases", "semitones"), [
    ([HOME_IN_A_MINOR, TO_THE_RELATIVE, BACK_HOME_IN_A_MINOR], 0),
    ([HOME_IN_A_MINOR, TO_THE_RELATIVE, BACK_HOME_IN_A_MINOR], 6),
    ([HOME_IN_A_MINOR, TO_THE_MINOR_DOMINANT], -1),
])  # fmt: skip
def test_a_minor_piece_that_cadences_in_a_related_key_is_in_its_minor_key(
    tmp_path: Path, phrases: list[list[str]], semitones: int
) -> None:
    mix = _piece(phrases, semitones, "organ")
    report = analyze(write_mono(tmp_path / "minor.wav", mix, SR))
    assert report.key == _key("A", semitones, "minor")


@pytest.mark.parametrize(("phrases", "tonic", "mode", "semitones", "timbre"), [
    ([["Am", "Dm", "Esus", "E7", "Am", "F", "Dm", "Esus", "E", "A", "A"]], "A", "minor", 3,
     "organ"),
    ([[*HOME_IN_A_MINOR[:-2], "A", "A"], TO_THE_RELATIVE, [*BACK_HOME_IN_A_MINOR[:-2], "A", "A"]],
     "A", "minor", -4, "strings"),
    ([["C", "F", "Dm", "Gsus", "G7", "C", "Am", "Gsus", "G", "C", "C"]], "C", "major", 3,
     "piano"),
])  # fmt: skip
def test_a_chorales_suspensions_sevenths_and_picardy_third_keep_its_key(
    tmp_path: Path, phrases: list[list[str]], tonic: str, mode: str, semitones: int, timbre: str
) -> None:
    # a minor chorale's cadences end on a major tonic chord (the Picardy third), its dominants
    # carry a seventh and delay their leading tone by the tonic (4-3): the key stays the one
    # the phrases are in, neither the parallel major nor the subdominant the sevenths lean to
    mix = _piece(phrases, semitones, timbre)
    report = analyze(write_mono(tmp_path / "figures.wav", mix, SR))
    assert report.key == _key(tonic, semitones, mode)
    assert report.tempo == pytest.approx(TEMPO, rel=0.04)


def test_the_opening_chords_count_more_than_the_same_chords_at_the_end() -> None:
    # C F C F in C major, then G D G D in G major: as many chords diatonic to either key
    c, f, g, d = 0, 5, 7, 2
    found = np.array([c, f, c, f, g, d, g, d])
    sequence = chords.ChordSequence(found, np.full(found.size, 4.0), np.full(found.size, 0.9))
    evidence = chords.evidence(sequence)
    assert evidence is not None
    assert evidence.diatonic[c] > evidence.diatonic[g]  # the 24 keys start with the majors
