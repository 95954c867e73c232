"""The key's opening evidence (`soundforge.analysis.key`): a chorale's first chord is its tonic,
though the chords of its first seconds may put another bass note louder or longer."""

from __future__ import annotations

import numpy as np

from soundforge.analysis.key import PITCH_CLASSES, estimate_key, opening_bass

E, A = PITCH_CLASSES.index("E"), PITCH_CLASSES.index("A")


def _blocks(*pitch_classes: int, level: float = 1.0) -> np.ndarray:
    blocks = np.zeros((len(pitch_classes), 12))
    for index, pitch_class in enumerate(pitch_classes):
        blocks[index, pitch_class] = level
    return blocks


def test_the_first_chords_bass_leads_the_opening() -> None:
    # E for the first block, then A held (and louder) for three: I - IV in E major
    blocks = np.concatenate((_blocks(E), _blocks(A, A, A, level=1.5)))
    assert int(np.argmax(opening_bass(blocks))) == E
    assert int(np.argmax(blocks.sum(axis=0))) == A  # what a plain sum says


def _pitch_classes(*names: str) -> np.ndarray:
    values = np.zeros(12)
    values[[PITCH_CLASSES.index(name) for name in names]] = 1.0
    return values


def test_an_opening_on_the_tonic_chooses_between_a_key_and_its_subdominant() -> None:
    # a hymn in E major that spends most of its time around its IV: the whole file's notes
    # lean to A major, and so do its first seconds (E for one block, then A, louder, for three)
    whole = (0.35 * _pitch_classes("E", "F#", "G#", "A", "B", "C#", "D#")
             + 0.65 * _pitch_classes("A", "B", "C#", "D", "E", "F#", "G#"))  # fmt: skip
    opening = _pitch_classes("E", "G#", "B") + 4.5 * _pitch_classes("A", "C#", "E")
    bass = np.concatenate((_blocks(E), _blocks(A, A, A, level=1.5)))
    chosen = estimate_key(whole, opening_chroma=opening, opening_bass=opening_bass(bass))
    assert chosen is not None and chosen.name == "E major"
    summed = estimate_key(whole, opening_chroma=opening, opening_bass=bass.sum(axis=0))
    assert summed is not None and summed.name == "A major"  # the loudest bass: IV's key
