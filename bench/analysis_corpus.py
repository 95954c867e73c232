"""A development corpus for the analysis that resembles real recordings: real compositions and
written-out progressions rendered with FluidSynth through a General MIDI soundfont, many GM
programs, with and without a drum kit, the key and tempo taken from the score.

Sources (never Bach: the held-out set is built from Bach chorales):
- music21's corpus: string quartets and songs (Haydn, Mozart, Beethoven, Schumann, Schubert,
  ...) and folk songs (the Essen collection); the first seconds of each, the key from the key
  signature and the final bass note (pieces whose last note is neither the major nor the minor
  tonic of their signature are left out), the tempo chosen per piece and written into the MIDI;
- progressions written here: legato (organ, strings, choir, piano) and grooves (bass, chords,
  lead, drums), in every key and mode;
- a second set (its own index, so the first is never rendered again): four-part hymns written by
  `bench/hymns.py` (chorale-style SATB, modulating to related keys, 50-110 BPM, 4/4 and 3/4)
  through organ, piano, strings and choir programs without drums, and more grooves with drums
  (also the minor loops i-VI-III-VII and i-VII-VI-VII, up to 175 BPM);
- a third set: hymns with secondary dominants (`bench/hymns.py`'s `applied_chance`), without
  drums;
- a fourth set: modulating hymns (`bench/hymns.py`'s `write_modulating_hymn`: a middle phrase
  or two cadence in the dominant, the relative major or the minor dominant, the last returns
  home), without drums; a third end inside the clip on their final cadence, a third go on past
  it, a third are excerpts ending at rest after the phrase in the other key;
- a fermata set: slow hymns (40-90 BPM, one in three in 3/4) whose cadence chords are mostly
  held a beat or two longer under a fermata, more voices moving in eighths, without drums;
- an ornamented set: hymns (45-100 BPM) with the figures of a baroque harmonisation
  (`bench/hymns.py`'s `Ornaments`: a dominant's root falling to its seventh, 4-3 suspensions at
  cadences, a minor hymn ending on a major chord, a bass moving in eighths), some secondary
  dominants and fermatas, without drums;
- a fast set: hymns at 111-160 BPM (the sets above stop at 110), half of them ornamented,
  without drums.

Every clip belongs to the tuning part or the held-back validation part, by a hash of its file
name (each clip is a different piece): tune on the first, report both (`split_of`).

The corpus is built once into a cache folder outside the repository (`--cache`, default
`~/.cache/soundforge/analysis-corpus`) with an `index.json`; later runs reuse it.

`--soundfont FILE` renders the same pieces, programs and tempi through another soundfont (its
own cache folder, `analysis-corpus-<font name>`): the same scores in instruments sampled by
someone else, e.g. MuseScore's General (`apt-get install musescore-general-soundfont-small`:
`/usr/share/sounds/sf3/MuseScore_General_Lite.sf3`) or TimGM6mb (`timgm6mb-soundfont`), a test
of how the analysis holds on timbres it was not tuned on.

    .venv/bin/pip install -e '.[bench]'  &&  apt-get install fluidsynth fluid-soundfont-gm
    .venv/bin/python bench/analysis_corpus.py [--cache DIR] [--seconds 20] [--soundfont FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parents[1])  # not bench/: bench/queue.py shadows queue

DEFAULT_CACHE = Path.home() / ".cache" / "soundforge" / "analysis-corpus"
SOUNDFONTS = (
    Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"),
    Path("/usr/share/sounds/sf2/default-GM.sf2"),
)
SOUNDFONT_VARIABLE = "SOUNDFORGE_CORPUS_SOUNDFONT"  # set by --soundfont: render through this font
RENDER_RATE = 22050
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
CORPUS_VERSION = 2

# GM programs (0-based) of acoustic-like instruments, by ensemble.
ENSEMBLES: dict[str, tuple[int, ...]] = {
    "piano": (0,),
    "church organ": (19,),
    "reed organ": (20,),
    "strings": (48,),
    "string quartet": (40, 40, 41, 42),
    "choir": (52,),
    "woodwinds": (73, 68, 71, 70),
    "brass": (56, 60, 57, 58),
    "harpsichord": (6,),
    "guitar": (24,),
    "vibraphone and cello": (11, 11, 42, 42),
    "clarinet and bassoon": (71, 71, 70, 70),
}
CLASSICAL = (
    "haydn/opus74no1/movement1", "haydn/opus74no1/movement2", "haydn/opus74no1/movement3",
    "haydn/opus74no2/movement1", "haydn/opus74no2/movement2", "haydn/opus74no2/movement4",
    "mozart/k80/movement1", "mozart/k80/movement2", "mozart/k155/movement1",
    "mozart/k156/movement1", "mozart/k458/movement2", "mozart/k458/movement3",
    "beethoven/opus18no1/movement2", "beethoven/opus18no1/movement3",
    "beethoven/opus59no1/movement2", "beethoven/opus59no3/movement1",
    "schumann_robert/opus41no1/movement2", "schumann_robert/opus41no1/movement3",
    "schubert/Lindenbaum", "handel/rinaldo/Lascia_chio_pianga", "joplin/maple_leaf_rag",
    "johnson_j_r/lift_every_voice", "leadSheet/fosterBrownHair", "beach/prayer_of_a_tired_child",
    "verdi/laDonnaEMobile", "corelli/opus3no1/1grave", "cpebach/h186",
)  # fmt: skip
FOLK_FILES = ("essenFolksong/han1", "essenFolksong/kinder", "essenFolksong/boehme10")
EXTRA_VERSION = 2
EXTRA_SEED = 1313
HYMNS = 48
# The third set: hymns with secondary dominants (V/V, V/vi...: notes foreign to the key on the
# way to a chord of it), as chorale harmonisations have.
CHROMATIC_VERSION = 1
CHROMATIC_SEED = 4242
CHROMATIC_HYMNS = 60
APPLIED_CHANCE = 0.25
# The fourth set: hymns that modulate for a phrase or two and come back home
# (`bench/hymns.py`'s `write_modulating_hymn`), as the held-out chorales do; a third end inside
# the clip on their final cadence, a third go on past its end, a third are excerpts of their
# first two phrases, ending at rest in the other key (`_modulating_hymns`).
MODULATING_VERSION = 1
MODULATING_SEED = 5151
MODULATING_HYMNS = 48
MODULATING_APPLIED_CHANCE = 0.15
# The fermata set: slow hymns with fermatas (`bench/hymns.py`'s `fermata_chance`): a held
# chord breaks the pulse of the chord changes at every phrase end, as in sung chorales.
FERMATA_VERSION = 1
FERMATA_SEED = 6363
FERMATA_HYMNS = 48
FERMATA_CHANCE = 0.75
FERMATA_PASSING_CHANCE = 0.5
FERMATA_TEMPI = (40, 91)
FERMATA_THREE_FOUR_CHANCE = 0.33
# The ornamented set: hymns with the figures of a baroque harmonisation (`bench/hymns.py`'s
# `Ornaments`: V8-7, 4-3 suspensions at cadences, Picardy thirds, a bass in eighths), some
# secondary dominants, some fermatas, modulating as `write_hymn` does, without drums.
ORNAMENTED_VERSION = 1
ORNAMENTED_SEED = 7272
ORNAMENTED_HYMNS = 48
ORNAMENTED_APPLIED_CHANCE = 0.15
ORNAMENTED_TEMPI = (45, 101)
ORNAMENTED_THREE_FOUR_CHANCE = 0.25
ORNAMENTED_FERMATA_CHANCE = 0.4
ORNAMENTED_PASSING_CHANCE = 0.45
ORNAMENTED_SEVENTH_CHANCE = 0.5
ORNAMENTED_SUSPENSION_CHANCE = 0.6
ORNAMENTED_BASS_EIGHTHS_CHANCE = 0.35
# The fast set: hymns at 111-160 BPM, half of them ornamented (the others with secondary
# dominants), without drums. The sets above stop at 110 BPM, and a chorale may be sung faster:
# at 116 BPM and up the analysis read every other chord as the beat until the chord changes
# were checked halfway between the beats too (`rhythm.FASTER_MARGIN`).
FAST_VERSION = 1
FAST_SEED = 8484
FAST_HYMNS = 48
FAST_TEMPI = (111, 161)
FAST_APPLIED_CHANCE = 0.15
FAST_THREE_FOUR_CHANCE = 0.25
FAST_FERMATA_CHANCE = 0.3
EXTRA_GROOVES = 32
# Hymn ensembles: soprano, alto, tenor, bass programs (organ, piano, strings, choir, as sung
# and played hymns are).
HYMN_ENSEMBLES: dict[str, tuple[int, ...]] = {
    "church organ": (19,),
    "reed organ": (20,),
    "drawbar organ": (16,),
    "piano": (0,),
    "bright piano": (1,),
    "strings": (48,),
    "slow strings": (49,),
    "string quartet": (40, 40, 41, 42),
    "choir": (52,),
    "voice oohs": (53,),
    "choir and organ": (52, 52, 19, 19),
    "strings and organ": (48, 48, 19, 19),
}

# Progressions: (root in semitones above the tonic, chord intervals above the root).
MAJOR = ((0, 4, 7), (0, 3, 7), (0, 3, 7), (0, 4, 7), (0, 4, 7), (0, 3, 7), (0, 3, 6))
DEGREES_MAJOR = (0, 2, 4, 5, 7, 9, 11)
DEGREES_MINOR = (0, 2, 3, 5, 7, 8, 10)
MAJOR_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (1, 4, 0, 5), (0, 4, 5, 3),
                      (0, 3, 0, 4, 5, 1, 4, 0))
MINOR_PROGRESSIONS = ((0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 6, 2, 5, 1, 4, 0), (0, 6, 5, 4),
                      (0, 3, 0, 4))
EXTRA_MINOR_PROGRESSIONS = (*MINOR_PROGRESSIONS, (0, 5, 2, 6), (0, 6, 5, 6), (0, 3, 6, 2))
DRUM_PATTERNS: dict[str, tuple[tuple[float, int, int], ...]] = {  # (beat, GM note, velocity)
    "rock": ((0, 36, 110), (1, 38, 100), (2, 36, 110), (3, 38, 100),
             *((step / 2, 42, 80 if step % 2 == 0 else 60) for step in range(8))),
    "four on the floor": (*((beat, 36, 115) for beat in range(4)), (1, 39, 90), (3, 39, 90),
                          *((beat + 0.5, 46, 75) for beat in range(4))),
    "funk": ((0, 36, 110), (1.5, 36, 90), (2, 36, 110), (1, 38, 105), (3, 38, 105),
             *((step / 4, 42, 70 if step % 4 == 0 else 45) for step in range(16))),
    "ride jazz": ((0, 36, 70), (2, 36, 70), (1, 44, 80), (3, 44, 80),
                  *((beat, 51, 85) for beat in range(4)), (1.67, 51, 70), (3.67, 51, 70)),
}  # fmt: skip


@dataclass(frozen=True)
class CorpusClip:
    """One rendered clip and its truth: key like "F# minor", tempo in BPM of the beat the score
    counts in, whether a drum kit plays, where the notes came from and the ensemble."""

    path: str
    key: str
    tempo: float
    drums: bool
    source: str
    ensemble: str


@dataclass
class NoteEvent:
    start_s: float
    end_s: float
    pitch: int
    part: int
    velocity: int = 90


def soundfont() -> Path | None:
    """The soundfont clips are rendered through: `SOUNDFONT_VARIABLE`'s, else the first of
    `SOUNDFONTS` installed."""
    chosen = os.environ.get(SOUNDFONT_VARIABLE)
    if chosen:
        return Path(chosen) if Path(chosen).is_file() else None
    return next((font for font in SOUNDFONTS if font.exists()), None)


def use_soundfont(font: Path | None, cache: Path | None) -> Path:
    """Render through `font` from now on (None: the default); the cache folder to use: `cache`,
    else the default one, or one named after a chosen font."""
    if font is None:
        return cache or DEFAULT_CACHE
    os.environ[SOUNDFONT_VARIABLE] = str(font.resolve())
    return cache or DEFAULT_CACHE.with_name(f"{DEFAULT_CACHE.name}-{font.stem}")


def tools_missing() -> str | None:
    """Why the corpus cannot be built here, or None."""
    if shutil.which("fluidsynth") is None:
        return "fluidsynth is not installed (apt-get install fluidsynth fluid-soundfont-gm)"
    if soundfont() is None:
        chosen = os.environ.get(SOUNDFONT_VARIABLE)
        return (f"no soundfont at {chosen}" if chosen
                else "no General MIDI soundfont (apt-get install fluid-soundfont-gm)")  # fmt: skip
    try:
        import music21  # noqa: F401
        import pretty_midi  # noqa: F401
    except ImportError as error:
        return f"{error.name} is missing: pip install -e '.[bench]'"
    return None


def _key_name(tonic: int, mode: str) -> str:
    return f"{PITCH_CLASSES[tonic % 12]} {mode}"


def _drum_events(beats_s: list[float], pattern: str, beats_per_bar: int) -> list[NoteEvent]:
    """The pattern laid on bars that start every `beats_per_bar` beats of `beats_s`."""
    events = []
    for bar_start in range(0, len(beats_s) - 1, beats_per_bar):
        for beat, note, velocity in DRUM_PATTERNS[pattern]:
            if beat >= beats_per_bar:
                continue
            index = bar_start + int(beat)
            if index + 1 >= len(beats_s):
                continue
            start = beats_s[index] + (beat - int(beat)) * (beats_s[index + 1] - beats_s[index])
            events.append(NoteEvent(start, start + 0.1, note, -1, velocity))
    return events


def _write_midi(events: list[NoteEvent], programs: tuple[int, ...], tempo: float,
                path: Path) -> None:  # fmt: skip
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    parts: dict[int, Any] = {}
    for event in events:
        if event.part not in parts:
            drum = event.part < 0
            program = 0 if drum else programs[event.part % len(programs)]
            parts[event.part] = pretty_midi.Instrument(program=program, is_drum=drum)
        end = max(event.end_s, event.start_s + 0.05)
        parts[event.part].notes.append(
            pretty_midi.Note(velocity=event.velocity, pitch=event.pitch, start=event.start_s,
                             end=end))  # fmt: skip
    midi.instruments.extend(parts.values())
    midi.write(str(path))


def _render(midi_path: Path, wav_path: Path, seconds: float) -> None:
    font = soundfont()
    assert font is not None, "tools_missing() is checked first"
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.6", "-r", str(RENDER_RATE), "-F", str(wav_path),
         str(font), str(midi_path)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    import soundfile

    audio, rate = soundfile.read(str(wav_path), dtype="float32")
    audio = audio[: int(seconds * rate)]
    peak = float(abs(audio).max()) if audio.size else 0.0
    soundfile.write(str(wav_path), audio * (0.8 / peak if peak > 0 else 1.0), rate,
                    subtype="PCM_16")  # fmt: skip


def _score_key(score: Any) -> str | None:
    """Key from the signature and the final bass note; None when they disagree (modal)."""
    signatures = list(score.recurse().getElementsByClass("KeySignature"))
    if not signatures:
        return None
    major_tonic = (7 * signatures[0].sharps) % 12
    last_notes = []
    for part in score.parts:
        notes = list(part.recurse().notes)
        if notes:
            last_notes.extend(notes[-1].pitches)
    if not last_notes:
        return None
    bass = min(last_notes, key=lambda pitch: pitch.midi).pitchClass
    if bass == major_tonic:
        return _key_name(major_tonic, "major")
    if bass == (major_tonic + 9) % 12:
        return _key_name(major_tonic + 9, "minor")
    return None


def _score_events(score: Any, tempo: float, seconds: float) -> tuple[list[NoteEvent],
        list[float], int] | None:  # fmt: skip
    """Notes of every part up to `seconds` at `tempo` quarter notes per minute, the beat times
    (first full bar's downbeat onwards) and the beats per bar; None for meters other than
    2/4, 3/4, 4/4."""
    signatures = list(score.recurse().getElementsByClass("TimeSignature"))
    if not signatures or signatures[0].ratioString not in ("2/4", "3/4", "4/4", "2/2", "C"):
        return None
    beats_per_bar = {"2/4": 2, "3/4": 3, "4/4": 4, "2/2": 4, "C": 4}[signatures[0].ratioString]
    quarter_s = 60.0 / tempo
    events = []
    for part_index, part in enumerate(score.parts):
        for element in part.stripTies().flatten().notes:
            start = float(element.offset) * quarter_s
            if start >= seconds:
                break
            end = start + float(element.quarterLength) * quarter_s
            for pitch in element.pitches:
                events.append(NoteEvent(start, end, int(pitch.midi), part_index))
    measures = list(score.parts[0].getElementsByClass("Measure"))
    downbeat = 0.0
    if measures and measures[0].paddingLeft:
        downbeat = float(measures[0].barDuration.quarterLength - measures[0].paddingLeft)
    beats = [(downbeat + index) * quarter_s for index in range(int(seconds / quarter_s) + 2)]
    return events, beats, beats_per_bar


def _progression_events(rng: random.Random, tonic: int, mode: str, tempo: float, seconds: float,
                        legato: bool, minors: tuple[tuple[int, ...], ...] = MINOR_PROGRESSIONS,
                        ) -> tuple[list[NoteEvent], list[float]]:  # fmt: skip
    """A looped progression (a bar per chord) with a root bass, close-voiced chords and a
    melody on chord and scale tones; legato: whole-bar chords; groove: chords on the beats."""
    degrees = DEGREES_MAJOR if mode == "major" else DEGREES_MINOR
    progression = rng.choice(MAJOR_PROGRESSIONS if mode == "major" else minors)
    beat_s = 60.0 / tempo
    events: list[NoteEvent] = []
    bars = int(seconds / (4 * beat_s)) + 1
    for bar in range(bars):
        step = progression[bar % len(progression)]
        root = degrees[step]
        # the chord's third and fifth from the scale (harmonic minor raises the 7th on V)
        chord = [root, degrees[(step + 2) % 7] + 12 * ((step + 2) >= 7),
                 degrees[(step + 4) % 7] + 12 * ((step + 4) >= 7)]  # fmt: skip
        if mode == "minor" and step == 4:
            chord[1] += 1  # raised leading tone in V
        start = bar * 4 * beat_s
        bass = 36 + (tonic + root) % 12
        chord_pitches = [60 + (tonic + interval) % 12 + (12 if (tonic + interval) % 12 < 5 else 0)
                         for interval in chord]  # fmt: skip
        if legato:
            events.append(NoteEvent(start, start + 4 * beat_s, bass, 0, 80))
            events.extend(NoteEvent(start, start + 4 * beat_s, pitch, 1, 70)
                          for pitch in chord_pitches)  # fmt: skip
        else:
            for beat in range(4):
                onset = start + beat * beat_s
                events.append(NoteEvent(onset, onset + 0.9 * beat_s, bass + 12 * (beat % 2 == 1),
                                        0, 95))  # fmt: skip
                if beat in (1, 3) or rng.random() < 0.3:
                    events.extend(NoteEvent(onset, onset + 0.8 * beat_s, pitch, 1, 70)
                                  for pitch in chord_pitches)  # fmt: skip
        # melody: quarter or half notes on chord tones, passing scale tones between
        position = 0.0
        while position < 4:
            length = rng.choice((1.0, 1.0, 2.0, 0.5)) if not legato else rng.choice((1.0, 2.0))
            interval = rng.choice(chord) if position in (0.0, 2.0) else rng.choice(degrees)
            if mode == "minor" and step == 4 and interval % 12 == 10:
                interval += 1
            pitch = 72 + (tonic + interval) % 12
            onset = start + position * beat_s
            events.append(NoteEvent(onset, onset + length * beat_s * 0.95, pitch, 2, 85))
            position += length
    beats = [index * beat_s for index in range(bars * 4 + 1)]
    return events, beats


def _clips_to_render(rng: random.Random, seconds: float) -> Iterator[tuple[
        str, str, float, list[NoteEvent], list[float], int]]:  # fmt: skip
    """(source, key, tempo, events, beat times, beats per bar) of every composition."""
    from music21 import corpus

    pieces: list[tuple[str, Any]] = []
    for name in CLASSICAL:
        try:
            pieces.append((name, corpus.parse(name)))
        except Exception:
            continue
    for name in FOLK_FILES:
        for number in range(1, 60, 12):
            try:
                pieces.append((f"{name}#{number}", corpus.parse(name, number=number)))
            except Exception:
                continue
    for source, score in pieces:
        key = _score_key(score)
        tempo = float(rng.choice((60, 66, 72, 80, 88, 96, 104, 112, 120, 132)))
        found = _score_events(score, tempo, seconds) if key else None
        if key is None or found is None or not found[0]:
            continue
        events, beats, beats_per_bar = found
        yield source, key, tempo, events, beats, beats_per_bar
    for index in range(48):
        mode = ("major", "minor")[index % 2]
        tonic = rng.randrange(12)
        legato = index % 4 < 2
        tempo = float(rng.randrange(60, 100) if legato else rng.randrange(70, 170))
        events, beats = _progression_events(rng, tonic, mode, tempo, seconds, legato)
        kind = "legato progression" if legato else "groove"
        yield kind, _key_name(tonic, mode), tempo, events, beats, 4


def _hymn_events(rng: random.Random, tonic: int, mode: str, tempo: float, seconds: float,
                 beats_per_bar: int, applied_chance: float = 0.0,
                 fermata: tuple[float, float] | None = None, ornaments: Any = None,
                 ) -> tuple[list[NoteEvent], list[float]]:  # fmt: skip
    """A hymn of `bench/hymns.py` in seconds: voices legato, a repeated note struck again;
    `fermata`: its (fermata chance, passing-tone chance); `ornaments`: its `Ornaments`."""
    from bench.hymns import PASSING_CHANCE, write_hymn

    fermata_chance, passing_chance = fermata or (0.0, PASSING_CHANCE)
    beat_s = 60.0 / tempo
    beats = int(seconds / beat_s) + 2
    notes = write_hymn(rng, tonic, mode, beats, beats_per_bar, applied_chance, fermata_chance,
                       passing_chance, ornaments)  # fmt: skip
    return _timed(rng, notes, tempo), [index * beat_s for index in range(beats + 1)]


def _timed(rng: random.Random, notes: list[Any], tempo: float) -> list[NoteEvent]:
    """Hymn notes (`bench.hymns.HymnNote`) at `tempo`, each ended 30 ms early (a repeated note
    is struck again), at a random velocity."""
    beat_s = 60.0 / tempo
    return [NoteEvent(note.beat * beat_s, (note.beat + note.beats) * beat_s - 0.03, note.pitch,
                      note.voice, rng.randrange(78, 96)) for note in notes]  # fmt: skip


def _extra_clips(rng: random.Random, seconds: float) -> Iterator[tuple[
        str, str, float, list[NoteEvent], list[float], int]]:  # fmt: skip
    """The second set: hymns (no drums), then grooves (drums)."""
    yield from _hymns(rng, seconds, HYMNS, "hymn")
    for index in range(EXTRA_GROOVES):
        mode = ("major", "minor")[index % 2]
        tonic = rng.randrange(12)
        tempo = float(rng.randrange(70, 176))
        events, beats = _progression_events(rng, tonic, mode, tempo, seconds, False,
                                            EXTRA_MINOR_PROGRESSIONS)  # fmt: skip
        yield "groove", _key_name(tonic, mode), tempo, events, beats, 4


def _hymns(rng: random.Random, seconds: float, count: int, source: str,
           applied_chance: float = 0.0, tempi: tuple[int, int] = (50, 111),
           three_four_chance: float = 0.2, fermata: tuple[float, float] | None = None,
           ornaments: Any = None,
           ) -> Iterator[tuple[str, str, float, list[NoteEvent], list[float], int]]:  # fmt: skip
    """`count` hymns, major and minor in turn, at `tempi` BPM (50-110), `three_four_chance` of
    them in 3/4 (one in five); `fermata`, `ornaments`: see `_hymn_events`."""
    for index in range(count):
        mode = ("major", "minor")[index % 2]
        tonic = rng.randrange(12)
        tempo = float(rng.randrange(*tempi))
        per_bar = 3 if rng.random() < three_four_chance else 4
        events, beats = _hymn_events(rng, tonic, mode, tempo, seconds, per_bar, applied_chance,
                                     fermata, ornaments)  # fmt: skip
        yield source, _key_name(tonic, mode), tempo, events, beats, per_bar


def _modulating_hymns(rng: random.Random, seconds: float, count: int) -> Iterator[tuple[
        str, str, float, list[NoteEvent], list[float], int]]:  # fmt: skip
    """`count` modulating hymns, major and minor in turn, one in five in 3/4, of three kinds in
    turn: the whole hymn inside the clip (3 or 4 phrases, the tempo at least what fits them, up
    to 110 BPM), ending on its final cadence at home; a hymn going on past the clip's end
    (50-110 BPM, a phrase more than the clip holds); an excerpt of its first two phrases, ending
    at rest on the cadence in the other key (as an excerpt cut at a phrase's end does)."""
    from bench.hymns import write_modulating_hymn

    for index in range(count):
        mode = ("major", "minor")[index % 2]
        tonic = rng.randrange(12)
        per_bar = 3 if rng.random() < 0.2 else 4
        phrase_beats = 2 * per_bar
        kind = index % 3
        if kind == 0:
            phrases = rng.choice((3, 4))
            slowest = max(50, -(-60 * phrases * phrase_beats // int(seconds)))
            tempo = float(rng.randrange(slowest, 111))
        else:
            tempo = float(rng.randrange(50, 111))
            phrases = int(seconds * tempo / 60.0) // phrase_beats + 1
        notes = write_modulating_hymn(rng, tonic, mode, phrases, per_bar,
                                      MODULATING_APPLIED_CHANCE)  # fmt: skip
        if kind == 2:
            notes = [note for note in notes if note.beat < 2 * phrase_beats]
        beats = [beat * 60.0 / tempo for beat in range(int(seconds * tempo / 60.0) + 2)]
        yield ("modulating hymn", _key_name(tonic, mode), tempo, _timed(rng, notes, tempo), beats,
               per_bar)  # fmt: skip


def split_of(clip: CorpusClip) -> str:
    """"tuning" or "validation": a fixed hash of the clip's file name, half and half."""
    return "validation" if zlib.crc32(Path(clip.path).name.encode()) % 2 else "tuning"


def _cached(index_path: Path, version: int, seconds: float) -> list[CorpusClip] | None:
    if not index_path.exists():
        return None
    index = json.loads(index_path.read_text())
    if index.get("version") != version or index.get("seconds") != seconds:
        return None
    return [CorpusClip(**clip) for clip in index["clips"]]


def _render_all(cache: Path, found: Iterator[tuple[str, str, float, list[NoteEvent],
                list[float], int]], rng: random.Random, prefix: str,
                ensembles_by_source: dict[str, dict[str, tuple[int, ...]]],
                drums_of: Any, seconds: float) -> list[CorpusClip]:  # fmt: skip
    clips: list[CorpusClip] = []
    with tempfile.TemporaryDirectory() as scratch:
        midi_path = Path(scratch) / "clip.mid"
        for number, (source, key, tempo, events, beats, per_bar) in enumerate(found):
            table = ensembles_by_source.get(source, ENSEMBLES)
            ensemble = list(table)[number % len(table)]
            drums = bool(drums_of(number, source))
            pattern = rng.choice(list(DRUM_PATTERNS))
            notes = events + (_drum_events(beats, pattern, per_bar) if drums else [])
            _write_midi(notes, table[ensemble], tempo, midi_path)
            wav_path = cache / f"{prefix}{number:03d}.wav"
            _render(midi_path, wav_path, seconds)
            clips.append(CorpusClip(str(wav_path), key, tempo, drums, source, ensemble))
            print(f"  {wav_path.name}: {source}, {key}, {tempo:g} BPM, {ensemble}"
                  f"{', drums (' + pattern + ')' if drums else ''}", flush=True)  # fmt: skip
    return clips


def build_corpus(cache: Path = DEFAULT_CACHE, seconds: float = 20.0,
                 seed: int = 13) -> list[CorpusClip]:  # fmt: skip
    """Render the corpus into `cache` once (each set reused while its index matches its
    version): the first set of compositions and progressions, then the hymns and grooves, the
    chromatic hymns, the modulating hymns, the fermata hymns and the ornamented hymns."""
    sets = _corpus_sets(seed)
    found = [_cached(cache / index, version, seconds) for index, version, _ in sets]
    if all(clips is not None for clips in found):
        return [clip for clips in found for clip in clips or ()]
    missing = tools_missing()
    if missing:
        raise RuntimeError(missing)
    cache.mkdir(parents=True, exist_ok=True)
    corpus: list[CorpusClip] = []
    for (index, version, render), cached in zip(sets, found, strict=True):
        clips = cached if cached is not None else render(cache, seconds)
        if cached is None:
            _write_index(cache / index, version, seconds, clips)
        corpus += clips
    return corpus


def _baroque_ornaments() -> Any:
    """The figures of the ornamented set (also half the fast set): V8-7, cadential 4-3
    suspensions, Picardy thirds and a bass in eighths at the `ORNAMENTED_` chances."""
    from bench.hymns import Ornaments

    return Ornaments(ORNAMENTED_SEVENTH_CHANCE, ORNAMENTED_SUSPENSION_CHANCE, True,
                     ORNAMENTED_BASS_EIGHTHS_CHANCE)  # fmt: skip


def _corpus_sets(seed: int) -> list[tuple[str, int, Any]]:
    """Each set of the corpus: its index file, its version, and how it is rendered (a function
    of the cache folder and the clip length)."""

    def first(cache: Path, seconds: float) -> list[CorpusClip]:
        rng = random.Random(seed)
        ensembles = list(ENSEMBLES)

        def first_drums(number: int, source: str) -> bool:
            if source == "legato progression":
                return False
            return (number + number // len(ensembles)) % 2 == 1 or source == "groove"

        return _render_all(cache, _clips_to_render(rng, seconds), rng, "clip", {},
                           first_drums, seconds)  # fmt: skip

    def extra(cache: Path, seconds: float) -> list[CorpusClip]:
        rng = random.Random(EXTRA_SEED)
        return _render_all(cache, _extra_clips(rng, seconds), rng, "extra",
                           {"hymn": HYMN_ENSEMBLES}, lambda _, source: source == "groove",
                           seconds)  # fmt: skip

    def hymn_set(seed_of_set: int, prefix: str, source: str, clips: Any) -> Any:
        def render(cache: Path, seconds: float) -> list[CorpusClip]:
            rng = random.Random(seed_of_set)
            return _render_all(cache, clips(rng, seconds), rng, prefix,
                               {source: HYMN_ENSEMBLES}, lambda *_: False, seconds)  # fmt: skip

        return render

    def chromatic(rng: random.Random, seconds: float) -> Any:
        return _hymns(rng, seconds, CHROMATIC_HYMNS, "chromatic hymn", APPLIED_CHANCE)

    def fermata(rng: random.Random, seconds: float) -> Any:
        return _hymns(rng, seconds, FERMATA_HYMNS, "fermata hymn", 0.0, FERMATA_TEMPI,
                      FERMATA_THREE_FOUR_CHANCE, (FERMATA_CHANCE, FERMATA_PASSING_CHANCE))

    def ornamented(rng: random.Random, seconds: float) -> Any:
        ornaments = _baroque_ornaments()
        return _hymns(rng, seconds, ORNAMENTED_HYMNS, "ornamented hymn", ORNAMENTED_APPLIED_CHANCE,
                      ORNAMENTED_TEMPI, ORNAMENTED_THREE_FOUR_CHANCE,
                      (ORNAMENTED_FERMATA_CHANCE, ORNAMENTED_PASSING_CHANCE), ornaments)

    def fast(rng: random.Random, seconds: float) -> Any:
        ornaments = _baroque_ornaments()
        half = FAST_HYMNS // 2
        yield from _hymns(rng, seconds, half, "fast hymn", FAST_APPLIED_CHANCE, FAST_TEMPI,
                          FAST_THREE_FOUR_CHANCE)  # fmt: skip
        yield from _hymns(rng, seconds, FAST_HYMNS - half, "fast hymn", FAST_APPLIED_CHANCE,
                          FAST_TEMPI, FAST_THREE_FOUR_CHANCE,
                          (FAST_FERMATA_CHANCE, ORNAMENTED_PASSING_CHANCE), ornaments)

    return [
        ("index.json", CORPUS_VERSION, first),
        ("index-hymns.json", EXTRA_VERSION, extra),
        ("index-chromatic.json", CHROMATIC_VERSION,
         hymn_set(CHROMATIC_SEED, "chromatic", "chromatic hymn", chromatic)),
        ("index-modulating.json", MODULATING_VERSION,
         hymn_set(MODULATING_SEED, "modulating", "modulating hymn",
                  lambda rng, seconds: _modulating_hymns(rng, seconds, MODULATING_HYMNS))),
        ("index-fermata.json", FERMATA_VERSION,
         hymn_set(FERMATA_SEED, "fermata", "fermata hymn", fermata)),
        ("index-ornamented.json", ORNAMENTED_VERSION,
         hymn_set(ORNAMENTED_SEED, "ornamented", "ornamented hymn", ornamented)),
        ("index-fast.json", FAST_VERSION, hymn_set(FAST_SEED, "fast", "fast hymn", fast)),
    ]  # fmt: skip


def _write_index(path: Path, version: int, seconds: float, clips: list[CorpusClip]) -> None:
    document = {"version": version, "seconds": seconds,
                "clips": [asdict(clip) for clip in clips]}  # fmt: skip
    path.write_text(json.dumps(document, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--soundfont", type=Path, help="render through this soundfont instead")
    args = parser.parse_args()
    args.cache = use_soundfont(args.soundfont, args.cache)
    clips = build_corpus(args.cache, args.seconds)
    drums = sum(clip.drums for clip in clips)
    held = sum(split_of(clip) == "validation" for clip in clips)
    print(f"{len(clips)} clips in {args.cache} ({drums} with drums, {len(clips) - drums} without;"
          f" {len(clips) - held} tuning, {held} validation)")


if __name__ == "__main__":
    main()
