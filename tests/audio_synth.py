"""Synthesized test audio with known truth: drum patterns at a given tempo, chord progressions
with a bass line in a given key, and `write_test_song` that mixes both into a file.

Everything is deterministic (seeded noise) and made of numpy only, so any test can build the
audio it needs in a temporary folder instead of committing audio files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile

FloatArray = npt.NDArray[np.float64]

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#"}

# Chords as (scale-degree root in semitones above the tonic, intervals above the chord root).
_MAJOR_TRIAD = (0, 4, 7)
_MINOR_TRIAD = (0, 3, 7)
_DOMINANT_SEVENTH = (0, 4, 7, 10)
MAJOR_PROGRESSIONS: dict[str, tuple[tuple[int, tuple[int, ...]], ...]] = {
    "I-IV-V-I": ((0, _MAJOR_TRIAD), (5, _MAJOR_TRIAD), (7, _MAJOR_TRIAD), (0, _MAJOR_TRIAD)),
    "I-vi-IV-V7": ((0, _MAJOR_TRIAD), (9, _MINOR_TRIAD), (5, _MAJOR_TRIAD), (7, _DOMINANT_SEVENTH)),
    "I-V-vi-IV": ((0, _MAJOR_TRIAD), (7, _MAJOR_TRIAD), (9, _MINOR_TRIAD), (5, _MAJOR_TRIAD)),
}
MINOR_PROGRESSIONS: dict[str, tuple[tuple[int, tuple[int, ...]], ...]] = {
    "i-iv-V7-i": ((0, _MINOR_TRIAD), (5, _MINOR_TRIAD), (7, _DOMINANT_SEVENTH), (0, _MINOR_TRIAD)),
    "i-VI-iv-V": ((0, _MINOR_TRIAD), (8, _MAJOR_TRIAD), (5, _MINOR_TRIAD), (7, _MAJOR_TRIAD)),
    "i-VII-VI-VII": ((0, _MINOR_TRIAD), (10, _MAJOR_TRIAD), (8, _MAJOR_TRIAD), (10, _MAJOR_TRIAD)),
}


def parse_key(key: str) -> tuple[int, str]:
    """`"F# minor"` -> (6, "minor"); flats are accepted (`"Bb major"`)."""
    tonic_name, mode = key.split()
    tonic_name = _FLATS.get(tonic_name, tonic_name)
    if mode not in ("major", "minor") or tonic_name not in PITCH_CLASSES:
        raise ValueError(f"not a key: {key!r}")
    return PITCH_CLASSES.index(tonic_name), mode


def _midi_to_hz(midi: float) -> float:
    return float(440.0 * 2.0 ** ((midi - 69.0) / 12.0))


def _decay(length: int, sample_rate: int, time_constant_s: float) -> FloatArray:
    return np.exp(-np.arange(length) / (time_constant_s * sample_rate))


def _kick(sample_rate: int) -> FloatArray:
    length = int(0.35 * sample_rate)
    t = np.arange(length) / sample_rate
    frequency = 45.0 + 110.0 * np.exp(-t / 0.03)  # pitch sweep 155 Hz -> 45 Hz
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    return np.sin(phase) * _decay(length, sample_rate, 0.09)


def _noise_burst(
    rng: np.random.Generator,
    sample_rate: int,
    seconds: float,
    time_constant_s: float,
    highpass: bool,
) -> FloatArray:
    length = int(seconds * sample_rate)
    noise = rng.standard_normal(length)
    if highpass:  # first difference twice: a cheap, steep-enough high-pass for a hi-hat
        noise = np.diff(noise, n=2, prepend=[0.0, 0.0]) / 4.0
    return noise * _decay(length, sample_rate, time_constant_s)


def _snare(rng: np.random.Generator, sample_rate: int) -> FloatArray:
    burst = _noise_burst(rng, sample_rate, 0.25, 0.05, highpass=False)
    t = np.arange(burst.size) / sample_rate
    body = np.sin(2 * np.pi * 190.0 * t) * _decay(burst.size, sample_rate, 0.04)
    return 0.5 * burst + 0.6 * body


def _place(track: FloatArray, sound: FloatArray, start: int, gain: float) -> None:
    if start >= track.size:
        return
    end = min(track.size, start + sound.size)
    track[start:end] += gain * sound[: end - start]


# Drum patterns over one bar of 4 beats in sixteenths: (position in sixteenths, sound, gain).
DRUM_STYLES: dict[str, tuple[tuple[int, str, float], ...]] = {
    # kick on every beat, snare on 2 and 4, closed hi-hat on the eighths (weaker off the beat)
    "rock": (
        *((beat * 4, "kick", 0.9) for beat in range(4)),
        (4, "snare", 0.7), (12, "snare", 0.7),
        *((beat * 4, "hat", 0.5) for beat in range(4)),
        *((beat * 4 + 2, "hat", 0.3) for beat in range(4)),
    ),
    # four on the floor with the hi-hat on every off-beat (dance music)
    "four-on-the-floor": (
        *((beat * 4, "kick", 0.9) for beat in range(4)),
        (4, "snare", 0.5), (12, "snare", 0.5),
        *((beat * 4 + 2, "hat", 0.5) for beat in range(4)),
    ),
    # the rock backbeat: kick on 1 and 3, snare on 2 and 4, eighth-note hi-hats (kick and snare
    # alternate, so the pattern repeats every two beats: the tempogram peaks at half the tempo)
    "backbeat": (
        (0, "kick", 0.9), (8, "kick", 0.9), (4, "snare", 0.8), (12, "snare", 0.8),
        *((eighth * 2, "hat", 0.4 if eighth % 2 == 0 else 0.3) for eighth in range(8)),
    ),
    # syncopated kick (1, "and" of 2, 3), snare on 2 and 4, sixteenth-note hi-hats
    "funk": (
        (0, "kick", 0.9), (6, "kick", 0.7), (8, "kick", 0.9), (10, "kick", 0.6),
        (4, "snare", 0.8), (12, "snare", 0.8),
        *((sixteenth, "hat", 0.35 if sixteenth % 4 == 0 else 0.2) for sixteenth in range(16)),
    ),
}  # fmt: skip


def drum_pattern(
    seconds: float, tempo: float, sample_rate: int = 44100, seed: int = 0, style: str = "rock"
) -> FloatArray:
    """A bar-long pattern from `DRUM_STYLES`, looped at `tempo` BPM (the quarter note).
    Mono, peak about 0.5."""
    rng = np.random.default_rng(seed)
    track = np.zeros(int(seconds * sample_rate))
    sounds = {
        "kick": _kick(sample_rate),
        "snare": _snare(rng, sample_rate),
        "hat": _noise_burst(rng, sample_rate, 0.06, 0.012, highpass=True),
    }
    sixteenth_s = 15.0 / tempo
    bar_count = int(seconds / (16 * sixteenth_s)) + 1
    for bar in range(bar_count):
        for position, sound, gain in DRUM_STYLES[style]:
            start = round((bar * 16 + position) * sixteenth_s * sample_rate)
            _place(track, sounds[sound], start, gain)
    return 0.5 * track / max(1e-9, float(np.max(np.abs(track))))


def _tone(frequency_hz: float, length: int, sample_rate: int, harmonics: int) -> FloatArray:
    t = np.arange(length) / sample_rate
    tone = np.zeros(length)
    for harmonic in range(1, harmonics + 1):
        if frequency_hz * harmonic >= sample_rate / 2:
            break
        tone += np.sin(2 * np.pi * frequency_hz * harmonic * t) / harmonic
    attack = min(length, int(0.01 * sample_rate))
    envelope = _decay(length, sample_rate, 1.2)
    envelope[:attack] *= np.linspace(0.0, 1.0, attack)
    release = min(length, int(0.05 * sample_rate))
    envelope[length - release :] *= np.linspace(1.0, 0.0, release)
    return tone * envelope


def chord_progression(
    seconds: float,
    key: str,
    tempo: float = 120.0,
    sample_rate: int = 44100,
    progression: str | None = None,
    harmonics: int = 6,
) -> FloatArray:
    """A looped four-chord progression in `key` ("A minor", "F# major"), one chord per bar of
    four beats at `tempo`, voiced around middle C with the chord root in the bass (octave 2).
    `progression` names one of MAJOR_PROGRESSIONS / MINOR_PROGRESSIONS (default: the first of
    the key's mode). Mono, peak about 0.5."""
    tonic, mode = parse_key(key)
    table = MAJOR_PROGRESSIONS if mode == "major" else MINOR_PROGRESSIONS
    chords = table[progression or next(iter(table))]
    track = np.zeros(int(seconds * sample_rate))
    bar_length = round(4 * 60.0 / tempo * sample_rate)
    for bar_index in range(track.size // bar_length + 1):
        degree, intervals = chords[bar_index % len(chords)]
        root_pitch_class = (tonic + degree) % 12
        start = bar_index * bar_length
        bar = np.zeros(bar_length)
        for interval in intervals:  # close voicing from the root in octave 4 (MIDI 60..71)
            bar += 0.25 * _tone(
                _midi_to_hz(60 + root_pitch_class + interval), bar_length, sample_rate, harmonics
            )
        bar += 0.45 * _tone(_midi_to_hz(36 + root_pitch_class), bar_length, sample_rate, harmonics)
        _place(track, bar, start, 1.0)
    return 0.5 * track / max(1e-9, float(np.max(np.abs(track))))


def write_test_song(
    path: Path | str,
    seconds: float,
    sample_rate: int = 44100,
    tempo: float = 120.0,
    key: str = "C major",
    channels: int = 2,
    drums: bool = True,
    chords: bool = True,
    seed: int = 0,
    progression: str | None = None,
    harmonics: int = 6,
    drum_style: str = "rock",
) -> Path:
    """Write drums at `tempo` plus a chord progression in `key` to `path` (format from the
    suffix: .wav, .flac, .ogg, .mp3). Stereo copies get slightly different gains so a downmix
    is not a no-op. Returns the path."""
    path = Path(path)
    mix = np.zeros(int(seconds * sample_rate))
    if drums:
        mix += drum_pattern(seconds, tempo, sample_rate, seed, drum_style)
    if chords:
        mix += 0.8 * chord_progression(seconds, key, tempo, sample_rate, progression, harmonics)
    mix *= 0.8 / max(1e-9, float(np.max(np.abs(mix))))
    gains = np.linspace(1.0, 0.8, channels) if channels > 1 else np.ones(1)
    soundfile.write(str(path), np.outer(mix, gains).astype(np.float32), sample_rate)
    return path


# Partial amplitudes (fundamental first) of a few instrument-like timbres, after published
# spectra of sustained tones: the third partial (a twelfth above, the fifth's pitch class) is as
# strong as the fundamental or stronger in the organ and reed, which is what pulls a chroma
# built from raw spectra towards the dominant.
TIMBRES: dict[str, tuple[float, ...]] = {
    "organ": (1.0, 0.9, 1.0, 0.6, 0.5, 0.45, 0.3, 0.35, 0.2, 0.15, 0.12, 0.1),
    "reed": (0.6, 0.8, 1.0, 0.7, 0.8, 0.5, 0.45, 0.3, 0.3, 0.2, 0.15, 0.1),
    "strings": (1.0, 0.7, 0.8, 0.45, 0.5, 0.35, 0.3, 0.25, 0.2, 0.15, 0.12, 0.1),
    "piano": (1.0, 0.55, 0.45, 0.25, 0.3, 0.12, 0.1, 0.08, 0.06, 0.05),
}


def instrument_tone(frequency_hz: float, length: int, sample_rate: int, timbre: str,
                    seed: int = 0, attack_s: float = 0.02) -> FloatArray:  # fmt: skip
    """A sustained note with the partials of `timbre`: slight inharmonicity (piano-like
    stretch), a 5 Hz vibrato of 0.3 % on the sustained timbres, an `attack_s` attack (a bowed
    or sung swell: 0.15 s and more) and a 60 ms release, the piano decaying instead of
    sustaining."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / sample_rate
    sustained = timbre != "piano"
    vibrato = 1.0 + 0.003 * np.sin(2 * np.pi * 5.0 * t + rng.uniform(0, 6.28)) * sustained
    tone = np.zeros(length)
    for number, amplitude in enumerate(TIMBRES[timbre], start=1):
        partial_hz = frequency_hz * number * (1.0 + 0.0002 * number**2)
        if partial_hz >= sample_rate / 2:
            break
        phase = 2 * np.pi * np.cumsum(partial_hz * vibrato) / sample_rate
        tone += amplitude * np.sin(phase + rng.uniform(0, 6.28))
    envelope = np.ones(length) if sustained else _decay(length, sample_rate, 0.9)
    attack = min(length, int(attack_s * sample_rate))
    envelope[:attack] *= np.linspace(0.0, 1.0, attack)
    release = min(length, int(0.06 * sample_rate))
    envelope[length - release :] *= np.linspace(1.0, 0.0, release)
    return tone * envelope


def chord_sequence(
    chords: list[tuple[int, ...]],
    beats_per_chord: float,
    tempo: float,
    seconds: float,
    sample_rate: int = 22050,
    timbre: str = "organ",
    attack_s: float = 0.02,
) -> FloatArray:
    """Chords given as MIDI notes, each held legato for `beats_per_chord` beats at `tempo` and
    looped for `seconds`. Mono, peak about 0.5."""
    track = np.zeros(int(seconds * sample_rate))
    chord_length = round(beats_per_chord * 60.0 / tempo * sample_rate)
    for index in range(track.size // chord_length + 1):
        chord = chords[index % len(chords)]
        for voice, note in enumerate(chord):
            tone = instrument_tone(_midi_to_hz(note), chord_length, sample_rate, timbre,
                                   seed=index * 8 + voice, attack_s=attack_s)  # fmt: skip
            _place(track, tone, index * chord_length, 1.0 / len(chord))
    return 0.5 * track / max(1e-9, float(np.max(np.abs(track))))


def section_sequence(chords: list[tuple[int, ...]], tempo: float, seconds: float,
                     sample_rate: int = 22050, timbre: str = "strings", attack_s: float = 0.3,
                     players: int = 3, detune_cents: float = 8.0) -> FloatArray:  # fmt: skip
    """Chords as MIDI notes, one per beat at `tempo`, each note played by a section of
    `players` slightly detuned players (a string section, a choir: their beating makes the
    level waver) with a slow `attack_s` swell, each chord ringing 0.1 s into the next; looped
    for `seconds`. Mono, peak about 0.5."""
    track = np.zeros(int(seconds * sample_rate))
    length = round(60.0 / tempo * sample_rate)
    for index in range(track.size // length + 1):
        for voice, note in enumerate(chords[index % len(chords)]):
            for player in range(players):
                cents = detune_cents * (player - (players - 1) / 2)
                tone = instrument_tone(_midi_to_hz(note + cents / 100), length + sample_rate // 10,
                                       sample_rate, timbre, seed=index * 64 + voice * 8 + player,
                                       attack_s=attack_s)  # fmt: skip
                _place(track, tone, index * length, 1.0)
    return 0.5 * track / max(1e-9, float(np.max(np.abs(track))))


def click_track(seconds: float, tempo: float, sample_rate: int = 22050) -> FloatArray:
    """A short high click on every beat (a metronome). Peak about 0.5."""
    track = np.zeros(int(seconds * sample_rate))
    length = int(0.015 * sample_rate)
    t = np.arange(length) / sample_rate
    click = np.sin(2 * np.pi * 2000.0 * t) * _decay(length, sample_rate, 0.003)
    for beat in range(int(seconds * tempo / 60.0) + 1):
        _place(track, click, round(beat * 60.0 / tempo * sample_rate), 0.5)
    return track


def write_mono(path: Path | str, samples: FloatArray, sample_rate: int = 22050) -> Path:
    """Write mono float samples, scaled to peak 0.8, as a file (format from the suffix)."""
    path = Path(path)
    scaled = samples * (0.8 / max(1e-9, float(np.max(np.abs(samples)))))
    soundfile.write(str(path), scaled.astype(np.float32), sample_rate)
    return path


def groove(chords: list[tuple[int, ...]], tempo: float, seconds: float, sample_rate: int = 22050,
           drum_style: str = "backbeat", timbre: str = "piano") -> FloatArray:  # fmt: skip
    """A band: drums in `drum_style`, a bass on every beat (the chord's lowest note, octave
    jumps on the off-beats of the bar), the chord's upper notes struck on beats 1 and 3 and a
    lead in eighth notes on chord tones, one chord per bar of four beats at `tempo`, looped.
    Mono, peak about 0.5."""
    beat = round(60.0 / tempo * sample_rate)
    track = np.zeros(int(seconds * sample_rate))
    for bar in range(track.size // (4 * beat) + 1):
        chord = chords[bar % len(chords)]
        start = bar * 4 * beat
        for step in range(4):
            bass = chord[0] + (12 if step % 2 else 0)
            _place(track, instrument_tone(_midi_to_hz(bass), beat, sample_rate, "strings",
                                          seed=bar * 16 + step), start + step * beat, 0.35)
            if step in (0, 2):
                for voice, note in enumerate(chord[1:]):
                    _place(track, instrument_tone(_midi_to_hz(note), 2 * beat, sample_rate, timbre,
                                                  seed=bar * 16 + voice), start + step * beat,
                           0.12)
        for eighth in range(8):
            note = chord[1 + (eighth * 5 + bar) % (len(chord) - 1)] + 12
            _place(track, instrument_tone(_midi_to_hz(note), beat // 2, sample_rate, "reed",
                                          seed=bar * 16 + eighth), start + eighth * beat // 2,
                   0.1)
    track *= 0.5 / max(1e-9, float(np.max(np.abs(track))))
    return track + 0.6 * drum_pattern(seconds, tempo, sample_rate, style=drum_style)[: track.size]
