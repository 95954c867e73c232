"""Accuracy of the analysis on synthesized audio with known truth: drum patterns at tempi over
70-180 BPM (tempo within 2 %) and chord progressions with bass in every major and minor key
(key exact). The audio is generated here, at 22.05 kHz so the tests stay quick; a broader grid
(more progressions, timbres, encodings) is `bench/analysis_accuracy.py`."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("librosa")

from soundforge.analysis import analyze
from tests.audio_synth import (
    MAJOR_PROGRESSIONS,
    MINOR_PROGRESSIONS,
    PITCH_CLASSES,
    write_test_song,
)

SR = 22050
TEMPI = (70.0, 78.0, 87.0, 96.0, 105.0, 116.0, 128.0, 141.0, 155.0, 168.0, 180.0)
KEYS = tuple(f"{tonic} {mode}" for mode in ("major", "minor") for tonic in PITCH_CLASSES)


@pytest.mark.parametrize("bpm", TEMPI)
def test_tempo_of_a_drum_pattern_is_within_2_percent(tmp_path: Path, bpm: float) -> None:
    path = write_test_song(tmp_path / "drums.wav", 20.0, SR, tempo=bpm, chords=False, channels=1)
    report = analyze(path)
    assert report.tempo is not None
    assert report.tempo == pytest.approx(bpm, rel=0.02)
    assert report.beat_count == len(report.beats) >= 0.8 * 20.0 * bpm / 60.0


@pytest.mark.parametrize("key", KEYS)
def test_key_of_a_chord_progression_with_bass_is_exact(tmp_path: Path, key: str) -> None:
    tonic, mode = key.split()
    table = MAJOR_PROGRESSIONS if mode == "major" else MINOR_PROGRESSIONS
    progression = list(table)[PITCH_CLASSES.index(tonic) % len(table)]
    path = tmp_path / "chords.wav"
    write_test_song(
        path, 12.0, SR, tempo=100.0, key=key, drums=False, channels=1, progression=progression
    )
    report = analyze(path)
    assert report.key == key, f"{progression} in {key}"
    assert report.key_confidence is not None and report.key_confidence > 0.5


@pytest.mark.parametrize(("bpm", "key"), [(92.0, "F# minor"), (174.0, "Bb major")])
def test_a_full_song_gets_both_tempo_and_key(tmp_path: Path, bpm: float, key: str) -> None:
    path = write_test_song(tmp_path / "song.flac", 24.0, 44100, tempo=bpm, key=key)
    report = analyze(path)
    assert report.tempo == pytest.approx(bpm, rel=0.02)
    assert report.key == key.replace("Bb", "A#")
    assert report.warnings == []
