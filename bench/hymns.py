"""Four-part hymns written here for the analysis corpus: chorale-style SATB harmonisations,
generated, never copied (the held-out acceptance set is built from Bach chorales, which this
project must not use for anything).

Each hymn is a run of two-bar phrases in quarter notes, every phrase ending on a cadence held
for two beats (authentic V-I, or a half cadence on V). The first and last phrases stand in the
home key; a phrase between often begins at home and turns, on a chord the two keys share, to
cadence in a related key (the dominant, the relative, the subdominant, the supertonic or
mediant in major; the relative major, the minor dominant, the subdominant, the submediant in
minor), and the next phrase comes back home, as chorale harmonisations do. Chords follow
functional moves (tonic -> predominant -> dominant -> tonic) with the raised leading tone on
V and vii in minor; four voices in their ranges (bass E2-C4, tenor C3-G4, alto G3-D5, soprano
C4-G5), each chord voiced to move the voices least, complete triads, no doubled leading tone,
no parallel fifths or octaves, the tenor and alto within an octave of their neighbour above.
Voices moving by a third often fill it with an eighth-note passing tone, as chorale
harmonisations do. With `applied_chance`, a chord before ii, IV, V or vi (iv, V or VI in minor)
becomes that chord's own dominant (V/V, V/vi...: a major triad a fifth above it, its third a
leading tone foreign to the key), as chorale harmonisations tonicize on the way.
`write_modulating_hymn` always modulates, for a whole phrase or two: a middle phrase turns on a
pivot chord to the dominant (major) or the relative major or minor dominant (minor) and
cadences there, and the last phrase returns and cadences at home. The key a MIREX annotation
gives such a piece is the home key. With `fermata_chance`, a cadence chord is held a beat or two
longer, as a fermata is sung: the chords stop changing, the beat goes on. `Ornaments` add the
figures of a baroque harmonisation: a dominant's root falling to its seventh (V8-7), the
cadential 4-3 suspension (the tonic held over into V, resolving to the leading tone), a minor
hymn's last chord major (the Picardy third), and a bass moving in eighths (passing tones and
octave leaps).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor; V and vii take the raised seventh
# Scale degrees (0 = I) a phrase may go to next, by the degree it is on.
MOVES: dict[int, tuple[int, ...]] = {
    0: (3, 1, 5, 4, 3, 5),
    1: (4, 4, 6),
    2: (5, 3),
    3: (4, 1, 0, 4),
    4: (0, 5, 0),
    5: (1, 3, 3),
    6: (0,),
}
# Related keys a middle phrase modulates to: (semitones above the home tonic, mode).
RELATED = {
    "major": ((7, "major"), (9, "minor"), (5, "major"), (2, "minor"), (4, "minor")),
    "minor": ((3, "major"), (7, "minor"), (5, "minor"), (8, "major")),
}
RANGES = ((60, 79), (55, 74), (48, 67), (40, 60))  # soprano, alto, tenor, bass (MIDI)
# Degrees a secondary dominant may lead to: ii, IV, V, vi in major; iv, V, VI in minor.
APPLIED_TARGETS = {"major": (1, 3, 4, 5), "minor": (3, 4, 5)}
PASSING_CHANCE = 0.35
# A fermata over a cadence chord, as sung: the chord held a beat or two longer than written,
# the pulse resuming on the next phrase (the beat grid goes on; the chords stop changing).
FERMATA_BEATS = (1, 2)
MODULATION_CHANCE = 0.6
# Keys a modulating hymn's middle phrases go to and cadence in (`write_modulating_hymn`): the
# dominant in major; the relative major or the minor dominant in minor, as a chorale's do.
MODULATIONS = {"major": ((7, "major"),), "minor": ((3, "major"), (7, "minor"))}
AWAY_CHANCE = 0.4  # a second phrase in the new key, in hymns of four phrases or more


@dataclass(frozen=True)
class Ornaments:
    """How often each baroque figure is written (see the module's docstring)."""

    seventh_chance: float = 0.0  # a V going to I: a voice doubling its root falls to the 7th
    suspension_chance: float = 0.0  # a cadence's V: its leading tone delayed by the tonic
    picardy: bool = False  # a minor hymn ends on a major tonic chord
    bass_eighths_chance: float = 0.0  # a quarter of the bass split into two eighths


@dataclass(frozen=True)
class HymnNote:
    """One note: onset and length in beats, MIDI pitch, voice (0 soprano .. 3 bass)."""

    beat: float
    beats: float
    pitch: int
    voice: int


@dataclass(frozen=True)
class _Chord:
    tonic: int  # pitch class of the local key
    mode: str
    degree: int
    applied_root: int | None = None  # a secondary dominant: the major triad on this root

    def scale(self) -> tuple[int, ...]:
        scale = list(MAJOR_SCALE if self.mode == "major" else MINOR_SCALE)
        if self.mode == "minor" and self.degree in (4, 6):
            scale[6] = 11  # harmonic minor on the dominant chords
        pitches = tuple((self.tonic + step) % 12 for step in scale)
        if self.applied_root is None:
            return pitches
        leading = (self.applied_root + 4) % 12  # raised: replaces the tone a semitone below
        return tuple(leading if (leading - pitch) % 12 == 1 else pitch for pitch in pitches)

    def pitch_classes(self) -> tuple[int, int, int]:
        if self.applied_root is not None:
            return self.applied_root, (self.applied_root + 4) % 12, (self.applied_root + 7) % 12
        scale = self.scale()
        root, third, fifth = (scale[(self.degree + step) % 7] for step in (0, 2, 4))
        return root, third, fifth

    def leading_tone(self) -> int | None:
        if self.applied_root is not None:
            return (self.applied_root + 4) % 12
        return (self.tonic + 11) % 12 if self.degree in (4, 6) else None


def _phrase_chords(rng: random.Random, tonic: int, mode: str, first: int, count: int,
                   cadence: str, applied_chance: float = 0.0) -> list[_Chord]:  # fmt: skip
    """`count` chords from degree `first`, ending on the cadence (the last chord is held); with
    `applied_chance`, chords made secondary dominants of the next (`_with_applied`)."""
    degrees = [first]
    while len(degrees) < count - 2:
        degrees.append(rng.choice(MOVES[degrees[-1]]))
    if cadence == "authentic":
        degrees += [4, 0]
    elif cadence == "half":
        degrees += [rng.choice((1, 3, 0)), 4]
    else:  # the phrase goes on
        degrees += [rng.choice(MOVES[degrees[-1]])]
        degrees += [rng.choice(MOVES[degrees[-1]])]
    if mode == "minor":  # ii and vii are diminished in minor: mostly use iv and V instead
        degrees = [3 if d == 1 and rng.random() < 0.6 else d for d in degrees]
        degrees = [4 if d == 6 and index < len(degrees) - 1 else d
                   for index, d in enumerate(degrees)]  # fmt: skip
    chords = [_Chord(tonic, mode, degree) for degree in degrees[:count]]
    return _with_applied(rng, chords, applied_chance) if applied_chance > 0 else chords


def _with_applied(rng: random.Random, chords: list[_Chord], chance: float) -> list[_Chord]:
    """Each chord but the phrase's first, before a chord of `APPLIED_TARGETS`, becomes that
    chord's dominant with probability `chance`."""
    result = list(chords)
    for index in range(1, len(chords) - 1):
        chord, target = chords[index], chords[index + 1]
        if target.degree in APPLIED_TARGETS[target.mode] and rng.random() < chance:
            root = (target.pitch_classes()[0] + 7) % 12
            result[index] = _Chord(chord.tonic, chord.mode, chord.degree, root)
    return result


def _shared_degree(rng: random.Random, old: _Chord, tonic: int, mode: str) -> int:
    """A degree of the new key whose triad is diatonic in the old key (a pivot), else I."""
    old_scale = set(old.scale())
    pivots = [degree for degree in (0, 1, 3, 5)
              if set(_Chord(tonic, mode, degree).pitch_classes()) <= old_scale]  # fmt: skip
    return rng.choice(pivots) if pivots else 0


def _voicings(chord: _Chord, inversion: bool) -> list[tuple[int, int, int, int]]:
    """Every (soprano, alto, tenor, bass) of the chord within the ranges and spacing rules."""
    root, third, fifth = chord.pitch_classes()
    bass_class = third if inversion else root
    chord_classes = (root, third, fifth)
    options = [tuple(pitch for pitch in range(low, high + 1) if pitch % 12 in chord_classes)
               for low, high in RANGES[:3]]  # fmt: skip
    basses = [pitch for pitch in range(*RANGES[3]) if pitch % 12 == bass_class]
    found = []
    for soprano, alto, tenor in itertools.product(*options):
        if not soprano > alto > tenor or soprano - alto > 12 or alto - tenor > 12:
            continue
        for bass in basses:
            if bass >= tenor or tenor - bass > 19:
                continue
            classes = [pitch % 12 for pitch in (soprano, alto, tenor, bass)]
            if third not in classes or root not in classes:
                continue
            leading = chord.leading_tone()
            if leading is not None and classes.count(leading) > 1:
                continue
            if inversion and classes.count(third) > 1:
                continue
            found.append((soprano, alto, tenor, bass))
    return found


def _cost(previous: tuple[int, ...] | None, voicing: tuple[int, ...],
          rng: random.Random) -> float:  # fmt: skip
    if previous is None:
        return float(abs(voicing[0] - 72) + abs(voicing[3] - 48)) + rng.random()
    cost = float(sum(abs(now - before) for now, before in zip(voicing, previous, strict=True)))
    cost -= 0.5 * abs(voicing[3] - previous[3])  # the bass may leap more than the others
    for upper, lower in itertools.combinations(range(4), 2):
        before = (previous[upper] - previous[lower]) % 12
        now = (voicing[upper] - voicing[lower]) % 12
        moved = voicing[upper] != previous[upper]
        if moved and before == now and now in (0, 7):
            cost += 40.0  # parallel octaves or fifths
    cost += sum(6.0 for voice in (1, 2) if abs(voicing[voice] - previous[voice]) > 5)
    cost += 4.0 if abs(voicing[0] - previous[0]) > 4 else 0.0
    return cost + 2.0 * rng.random()


def _voice(rng: random.Random, chords: list[_Chord], cadences: set[int]) -> list[tuple[int, ...]]:
    voiced: list[tuple[int, ...]] = []
    for index, chord in enumerate(chords):
        inversion = index not in cadences and index + 1 not in cadences and rng.random() < 0.25
        options = _voicings(chord, inversion) or _voicings(chord, False)
        previous = voiced[-1] if voiced else None
        voiced.append(min(options, key=lambda option: _cost(previous, option, rng)))
    return voiced


def _passing(rng: random.Random, pitch: int, following: int, scale: tuple[int, ...],
             chance: float = PASSING_CHANCE) -> int | None:  # fmt: skip
    """The scale tone between a note and the next a third away (with probability `chance`),
    or None."""
    if abs(following - pitch) not in (3, 4) or rng.random() > chance:
        return None
    step = 1 if following > pitch else -1
    between = [p for p in range(pitch + step, following, step) if p % 12 in scale]
    return between[0] if len(between) == 1 else None


def write_hymn(rng: random.Random, tonic: int, mode: str, beats: int, beats_per_bar: int = 4,
               applied_chance: float = 0.0, fermata_chance: float = 0.0,
               passing_chance: float = PASSING_CHANCE, ornaments: Ornaments | None = None,
               ) -> list[HymnNote]:  # fmt: skip
    """A hymn of at least `beats` beats in the key `tonic` (pitch class) `mode`; with
    `applied_chance`, secondary dominants on the way (see the module's docstring); with
    `fermata_chance`, each cadence chord held under a fermata that chance (`FERMATA_BEATS`
    more); `passing_chance`: how often a voice moving by a third fills it; `ornaments`: the
    baroque figures written, none by default."""
    phrase_beats = 2 * beats_per_bar
    count = phrase_beats - 1  # chords per phrase, the cadence chord held two beats
    phrases = max(2, -(-beats // phrase_beats))
    chords: list[_Chord] = []
    lengths: list[float] = []
    cadences: set[int] = set()
    for number in range(phrases):
        middle = 0 < number < phrases - 1
        first = 0 if number == 0 else _shared_degree(rng, chords[-1], tonic, mode)
        if middle and rng.random() < MODULATION_CHANCE:
            # begin at home, turn on a shared chord, cadence in the related key
            offset, related_mode = rng.choice(RELATED[mode])
            related = (tonic + offset) % 12
            home = _phrase_chords(rng, tonic, mode, first, count - 1, "none",
                                  applied_chance)[: count - 3]  # fmt: skip
            pivot = _shared_degree(rng, home[-1], related, related_mode)
            chords += home + [_Chord(related, related_mode, degree) for degree in (pivot, 4, 0)]
        else:
            cadence = "authentic" if number == phrases - 1 or rng.random() < 0.5 else "half"
            chords += _phrase_chords(rng, tonic, mode, first, count, cadence, applied_chance)
        held = 0
        if fermata_chance > 0 and rng.random() < fermata_chance:
            held = rng.choice(FERMATA_BEATS)
        lengths += [1.0] * (count - 1) + [2.0 + held]
        cadences.add(len(chords) - 1)
    return _written(rng, chords, lengths, cadences, passing_chance, ornaments or Ornaments())


def write_modulating_hymn(rng: random.Random, tonic: int, mode: str, phrases: int,
                          beats_per_bar: int = 4, applied_chance: float = 0.0,
                          ) -> list[HymnNote]:  # fmt: skip
    """A hymn of `phrases` phrases (at least 3) that modulates and comes back, as a chorale
    does: the first phrase at home; the second begins at home, turns on a pivot (a chord of
    the new key diatonic to both) and cadences V-I in a key of `MODULATIONS`; with
    `AWAY_CHANCE`, when there are four phrases or more, the third stays there; the next begins
    on a chord the two keys share and is home again, and the last cadences V-I at home."""
    phrase_beats = 2 * beats_per_bar
    count = phrase_beats - 1  # chords per phrase, the cadence chord held two beats
    phrases = max(3, phrases)
    offset, related_mode = rng.choice(MODULATIONS[mode])
    related = (tonic + offset) % 12
    away = {1} | ({2} if phrases >= 4 and rng.random() < AWAY_CHANCE else set())
    chords: list[_Chord] = []
    lengths: list[float] = []
    cadences: set[int] = set()
    for number in range(phrases):
        last = number == phrases - 1
        if number == 1:
            home_count = max(1, count - 5 + rng.randrange(2))
            home = _phrase_chords(rng, tonic, mode, _shared_degree(rng, chords[-1], tonic, mode),
                                  home_count + 2, "none", applied_chance)[:home_count]  # fmt: skip
            pivot = _shared_degree(rng, home[-1], related, related_mode)
            chords += home + _phrase_chords(rng, related, related_mode, pivot, count - home_count,
                                            "authentic", applied_chance)  # fmt: skip
        else:
            key, key_mode = (related, related_mode) if number in away else (tonic, mode)
            first = 0 if number == 0 else _shared_degree(rng, chords[-1], key, key_mode)
            cadence = "authentic" if last or rng.random() < 0.5 else "half"
            chords += _phrase_chords(rng, key, key_mode, first, count, cadence, applied_chance)
        lengths += [1.0] * (count - 1) + [2.0]
        cadences.add(len(chords) - 1)
    return _written(rng, chords, lengths, cadences)


def _written(rng: random.Random, chords: list[_Chord], lengths: list[float], cadences: set[int],
             passing_chance: float = PASSING_CHANCE, ornaments: Ornaments = Ornaments(),
             ) -> list[HymnNote]:  # fmt: skip
    """The chords voiced (`_voice`) and written out as notes, with passing tones (`_passing`,
    with probability `passing_chance`) and `ornaments` (`_figures`)."""
    voiced = _voice(rng, chords, cadences)
    if ornaments.picardy and chords[-1].mode == "minor" and chords[-1].degree == 0:
        minor_third = (chords[-1].tonic + 3) % 12
        voiced[-1] = tuple(pitch + 1 if pitch % 12 == minor_third else pitch
                           for pitch in voiced[-1])  # fmt: skip
    notes: list[HymnNote] = []
    start = 0.0
    for index, (chord, voicing, length) in enumerate(zip(chords, voiced, lengths, strict=True)):
        following = voiced[index + 1] if index + 1 < len(voiced) else None
        figures: dict[int, tuple[int, int]] = {}
        if following is not None and length == 1.0:
            figures = _figures(rng, chord, chords[index + 1], voicing, following,
                               index + 1 in cadences, ornaments)  # fmt: skip
        for voice, pitch in enumerate(voicing):
            passing = (_passing(rng, pitch, following[voice], chord.scale(), passing_chance)
                       if following is not None and length == 1.0 else None)  # fmt: skip
            first, second = figures.get(voice, (pitch, passing))
            if second is None:
                notes.append(HymnNote(start, length, first, voice))
            else:
                notes.append(HymnNote(start, length / 2, first, voice))
                notes.append(HymnNote(start + length / 2, length / 2, second, voice))
        start += length
    return notes


def _figures(rng: random.Random, chord: _Chord, following: _Chord, voicing: tuple[int, ...],
             next_voicing: tuple[int, ...], cadence_next: bool,
             ornaments: Ornaments) -> dict[int, tuple[int, int]]:  # fmt: skip
    """The voices of one chord a beat long that `ornaments` split into two eighths: voice ->
    (first pitch, second pitch). A cadence's V, before I, may delay its leading tone by the
    tonic a semitone above (4-3); a V before I or vi may let an upper voice doubling its root
    fall a whole step to the seventh (8-7); the bass may fill a third or leap an octave."""
    figures: dict[int, tuple[int, int]] = {}
    dominant = chord.degree == 4 and chord.applied_root is None
    root = chord.pitch_classes()[0]
    if (dominant and cadence_next and following.degree == 0
            and rng.random() < ornaments.suspension_chance):  # fmt: skip
        for voice in range(3):
            if voicing[voice] % 12 == (chord.tonic + 11) % 12:
                figures[voice] = (voicing[voice] + 1, voicing[voice])
                break
    roots = [voice for voice in range(3) if voicing[voice] % 12 == root and voice not in figures]
    if (dominant and following.degree in (0, 5) and roots and voicing[3] % 12 == root
            and rng.random() < ornaments.seventh_chance):  # fmt: skip
        voice = rng.choice(roots)
        figures[voice] = (voicing[voice], voicing[voice] - 2)
    if rng.random() < ornaments.bass_eighths_chance:
        bass = voicing[3]
        filled = _passing(rng, bass, next_voicing[3], chord.scale(), chance=1.0)
        low, high = RANGES[3]
        leap = bass - 12 if bass - 12 >= low else bass + 12
        figures[3] = (bass, filled if filled is not None else leap if leap <= high else bass)
    return figures
