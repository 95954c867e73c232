"""The demo's song, synthesized so `soundforge demo` needs no download: a few bars of drums
(kick, snare, hi-hat), a bass line and sustained chords at a known tempo and key, written as a
16-bit stereo WAV. Deterministic for a given seed; numpy and soundfile only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

SAMPLE_RATE = 44100
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR_TRIAD = (0, 4, 7)
HAT_GAIN = 0.06
PROGRESSION = (0, 5, 7, 0)  # I - IV - V - I, one chord per bar, in semitones above the tonic


@dataclass(frozen=True)
class DemoSong:
    """What was written: the file and the truth the analysis should find."""

    path: Path
    tempo_bpm: float
    key: str
    duration_s: float


def write_demo_song(
    path: Path | str,
    *,
    tempo_bpm: float = 120.0,
    tonic: str = "C",
    bars: int = 4,
    seed: int = 7,
    sample_rate: int = SAMPLE_RATE,
) -> DemoSong:
    """Write `bars` bars of 4/4 in `tonic` major at `tempo_bpm` to `path` (WAV)."""
    import soundfile

    tonic_pc = PITCH_CLASSES.index(tonic)
    beat_s = 60.0 / tempo_bpm
    duration_s = bars * 4 * beat_s
    length = round(duration_s * sample_rate)
    rng = np.random.default_rng(seed)
    drums = _drums(length, beat_s, sample_rate, rng)
    bass = np.zeros(length)
    chords = np.zeros(length)
    for bar in range(bars):
        root_pc = tonic_pc + PROGRESSION[bar % len(PROGRESSION)]
        bar_start = round(bar * 4 * beat_s * sample_rate)
        bar_length = round(4 * beat_s * sample_rate)
        chord = sum(_tone(_midi_hz(60 + root_pc + step), bar_length, sample_rate, harmonics=4)
                    for step in MAJOR_TRIAD)  # fmt: skip
        _place(chords, chord * _envelope(bar_length, sample_rate, attack_s=0.02, release_s=0.1),
               bar_start, gain=0.12)  # fmt: skip
        quarter = round(beat_s * sample_rate)
        for step in range(4):  # quarter-note bass on the chord's root, the fifth on beat 3
            midi = 36 + root_pc + (7 if step == 2 else 0)
            note = _tone(_midi_hz(midi), quarter, sample_rate, harmonics=3)
            _place(bass, note * _envelope(quarter, sample_rate, 0.005, 0.05),
                   bar_start + step * quarter, gain=0.35)  # fmt: skip
    mix = drums + bass + chords
    left = mix + 0.04 * chords  # a little width: chords slightly left, hats slightly right
    right = mix + 0.04 * drums
    stereo = np.stack([left, right], axis=1)
    stereo *= 0.9 / max(float(np.max(np.abs(stereo))), 1e-9)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(target), stereo, sample_rate, subtype="PCM_16")
    return DemoSong(target, tempo_bpm, f"{tonic} major", duration_s)


def _drums(length: int, beat_s: float, sample_rate: int, rng: np.random.Generator) -> FloatArray:
    track = np.zeros(length)
    kick = _kick(sample_rate)
    snare = _noise(rng, sample_rate, 0.18, 0.05) + 0.3 * _tone(190.0, round(0.18 * sample_rate),
                                                                 sample_rate, 1)  # fmt: skip
    hat = _highpass(_noise(rng, sample_rate, 0.05, 0.012))
    beats = int(length / (beat_s * sample_rate))
    for beat in range(beats):
        start = round(beat * beat_s * sample_rate)
        _place(track, kick if beat % 2 == 0 else snare * _decay(len(snare), sample_rate, 0.06),
               start, gain=0.9 if beat % 2 == 0 else 0.5)  # fmt: skip
        for half in (0, 1):
            _place(track, hat, start + round(half * beat_s / 2 * sample_rate), gain=HAT_GAIN)
    return track


def _kick(sample_rate: int) -> FloatArray:
    length = round(0.25 * sample_rate)
    t = np.arange(length) / sample_rate
    frequency = 50.0 + 100.0 * np.exp(-t / 0.03)  # a falling pitch sweep
    phase = 2 * np.pi * np.cumsum(frequency) / sample_rate
    result: FloatArray = np.sin(phase) * _decay(length, sample_rate, 0.08)
    return result


def _noise(
    rng: np.random.Generator, sample_rate: int, seconds: float, decay_s: float
) -> FloatArray:
    length = round(seconds * sample_rate)
    result: FloatArray = rng.uniform(-1.0, 1.0, length) * _decay(length, sample_rate, decay_s)
    return result


def _highpass(signal: FloatArray) -> FloatArray:
    result: FloatArray = np.diff(signal, prepend=0.0)  # first difference: a gentle high-pass
    return result


def _tone(frequency_hz: float, length: int, sample_rate: int, harmonics: int) -> FloatArray:
    t = np.arange(length) / sample_rate
    result: FloatArray = sum(  # type: ignore[assignment]
        np.sin(2 * np.pi * frequency_hz * k * t) / k for k in range(1, harmonics + 1)
    )
    return result


def _decay(length: int, sample_rate: int, time_constant_s: float) -> FloatArray:
    result: FloatArray = np.exp(-np.arange(length) / (time_constant_s * sample_rate))
    return result


def _envelope(length: int, sample_rate: int, attack_s: float, release_s: float) -> FloatArray:
    envelope = np.ones(length)
    attack = min(length, round(attack_s * sample_rate))
    release = min(length - attack, round(release_s * sample_rate))
    envelope[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
    if release:
        envelope[length - release:] = np.linspace(1.0, 0.0, release)
    return envelope


def _midi_hz(midi: float) -> float:
    return float(440.0 * 2.0 ** ((midi - 69) / 12))


def _place(track: FloatArray, sound: FloatArray, start: int, gain: float) -> None:
    end = min(len(track), start + len(sound))
    if end > start:
        track[start:end] += gain * sound[: end - start]
