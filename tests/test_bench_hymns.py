"""The hymn writer of the analysis corpus (`bench/hymns.py`): its baroque figures are written as
the corpus says (a minor hymn ends on a major chord, cadential dominants delay their leading
tone by the tonic, dominants fall to their seventh), and the plain hymn stays without them."""

from __future__ import annotations

import itertools
import random

from bench.hymns import RANGES, HymnNote, Ornaments, write_hymn

A_MINOR = 9  # pitch class


def _hymn(seed: int, ornaments: Ornaments | None) -> list[HymnNote]:
    return write_hymn(random.Random(seed), A_MINOR, "minor", 24, ornaments=ornaments)


def _last_chord(notes: list[HymnNote]) -> set[int]:
    last = max(note.beat for note in notes)
    return {note.pitch % 12 for note in notes if note.beat == last}


def test_a_minor_hymn_ends_on_a_major_tonic_with_the_picardy_third() -> None:
    for seed in range(8):
        assert _last_chord(_hymn(seed, Ornaments(picardy=True))) == {9, 1, 4}  # A C# E
        assert _last_chord(_hymn(seed, None)) <= {9, 0, 4}  # A C E


def _figures(ornaments: Ornaments | None) -> tuple[int, int]:
    """(4-3 suspensions over E, 8-7 falls over E) in eight A minor hymns: an upper voice's
    first eighth of a beat on A then G#, or on E then D."""
    suspended = sevenths = 0
    for seed in range(8):
        notes = sorted(_hymn(seed, ornaments), key=lambda note: (note.voice, note.beat))
        for first, second in itertools.pairwise(notes):
            if first.voice != second.voice or first.beats != 0.5 or first.voice == 3:
                continue
            suspended += (first.pitch % 12, second.pitch % 12) == (A_MINOR, 8)
            sevenths += (first.pitch % 12, second.pitch % 12) == (4, 2)
    return suspended, sevenths


def test_suspensions_and_sevenths_are_eighths_resolving_down_a_step() -> None:
    suspended, sevenths = _figures(Ornaments(seventh_chance=1.0, suspension_chance=1.0))
    plain_suspended, plain_sevenths = _figures(None)
    assert suspended >= 8 and suspended > 2 * plain_suspended
    assert sevenths >= 4 and sevenths > 2 * plain_sevenths


def test_every_voice_stays_in_its_range_with_the_bass_in_eighths() -> None:
    notes = _hymn(3, Ornaments(bass_eighths_chance=1.0))
    assert sum(note.voice == 3 and note.beats == 0.5 for note in notes) >= 8
    for note in notes:
        low, high = RANGES[note.voice]
        # a suspension steps a semitone over its voice's range, a seventh a tone under it
        assert low - 2 <= note.pitch <= high + 1
