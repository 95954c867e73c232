"""The key of music that modulates (`soundforge.analysis.key`): a chorale's middle phrases
cadence in its dominant or relative key, and its last phrase comes home and ends on the tonic.
A clip that opens inside the modulation holds more of the other key's notes and cadences; when
the music ends before the clip does, its last chord is the home tonic and says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundforge.analysis import analyze
from soundforge.analysis.key import ends_at_rest
from tests.audio_synth import PITCH_CLASSES, chord_sequence, write_mono

SR = 22050
TEMPO = 90.0
# Four voices, bass first (MIDI notes), in C major and A minor.
VOICINGS: dict[str, tuple[int, ...]] = {
    "C": (48, 55, 64, 72), "F": (41, 57, 65, 72), "Dm": (50, 57, 65, 69), "G": (43, 55, 62, 71),
    "Am": (45, 57, 64, 72), "D": (50, 54, 62, 69), "Em": (40, 55, 64, 71), "E": (40, 56, 64, 71),
    "A": (45, 57, 64, 73),
}  # fmt: skip
# C major: a phrase in G (the dominant) cadencing there twice, then home with a final cadence.
IN_THE_DOMINANT = ["Am", "D", "G", "G", "Em", "Am", "D", "D", "G", "C", "D", "G", "G"]
HOME_IN_C = ["C", "F", "G", "C", "Am", "Dm", "G", "C", "C"]
# A minor: a phrase in C (the relative major), then home, ending on a major tonic chord (a
# Picardy third, as minor chorales often do).
IN_THE_RELATIVE = ["Dm", "G", "C", "C", "F", "Dm", "G", "G", "C", "F", "G", "C", "C"]
HOME_IN_A_MINOR = ["Am", "Dm", "E", "Am", "F", "Dm", "E", "A", "A"]


def _piece(names: list[str], semitones: int, timbre: str, rest_s: float) -> np.ndarray:
    """A chord per beat at `TEMPO` (a held chord repeated), then `rest_s` of silence."""
    chords = [tuple(note + semitones for note in VOICINGS[name]) for name in names]
    music = chord_sequence(chords, 1.0, TEMPO, len(chords) * 60.0 / TEMPO, SR, timbre)
    return np.concatenate((music, np.zeros(int(rest_s * SR))))


def _key(tonic_of_c: str, semitones: int, mode: str) -> str:
    return f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic_of_c) + semitones) % 12]} {mode}"


@pytest.mark.parametrize(("semitones", "timbre"), [(0, "organ"), (2, "strings"), (-3, "organ")])
def test_a_piece_heard_from_its_dominant_phrase_that_ends_at_home_is_in_its_home_key(
    tmp_path: Path, semitones: int, timbre: str
) -> None:
    # the notes and the cadences favour the dominant; the final cadence and the rest after it
    # say home (before the final chord counted, these came out in the dominant's key)
    mix = _piece(IN_THE_DOMINANT + HOME_IN_C, semitones, timbre, rest_s=2.0)
    report = analyze(write_mono(tmp_path / "modulating.wav", mix, SR))
    assert report.key == _key("C", semitones, "major")


@pytest.mark.parametrize("semitones", [0, 3])
def test_a_minor_piece_heard_from_its_relative_major_phrase_is_in_its_minor_key(
    tmp_path: Path, semitones: int
) -> None:
    mix = _piece(IN_THE_RELATIVE + HOME_IN_A_MINOR, semitones, "organ", rest_s=2.0)
    report = analyze(write_mono(tmp_path / "relative.wav", mix, SR))
    assert report.key == _key("A", semitones, "minor")


def test_music_ends_at_rest_only_when_it_stops_before_the_clip() -> None:
    sounding = np.tile(np.eye(12)[[0, 4, 7]].sum(axis=0), (20, 1))
    assert not ends_at_rest(sounding)  # cut off while playing
    assert ends_at_rest(np.concatenate((sounding, np.zeros((3, 12)))))
    assert not ends_at_rest(np.zeros((1, 12)))
