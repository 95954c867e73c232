"""The key from the order of the chords (`soundforge.analysis.chords`), on grooves with drums
whose notes alone point elsewhere: a ii-V-I-vi loop (its notes fit the key a fifth up, the
dominant's), the same loop heard from its V chord (a clip cut mid-loop), and a minor i-iv-v
loop (read as the parallel major from its notes); and the chords recognised beat by beat. A
chorale's minor is not a loop's: its VII leads to the relative major, and a major hymn whose
chords were all diatonic to its relative minor too went there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundforge.analysis import analyze, chords, notes
from soundforge.analysis.frontend import StftFrontend
from tests.audio_synth import PITCH_CLASSES, groove, write_mono

SR = 22050
# In C major, bass first (MIDI notes): ii - V - I - vi
TWO_FIVE_ONE: list[tuple[int, ...]] = [(50, 62, 65, 69), (43, 59, 62, 67), (48, 60, 64, 67),
                                       (45, 57, 60, 64)]  # fmt: skip
# In A minor: i - iv - v
MINOR_ONE_FOUR_FIVE: list[tuple[int, ...]] = [(45, 57, 60, 64), (38, 57, 62, 65),
                                              (40, 55, 59, 64)]  # fmt: skip


def _shifted(loop: list[tuple[int, ...]], semitones: int) -> list[tuple[int, ...]]:
    return [tuple(note + semitones for note in chord) for chord in loop]


def _name(tonic_of_c: str, semitones: int, mode: str) -> str:
    return f"{PITCH_CLASSES[(PITCH_CLASSES.index(tonic_of_c) + semitones) % 12]} {mode}"


@pytest.mark.parametrize(("semitones", "style"), [(0, "backbeat"), (2, "funk"), (-3, "rock"),
                                                  (5, "backbeat")])  # fmt: skip
def test_a_two_five_one_six_groove_is_in_its_one_not_its_five(tmp_path: Path, semitones: int,
                                                              style: str) -> None:  # fmt: skip
    mix = groove(_shifted(TWO_FIVE_ONE, semitones), 100.0, 16.0, SR, drum_style=style)
    report = analyze(write_mono(tmp_path / "two_five_one.wav", mix, SR))
    assert report.key == _name("C", semitones, "major")


@pytest.mark.parametrize(("semitones", "style"), [(0, "backbeat"), (-3, "rock")])
def test_a_two_five_one_six_groove_cut_at_its_five_is_in_its_one(tmp_path: Path, semitones: int,
                                                                 style: str) -> None:  # fmt: skip
    # the clip opens on V and its notes fit V's key: only the V-I resolutions say I
    loop = _shifted(TWO_FIVE_ONE, semitones)
    mix = groove(loop[1:] + loop[:1], 100.0, 16.0, SR, drum_style=style)
    report = analyze(write_mono(tmp_path / "from_five.wav", mix, SR))
    assert report.key == _name("C", semitones, "major")


@pytest.mark.parametrize(("semitones", "style"), [(0, "backbeat"), (2, "funk")])
def test_a_minor_one_four_five_groove_is_minor(tmp_path: Path, semitones: int,
                                               style: str) -> None:  # fmt: skip
    mix = groove(_shifted(MINOR_ONE_FOUR_FIVE, semitones), 100.0, 16.0, SR, drum_style=style)
    report = analyze(write_mono(tmp_path / "minor.wav", mix, SR))
    assert report.key == _name("A", semitones, "minor")


def test_the_chords_of_a_groove_are_recognised_beat_by_beat() -> None:
    tempo = 100.0
    mix = groove(TWO_FIVE_ONE, tempo, 12.0, SR, drum_style="backbeat").astype(np.float32)
    frontend = StftFrontend(notes.NOTE_FFT, notes.NOTE_HOP, notes.CHUNK_FRAMES)
    chunks = [*frontend.push(mix), *frontend.finish()]
    spectra = np.concatenate([notes.log_spectrum(chunk.magnitude, SR) for chunk in chunks])
    frame_seconds = notes.NOTE_HOP / SR
    starts = chords.segment_starts(np.arange(0.0, 12.0, 60.0 / tempo), spectra.shape[0],
                                   frame_seconds)  # fmt: skip
    sequence = chords.recognise(*chords.segment_notes(spectra, starts, 0.0))
    found = sequence.chords
    runs = [int(chord) for index, chord in enumerate(found)
            if index == 0 or chord != found[index - 1]]  # fmt: skip
    d_minor, g_major, c_major, a_minor = 12 + 2, 7, 0, 12 + 9
    assert runs[:5] == [d_minor, g_major, c_major, a_minor, d_minor]
    evidence = chords.evidence(sequence)
    assert evidence is not None and evidence.chordness > 0.5
    assert int(np.argmax(evidence.cadences)) == c_major  # G resolves to C
    assert evidence.diatonic[c_major] > evidence.diatonic[g_major]  # Dm is foreign to G major


def test_a_cadence_on_a_held_chord_outweighs_a_passing_resolution() -> None:
    # C F E Am Dm G C(held): V/vi -> vi passes on a beat, V -> I ends the phrase on a held chord
    c_major, f_major, e_major, g_major, a_minor, d_minor = 0, 5, 4, 7, 12 + 9, 12 + 2
    found = np.array([c_major, f_major, e_major, a_minor, d_minor, g_major, c_major])
    lengths = np.array([4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 8.0])
    evidence = chords.evidence(chords.ChordSequence(found, lengths, np.full(found.size, 0.9)))
    assert evidence is not None
    assert evidence.cadences[c_major] > evidence.cadences[a_minor] > 0


def _beats(chord_names: str, beats_per_chord: int) -> chords.ChordSequence:
    """A chord sequence a segment per beat from names like "G Em C D" (sharps, "m" for minor)."""
    found = []
    for name in chord_names.split():
        minor = name.endswith("m")
        found += [PITCH_CLASSES.index(name.rstrip("m")) + 12 * minor] * beats_per_chord
    return chords.ChordSequence(np.array(found), np.ones(len(found)), np.full(len(found), 0.9))


def test_a_major_chorale_is_more_diatonic_to_its_key_than_to_its_relative_minor() -> None:
    # a chord a beat in G major, through vi, iii and ii: every chord is also diatonic to E minor
    # in the Aeolian minor of loops (Bm its v, D its VII), which then lost nothing to G major
    evidence = chords.evidence(_beats("G Em C D G Bm Em Am D G Em C Am D G D", 1))
    assert evidence is not None
    g_major, e_minor = PITCH_CLASSES.index("G"), 12 + PITCH_CLASSES.index("E")
    assert evidence.diatonic[g_major] > evidence.diatonic[e_minor] + 0.1


def test_a_minor_loop_a_chord_a_bar_keeps_its_subtonic_chord() -> None:
    # i - VII - VI - VII in A minor, a chord a bar: G is the loop's own VII, not a modulation
    evidence = chords.evidence(_beats("Am G F G Am G F G", 4))
    assert evidence is not None
    assert evidence.diatonic[12 + PITCH_CLASSES.index("A")] == pytest.approx(1.0)
