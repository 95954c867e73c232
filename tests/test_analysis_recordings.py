"""The analysis on recording-like audio: notes with the partials of real instruments (organ,
reed, strings, piano), not sine tones or plain sawtooth stacks. Each test pins one failure class
seen on sampled-instrument recordings: a plain triad read as another key, a drumless legato
piece left without a tempo, a minor-key cadence read as its dominant (a note's third partial
feeding the chroma of the fifth), a fast backbeat groove reported at half its tempo, a minor
groove with drums read as its relative major, and a string section or choir (slow swells,
wavering level) whose slow tempo was lost in the onsets and came out as the prior's; a drum kit
leaking into the bass register's notes, and a minor loop with drums heard from its iv chord (a
clip cut mid-loop) read as the major key a tone below its tonic; a backbeat groove above
170 BPM halved (its kick and snare a beat apart, the tempogram peaking at the two-beat period),
and a funk groove at 60-85 BPM doubled (its sixteenth-note hi-hats and syncopated kicks read as
a beat of eighth notes); a legato section a chord a beat above 115 BPM read at half its tempo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundforge.analysis import analyze, notes
from soundforge.analysis.frontend import StftFrontend
from tests.audio_synth import (
    DRUM_STYLES,
    PITCH_CLASSES,
    chord_sequence,
    click_track,
    drum_pattern,
    groove,
    section_sequence,
    write_mono,
)

SR = 22050


@pytest.mark.parametrize("timbre", ["organ", "reed", "strings", "piano"])
def test_a_plain_c_major_triad_over_a_click_is_c_major(tmp_path: Path, timbre: str) -> None:
    seconds = 10.0
    # held for the whole clip, or struck again every bar where the timbre decays (piano)
    beats_per_chord = 2.0 if timbre == "piano" else seconds * 100.0 / 60.0
    triad = chord_sequence([(60, 64, 67)], beats_per_chord, 100.0, seconds, SR, timbre)
    mix = triad + 0.3 * click_track(seconds, 100.0, SR)
    report = analyze(write_mono(tmp_path / "triad.wav", mix, SR))
    assert report.key == "C major"
    assert report.tempo == pytest.approx(100.0, rel=0.04)


def _cadence(tonic: int) -> list[tuple[int, ...]]:
    """i - iv - V7 - i in the minor key on `tonic` (a pitch class), four voices, bass low."""
    bass = 36 + tonic
    return [
        (bass, 60 + tonic, 63 + tonic, 67 + tonic),
        (bass + 5, 60 + tonic, 65 + tonic, 68 + tonic),
        (bass + 7, 59 + tonic, 62 + tonic, 67 + tonic),
        (bass, 60 + tonic, 63 + tonic, 67 + tonic),
    ]


@pytest.mark.parametrize(("tonic", "timbre"), [("A", "organ"), ("D", "reed"),
                                               ("F", "strings"), ("C#", "organ")])  # fmt: skip
def test_a_minor_key_cadence_is_its_key_not_the_dominant(tmp_path: Path, tonic: str,
                                                         timbre: str) -> None:  # fmt: skip
    pitch_class = PITCH_CLASSES.index(tonic)
    mix = chord_sequence(_cadence(pitch_class), 2.0, 90.0, 16.0, SR, timbre)
    report = analyze(write_mono(tmp_path / "cadence.wav", mix, SR))
    assert report.key == f"{tonic} minor"
    assert report.key_confidence is not None and report.key_confidence > 0.5


# a chorale-like progression in C major, a chord a beat (MIDI notes; the bass first)
CHORALE: list[tuple[int, ...]] = [
    (48, 64, 67, 72), (45, 64, 69, 72), (41, 65, 69, 72), (43, 62, 67, 71),
    (48, 64, 67, 72), (53, 65, 69, 72), (43, 62, 67, 71), (48, 64, 67, 72),
]  # fmt: skip


@pytest.mark.parametrize(("tempo", "timbre"), [(72.0, "organ"), (84.0, "strings"),
                                               (96.0, "reed")])  # fmt: skip
def test_a_drumless_legato_progression_gets_its_tempo_and_beats(tmp_path: Path, tempo: float,
                                                                timbre: str) -> None:  # fmt: skip
    # the chorale-like progression, one chord per beat, each held until the next
    seconds = 20.0
    mix = chord_sequence(CHORALE, 1.0, tempo, seconds, SR, timbre)
    report = analyze(write_mono(tmp_path / "legato.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.beat_count >= 0.8 * seconds * tempo / 60.0
    assert report.tempo_confidence is not None and 0.0 <= report.tempo_confidence <= 1.0
    assert report.key == "C major"


# I - V - vi - IV in C, bass low (MIDI notes; the bass first)
POP_LOOP: list[tuple[int, ...]] = [(48, 60, 64, 67), (43, 59, 62, 67), (45, 57, 60, 64),
                                   (41, 57, 60, 65)]  # fmt: skip


@pytest.mark.parametrize(("tempo", "timbre"), [(166.0, "piano"), (166.0, "organ"),
                                               (168.0, "strings")])  # fmt: skip
def test_a_fast_backbeat_groove_is_not_halved(tmp_path: Path, tempo: float, timbre: str) -> None:
    # kick on 1 and 3, snare on 2 and 4: the pattern repeats every two beats, and the tempogram
    # peaks at half the tempo
    mix = groove(POP_LOOP, tempo, 16.0, SR, drum_style="backbeat", timbre=timbre)
    report = analyze(write_mono(tmp_path / "groove.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.key == "C major"


def _minor_loop(tonic: int) -> list[tuple[int, ...]]:
    """i - III - VII - iv in the minor key on `tonic` (a pitch class), bass low: three of its
    four chords are also the relative major's I, V and ii."""
    return [(45 + tonic, 57 + tonic, 60 + tonic, 64 + tonic),
            (48 + tonic, 55 + tonic, 60 + tonic, 64 + tonic),
            (43 + tonic, 55 + tonic, 59 + tonic, 62 + tonic),
            (50 + tonic, 57 + tonic, 62 + tonic, 65 + tonic)]  # fmt: skip


@pytest.mark.parametrize("tonic", ["A", "D", "F#", "C"])
def test_a_minor_groove_with_drums_is_not_its_relative_major(tmp_path: Path, tonic: str) -> None:
    shift = (PITCH_CLASSES.index(tonic) - PITCH_CLASSES.index("A")) % 12
    shift -= 12 if shift > 6 else 0
    mix = groove(_minor_loop(shift), 96.0, 16.0, SR, drum_style="backbeat")
    report = analyze(write_mono(tmp_path / "minor.wav", mix, SR))
    assert report.key == f"{tonic} minor"
    assert report.tempo == pytest.approx(96.0, rel=0.04)


@pytest.mark.parametrize(("tempo", "timbre"), [(56.0, "strings"), (63.0, "organ")])
def test_a_legato_section_at_a_slow_tempo_gets_its_tempo(tmp_path: Path, tempo: float,
                                                         timbre: str) -> None:  # fmt: skip
    # the chorale-like progression sung or bowed by detuned sections
    mix = section_sequence(CHORALE, tempo, 20.0, SR, timbre, attack_s=0.3 if timbre == "strings"
                           else 0.2)  # fmt: skip
    report = analyze(write_mono(tmp_path / "section.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.key == "C major"


@pytest.mark.parametrize(("tempo", "timbre"), [(132.0, "strings"), (144.0, "organ")])
def test_a_fast_legato_section_is_not_read_at_half_its_tempo(tmp_path: Path, tempo: float,
                                                             timbre: str) -> None:  # fmt: skip
    # the same progression faster: the legato prior (80 BPM) read
    # every other chord as the beat (132 -> 66, 144 -> 72)
    mix = section_sequence(CHORALE, tempo, 20.0, SR, timbre, attack_s=0.2)
    report = analyze(write_mono(tmp_path / "section.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.beat_count >= 0.8 * 20.0 * tempo / 60.0


def _bass_energy(samples: np.ndarray) -> float:
    """Energy of the transcribed notes in the bass register (`notes.note_chroma`)."""
    frontend = StftFrontend(notes.NOTE_FFT, notes.NOTE_HOP, notes.CHUNK_FRAMES)
    chunks = [*frontend.push(samples.astype(np.float32)), *frontend.finish()]
    spectra = np.concatenate([notes.log_spectrum(chunk.magnitude, SR) for chunk in chunks])
    return float(notes.note_chroma(spectra, SR).bass_chroma.sum())


@pytest.mark.parametrize("style", sorted(DRUM_STYLES))
def test_a_drum_kit_leaves_little_in_the_bass_register_notes(style: str) -> None:
    # a kick drum's pitch sweep reads as bass notes (G-A) unless the broadband, short part of
    # the spectrum is separated out first: at the same level as a held bass note and chord,
    # the drums alone must transcribe to far less bass
    held = chord_sequence([(36, 60, 64, 67)], 4.0, 100.0, 12.0, SR, "piano")
    held *= 0.5 / np.max(np.abs(held))
    drums = drum_pattern(12.0, 100.0, SR, style=style)
    assert _bass_energy(drums) < 0.25 * _bass_energy(held)


@pytest.mark.parametrize(("tonic", "style"), [("A#", "backbeat"), ("C", "funk"),
                                              ("C#", "rock"), ("G", "backbeat")])  # fmt: skip
def test_a_minor_loop_heard_from_its_iv_chord_is_its_minor_key(tmp_path: Path, tonic: str,
                                                               style: str) -> None:  # fmt: skip
    # the clip starts on the loop's iv chord (cut mid-loop): that opening is no tonic region
    # (its bass is no candidate key's tonic), so it must not pull the key to the major key a
    # tone below (whose ii chord it is)
    shift = (PITCH_CLASSES.index(tonic) - PITCH_CLASSES.index("A")) % 12
    shift -= 12 if shift > 6 else 0
    loop = _minor_loop(shift)
    mix = groove(loop[3:] + loop[:3], 100.0, 16.0, SR, drum_style=style)
    report = analyze(write_mono(tmp_path / "from_iv.wav", mix, SR))
    assert report.key == f"{tonic} minor"


@pytest.mark.parametrize(("tempo", "style", "timbre"), [(176.0, "backbeat", "organ"),
                                                        (172.0, "rock", "strings"),
                                                        (180.0, "four-on-the-floor", "piano"),
                                                        (176.0, "funk", "piano")])  # fmt: skip
def test_a_backbeat_groove_above_170_bpm_is_not_halved(tmp_path: Path, tempo: float, style: str,
                                                       timbre: str) -> None:  # fmt: skip
    # the snare lands halfway between the tempogram's beats: nearly every halfway point is as
    # loud as the beats, and the points between those are not
    mix = groove(POP_LOOP, tempo, 16.0, SR, drum_style=style, timbre=timbre)
    report = analyze(write_mono(tmp_path / "fast.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.beat_count >= 0.8 * 16.0 * tempo / 60.0


@pytest.mark.parametrize(("tempo", "timbre"), [(72.0, "piano"), (64.0, "organ"),
                                               (80.0, "strings")])  # fmt: skip
def test_a_slow_funk_groove_is_not_doubled(tmp_path: Path, tempo: float, timbre: str) -> None:
    # kicks on 1, the "and" of 2, 3 and its "and", snare on 2 and 4, sixteenth-note hi-hats:
    # tracked in eighth notes, the snare falls on every fourth beat instead of every other
    mix = groove(POP_LOOP, tempo, 16.0, SR, drum_style="funk", timbre=timbre)
    report = analyze(write_mono(tmp_path / "funk.wav", mix, SR))
    assert report.tempo == pytest.approx(tempo, rel=0.04)
    assert report.beat_count <= 1.2 * 16.0 * tempo / 60.0
