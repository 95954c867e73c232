"""Musical keys in the two notations people read: the analysis' name ("A minor", sharps
spelling) and the Camelot wheel ("8A") DJs mix by. A pure module: the CLI's `--key` filter, the
web's key filter and the track page all parse and print keys through it."""

from __future__ import annotations

import re

from soundforge.errors import PermanentError

PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"DB": "C#", "EB": "D#", "GB": "F#", "AB": "G#", "BB": "A#", "CB": "B", "FB": "E",
          "E#": "F", "B#": "C"}  # fmt: skip
_NAME = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*(major|minor|maj|min|m|)\s*$", re.IGNORECASE)
_CAMELOT = re.compile(r"^\s*(1[0-2]|[1-9])\s*([ABab])\s*$")


class InvalidKeyError(PermanentError):
    """A key a user typed that is neither a key name nor a Camelot code."""


def _pitch_class(letter: str, accidental: str) -> int:
    name = letter.upper() + {"♯": "#", "♭": "B", "b": "B"}.get(accidental, accidental)
    name = _FLATS.get(name, name)
    return PITCHES.index(name)


def camelot(key: str | None) -> str | None:
    """The Camelot code of a key name ("A minor" -> "8A", "C major" -> "8B"); None when
    `key` is None or not a key name."""
    if key is None:
        return None
    match = _NAME.match(key)
    if match is None:
        return None
    pitch = _pitch_class(match.group(1), match.group(2))
    minor = match.group(3).lower() in ("minor", "min", "m")
    major_pitch = (pitch + 3) % 12 if minor else pitch  # a minor key sits with its relative major
    number = (7 * major_pitch + 8) % 12 or 12
    return f"{number}{'A' if minor else 'B'}"


def normalize_key(text: str) -> str:
    """A key typed as "A minor", "Am", "a min", "Bb major", "8A" or "8B" as the analysis
    stores it ("A minor", "A# major"); `InvalidKeyError` otherwise."""
    code = _CAMELOT.match(text)
    if code is not None:
        wanted = f"{int(code.group(1))}{code.group(2).upper()}"
        mode = "minor" if wanted.endswith("A") else "major"
        for pitch in PITCHES:
            if camelot(f"{pitch} {mode}") == wanted:
                return f"{pitch} {mode}"
    match = _NAME.match(text)
    if match is None:
        raise InvalidKeyError(
            f"key {text!r} is not a key: write it like 'A minor', 'Am', 'F# major' or '8A'"
        )
    pitch = PITCHES[_pitch_class(match.group(1), match.group(2))]
    minor = match.group(3).lower() in ("minor", "min", "m")
    return f"{pitch} {'minor' if minor else 'major'}"


def both_notations(key: str | None) -> str:
    """"A minor / 8A" for display; "-" when unknown."""
    if not key:
        return "-"
    code = camelot(key)
    return f"{key} / {code}" if code else key
