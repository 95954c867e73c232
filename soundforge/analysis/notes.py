"""Harmonic-aware chroma: an approximate transcription of the notes played, so a note's
overtones (the twelfth, the seventeenth...) do not count as other pitch classes.

After Mauch & Dixon's NNLS chroma (ISMIR 2010): a long-window spectrum (8192 samples at
22.05 kHz: 2.7 Hz bins, enough to resolve semitones down to the bass) is resampled onto a
log-frequency axis with three bins per semitone, its broadband floor (drums, noise) is removed
by subtracting a one-octave running mean, and each block of about half a second is explained as a
non-negative sum of note templates, each a harmonic series whose partials decay geometrically.
Non-negative least squares by multiplicative updates (Lee & Seung 2001), all blocks at once.
The activations summed per pitch class give the chroma; the notes in the bass register give a
separate bass chroma (the tonic sits in the bass more than anywhere else).

The bass chroma is transcribed from the harmonic part of the spectra only: a kick drum leaks
into the bass register (a drum kit alone transcribes as G-A bass notes, 80 % of its note
energy below G3). Median filtering separates the parts (Fitzgerald, DAFx 2010) on these
semitone-resolution spectra: along time for what sustains, along pitch for what is broadband,
and a soft (Wiener-like) mask keeps what sustains.

Tuning is estimated from where the spectral energy falls among the three bins of each semitone
and the templates are shifted by it. Written here with numpy (no library offers it under a
licence this MIT project can use: Essentia is AGPL, the NNLS-chroma Vamp plugin is GPL C++).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

NOTE_FFT = 8192
NOTE_HOP = 4096
CHUNK_FRAMES = 128  # 24 s per chunk, 4 MB of magnitudes
BINS_PER_SEMITONE = 3
SPECTRUM_LOWEST = 24  # MIDI C1 (32.7 Hz) ...
SPECTRUM_HIGHEST = 108  # ... to C8 (4186 Hz): the partials that matter for notes up to C7
TUNING_HIGHEST = 84  # C6 (1047 Hz)
NOTE_LOWEST = 24
NOTE_HIGHEST = 96
PARTIALS = 12
PARTIAL_DECAY = 0.8  # amplitude of partial h: PARTIAL_DECAY ** (h - 1); measured, see key.py
BLOCK_FRAMES = 3  # spectra averaged per block: 3 x 4096 / 22050 = 0.56 s
ITERATIONS = 40
BASS_HIGHEST = 55  # notes up to G3 count towards the bass chroma
WHITEN_BINS = 3 * 12 + 1  # one-octave running mean subtracted from the log spectrum
HARMONIC_FRAMES = 3  # median along time over 3 x 0.19 s: what sustains
PERCUSSIVE_BINS = 13  # median along pitch over 4 1/3 semitones: what is broadband


def spectrum_bins() -> int:
    return BINS_PER_SEMITONE * (SPECTRUM_HIGHEST - SPECTRUM_LOWEST + 1)


def _bin_frequencies() -> Float64Array:
    """Centre frequency of every log bin; the middle bin of each semitone is in tune (A440)."""
    semitones = SPECTRUM_LOWEST + (np.arange(spectrum_bins()) - 1) / BINS_PER_SEMITONE
    return 440.0 * 2.0 ** ((semitones - 69.0) / 12.0)


@dataclass(frozen=True)
class _LogMap:
    lower: npt.NDArray[np.intp]  # linear bin below each log bin centre
    weight: FloatArray  # interpolation weight of the bin above
    band_edges: npt.NDArray[np.intp]  # start, stop pairs for np.maximum.reduceat
    wide: npt.NDArray[np.bool_]  # log bins spanning two or more linear bins: take their max


@lru_cache(maxsize=4)
def _log_map(sample_rate: int, n_fft: int) -> _LogMap:
    position = _bin_frequencies() * n_fft / sample_rate
    lower = np.floor(position).astype(np.intp)
    half = 2.0 ** (1.0 / (24.0 * BINS_PER_SEMITONE))
    starts = np.ceil(position / half).astype(np.intp)
    stops = np.floor(position * half).astype(np.intp) + 1
    edges = np.stack((starts, np.maximum(stops, starts + 1)), axis=1).ravel()
    return _LogMap(lower, (position - lower).astype(np.float32), edges, (stops - starts) >= 2)


def log_spectrum(magnitude: FloatArray, sample_rate: int) -> FloatArray:
    """(frames, bins) magnitudes of an `NOTE_FFT`-point STFT onto the log-frequency axis:
    interpolated where linear bins are sparser than log bins, the band maximum where denser."""
    mapping = _log_map(sample_rate, NOTE_FFT)
    interpolated = (magnitude[:, mapping.lower] * (1.0 - mapping.weight)
                    + magnitude[:, mapping.lower + 1] * mapping.weight)  # fmt: skip
    band_max = np.maximum.reduceat(magnitude, mapping.band_edges, axis=1)[:, ::2]
    spectrum: FloatArray = np.where(mapping.wide, band_max, interpolated).astype(np.float32)
    return spectrum


def _median_filter(values: FloatArray, width: int, axis: int) -> FloatArray:
    """Running median of odd `width` along `axis`, edges repeated (a partition, not a sort)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (width // 2, width // 2)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(values, pad, mode="edge"),
                                                       width, axis=axis)  # fmt: skip
    filtered: FloatArray = np.partition(windows, width // 2, axis=-1)[..., width // 2]
    return filtered


def harmonic_part(spectra: FloatArray) -> FloatArray:
    """The sustained part of log spectra (frames, bins): each bin times H^2 / (H^2 + P^2),
    H its median over `HARMONIC_FRAMES` frames, P over `PERCUSSIVE_BINS` bins."""
    values = np.asarray(spectra, dtype=np.float32)
    if values.shape[0] == 0:
        return values
    sustained = _median_filter(values, HARMONIC_FRAMES, 0) ** 2
    broadband = _median_filter(values, PERCUSSIVE_BINS, 1) ** 2
    harmonic: FloatArray = values * (sustained / (sustained + broadband + np.float32(1e-20)))
    return harmonic


def estimate_tuning(spectra: Float64Array) -> float:
    """Deviation from A440 in semitones (-0.5..0.5): the phase of the energy pattern over the
    three bins of each semitone (in tune: centred on the middle one), below `TUNING_HIGHEST`
    where the fundamentals are (clicks, cymbals and stretched high partials stay out)."""
    energy = spectra[:, : BINS_PER_SEMITONE * (TUNING_HIGHEST - SPECTRUM_LOWEST)].sum(axis=0)
    phase = np.exp(2j * np.pi * np.arange(energy.size) / BINS_PER_SEMITONE)
    angle = float(np.angle(np.sum(energy * phase)))
    deviation = (angle - 2.0 * np.pi / BINS_PER_SEMITONE) / (2.0 * np.pi)
    return float((deviation + 0.5) % 1.0 - 0.5)


@lru_cache(maxsize=32)
def note_templates(tuning: float = 0.0, decay: float = PARTIAL_DECAY) -> Float64Array:
    """(bins, notes) unit-norm templates: a harmonic series per note with geometric decay,
    each partial split between its two nearest log bins."""
    bins = spectrum_bins()
    notes = np.arange(NOTE_LOWEST, NOTE_HIGHEST + 1)
    templates = np.zeros((bins, notes.size))
    for column, note in enumerate(notes):
        for partial in range(1, PARTIALS + 1):
            position = BINS_PER_SEMITONE * (
                note - SPECTRUM_LOWEST + 12.0 * np.log2(partial) + tuning) + 1  # fmt: skip
            lower = int(np.floor(position))
            if lower + 1 >= bins:
                break
            weight = position - lower
            amplitude = decay ** (partial - 1)
            templates[lower, column] += amplitude * (1.0 - weight)
            templates[lower + 1, column] += amplitude * weight
    templates /= np.linalg.norm(templates, axis=0, keepdims=True)
    return templates


def whiten(spectra: Float64Array) -> Float64Array:
    """Remove the broadband floor: subtract a one-octave running mean, keep what is above."""
    half = WHITEN_BINS // 2
    padded = np.pad(spectra, ((0, 0), (half, half)), mode="edge")
    cumulative = np.cumsum(padded, axis=1)
    cumulative = np.concatenate((np.zeros((spectra.shape[0], 1)), cumulative), axis=1)
    mean = (cumulative[:, WHITEN_BINS:] - cumulative[:, :-WHITEN_BINS]) / WHITEN_BINS
    whitened: Float64Array = np.maximum(spectra - mean, 0.0)
    return whitened


def transcribe(spectra: Float64Array, tuning: float,
               decay: float = PARTIAL_DECAY) -> Float64Array:  # fmt: skip
    """Non-negative note activations (blocks, notes) whose templates best sum to `spectra`."""
    templates = note_templates(round(tuning, 2), decay)
    if spectra.shape[0] == 0:
        return np.zeros((0, templates.shape[1]))
    numerator = spectra @ templates  # (blocks, notes)
    gram = templates.T @ templates
    activations = np.maximum(numerator, 0.0) + 1e-9
    for _ in range(ITERATIONS):
        activations *= numerator / (activations @ gram + 1e-12)
    return activations


def blocks(spectra: FloatArray) -> Float64Array:
    """Mean of every `BLOCK_FRAMES` consecutive spectra (the last block may be shorter)."""
    count = spectra.shape[0]
    if count == 0:
        return np.zeros((0, spectra.shape[1]))
    starts = np.arange(0, count, BLOCK_FRAMES)
    sums = np.add.reduceat(spectra.astype(np.float64), starts, axis=0)
    sizes = np.diff(np.append(starts, count))
    averaged: Float64Array = sums / sizes[:, None]
    return averaged


@dataclass(frozen=True)
class NoteChroma:
    """Per block (about 0.56 s): pitch-class energy of the transcribed notes, all registers
    and the bass register; plus the tuning found."""

    chroma: Float64Array  # (blocks, 12), C first
    bass_chroma: Float64Array  # (blocks, 12), of the harmonic part (drums left out)
    tuning: float  # semitones from A440
    block_seconds: float
    tonality: float  # share of the whitened spectrum's energy the notes explain (noise: low)


def _fold(activations: Float64Array, notes: npt.NDArray[np.int64]) -> Float64Array:
    chroma = np.zeros((activations.shape[0], 12))
    np.add.at(chroma.T, notes % 12, activations.T)
    return chroma


def note_chroma(spectra: FloatArray, sample_rate: int) -> NoteChroma:
    """From log spectra (frames, bins) of the whole file to per-block chroma."""
    averaged = whiten(blocks(spectra))
    tuning = estimate_tuning(averaged) if averaged.size else 0.0
    activations = transcribe(averaged, tuning)
    templates = note_templates(round(tuning, 2))
    residual = float(np.sum((averaged - activations @ templates.T) ** 2))
    energy = float(np.sum(averaged**2))
    notes = np.arange(NOTE_LOWEST, NOTE_HIGHEST + 1)
    bass = notes <= BASS_HIGHEST
    sustained = transcribe(whiten(blocks(harmonic_part(spectra))), tuning)
    return NoteChroma(
        chroma=_fold(activations, notes),
        bass_chroma=_fold(sustained[:, bass], notes[bass]),
        tuning=tuning,
        block_seconds=BLOCK_FRAMES * NOTE_HOP / sample_rate,
        tonality=1.0 - residual / energy if energy > 0 else 0.0,
    )
