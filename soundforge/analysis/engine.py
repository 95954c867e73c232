"""The analysis engine: decode once, one STFT pass in chunks, then tempo/beats and key from what
that pass kept. A path in, an `AnalysisReport` and progress callbacks out; no database.

Memory is bounded for any length: samples stream through the decoder and the STFT a chunk at a
time, and only per-frame summaries are kept (128 mel powers, 12 chroma, 7+7 contrast levels and
six scalars per 23 ms frame: about 100 MB for an hour). The analysis runs at 22.05 kHz mono,
librosa's default rate, so features compare with the original system's librosa features.
Decoding the next block in a second thread was tried and measured: no gain on this shared
2-core machine (0.27-0.32 s either way for 180 s), so the pass stays single-threaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from soundforge import audio_io
from soundforge.analysis import chords, notes, spectral
from soundforge.analysis.frontend import HOP_LENGTH, N_FFT, FrameChunk, StftFrontend, real_fft
from soundforge.analysis.key import (
    KeyEstimate,
    estimate_key,
    key_profile_input,
    opening_bass,
    opening_span,
)
from soundforge.analysis.report import AnalysisReport
from soundforge.analysis.rhythm import (
    BACKBEAT_BANDS,
    SNARE_BANDS,
    BeatResult,
    align_onsets,
    percussiveness,
    rectified_rise,
    track_beats,
)
from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.errors import AbortCheck, JobAbortedError, ProgressCallback

logger = logging.getLogger(__name__)

ANALYSIS_SAMPLE_RATE = 22050
N_MFCC = 13
TOP_DB = 80.0
BROADBAND_RISE_DB = 6.0  # a mel band rising this much in a frame takes part in an onset
SILENCE_RMS = 1e-3  # loudest frame below -60 dBFS: silence
MIN_TEMPO_SECONDS = 4.0
MIN_KEY_SECONDS = 2.0
MIN_KEY_CONFIDENCE = 0.3  # noise and drones correlate about 0.2 with their best key
# Share of the whitened spectrum the transcribed notes explain: white / pink noise 0.29-0.38,
# the rendered corpus 0.50 and up (median 0.65).
MIN_TONALITY = 0.45
TUNING_FRAME_STEP = 4
DECODE_PROGRESS = 90.0  # share of the progress bar the decode + STFT pass covers
CURVE_STEP_S = 0.5  # the pictures' resolution: about two points a second

FloatArray = npt.NDArray[np.float32]


class _Progress:
    """Calls the user's callback with whole percentages, never decreasing, never repeating."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._last = -1

    def update(self, percent: float) -> None:
        whole = int(min(max(percent, 0.0), 100.0))
        if self._callback is not None and whole > self._last:
            self._last = whole
            self._callback(float(whole))


@dataclass
class _FrameFeatures:
    """Per-frame summaries of every chunk, appended as the STFT pass goes."""

    sample_rate: int
    banks: spectral.Filterbanks | None = None
    columns: dict[str, list[FloatArray]] = field(default_factory=dict)

    def add(self, chunk: FrameChunk) -> None:
        power = np.square(chunk.magnitude)
        if self.banks is None:  # tuning from the first chunk, as chroma_stft would per call
            # every TUNING_FRAME_STEP-th frame: the same histogram peak at a quarter of the cost
            tuning = spectral.estimate_tuning(power[::TUNING_FRAME_STEP], self.sample_rate, N_FFT)
            self.banks = spectral.filterbanks(self.sample_rate, N_FFT, round(tuning, 2))
        banks = self.banks
        centroid, bandwidth, total = spectral.spectral_centroid_bandwidth(chunk.magnitude, banks)
        peak_db, valley_db = spectral.spectral_contrast_levels(
            chunk.magnitude, banks.contrast_bands
        )
        mel, chroma = spectral.mel_and_chroma(power, banks)
        values = {
            "rms": chunk.rms,
            "zero_crossing_rate": chunk.zero_crossing_rate,
            "centroid": centroid,
            "bandwidth": bandwidth,
            "rolloff": spectral.spectral_rolloff(chunk.magnitude, banks.frequencies, total),
            "flatness": spectral.spectral_flatness(power),
            "contrast_peak_db": peak_db,
            "contrast_valley_db": valley_db,
            "chroma": chroma,
            "mel_power": mel,
        }
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)

    def joined(self, name: str) -> FloatArray:
        return (
            np.concatenate(self.columns[name]) if name in self.columns else np.zeros(0, np.float32)
        )


@dataclass(frozen=True)
class MelSummary:
    """What the rest of the analysis needs from the mel spectrum, per frame."""

    mfcc: FloatArray  # (frames, 13)
    onset_envelope: FloatArray  # (frames,)
    power_flux: FloatArray  # (frames,)
    broadband: FloatArray  # (frames,) share of mel bands rising over BROADBAND_RISE_DB
    low_onsets: FloatArray  # (frames,) the onset envelope of the bands under 4 kHz
    snare_onsets: FloatArray  # (frames,) ...and of the bands from 1.5 to 5 kHz


def _dct_basis(n_mels: int, n_mfcc: int) -> FloatArray:
    """(n_mels, n_mfcc) orthonormal DCT-II basis (`scipy.fft.dct(type=2, norm="ortho")`)."""
    rows = np.arange(n_mels)[:, None]
    orders = np.arange(n_mfcc)[None, :]
    basis = np.cos(np.pi * orders * (2 * rows + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
    basis[:, 0] /= np.sqrt(2.0)
    return np.ascontiguousarray(basis, dtype=np.float32)


def summarise_mel(mel_chunks: list[FloatArray]) -> MelSummary:
    """MFCCs (`librosa.feature.mfcc`: DCT-II of the mel dB spectrum, floored `TOP_DB` below the
    file's loudest bin), the onset envelope (rise of the same dB spectrum) and the linear-power
    flux, chunk by chunk, since the floor needs the whole file's maximum first."""
    loudest = max((float(chunk.max()) for chunk in mel_chunks if chunk.size), default=0.0)
    floor_db = np.float32(10.0 * np.log10(max(loudest, spectral.AMIN)) - TOP_DB)
    basis = _dct_basis(spectral.N_MELS, N_MFCC)
    mfcc, onset, power_flux, broadband, low_onsets, snare_onsets = [], [], [], [], [], []
    previous_db: FloatArray | None = None
    previous_power: FloatArray | None = None
    for power in mel_chunks:
        mel_db = np.maximum(spectral.power_to_db(power), floor_db)
        mfcc.append(mel_db @ basis)
        rise = rectified_rise(mel_db, previous_db)
        onset.append(rise.mean(axis=1))
        low_onsets.append(rise[:, :BACKBEAT_BANDS].mean(axis=1))
        snare_onsets.append(rise[:, SNARE_BANDS[0] : SNARE_BANDS[1]].mean(axis=1))
        broadband.append((rise > BROADBAND_RISE_DB).mean(axis=1, dtype=np.float32))
        power_flux.append(rectified_rise(power, previous_power).sum(axis=1))
        previous_db, previous_power = mel_db[-1], power[-1]

    def joined(parts: list[FloatArray]) -> FloatArray:
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    return MelSummary(
        mfcc=np.concatenate(mfcc) if mfcc else np.zeros((0, N_MFCC), np.float32),
        onset_envelope=align_onsets(joined(onset)),
        power_flux=align_onsets(joined(power_flux)),
        broadband=joined(broadband),
        low_onsets=align_onsets(joined(low_onsets)),
        snare_onsets=align_onsets(joined(snare_onsets)),
    )


def _mean(values: npt.NDArray[np.floating]) -> float:
    return float(np.mean(values, dtype=np.float64)) if values.size else 0.0


def _means(values: npt.NDArray[np.floating], width: int) -> list[float]:
    if values.shape[0] == 0:
        return [0.0] * width
    means: npt.NDArray[np.float64] = np.mean(values, axis=0, dtype=np.float64)
    return [float(value) for value in means]


def _variances(values: npt.NDArray[np.floating], width: int) -> list[float]:
    if values.shape[0] == 0:
        return [0.0] * width
    return [float(value) for value in np.var(values, axis=0, dtype=np.float64)]


def _downsampled(values: npt.NDArray[np.floating], frames_per_point: int,
                 digits: int) -> list[Any]:  # fmt: skip
    """Means of consecutive runs of `frames_per_point` frames, rounded, never NaN."""
    if values.shape[0] == 0:
        return []
    points = -(-values.shape[0] // frames_per_point)
    padded = np.full((points * frames_per_point, *values.shape[1:]), np.nan, np.float64)
    padded[: values.shape[0]] = values
    means = np.nanmean(padded.reshape(points, frames_per_point, *values.shape[1:]), axis=1)
    rounded: list[Any] = np.round(np.nan_to_num(means), digits).tolist()
    return rounded


def _curves(rms: FloatArray, features: _FrameFeatures, chroma: FloatArray,
            mfcc: FloatArray) -> dict[str, Any]:  # fmt: skip
    frames_per_point = max(1, round(CURVE_STEP_S * ANALYSIS_SAMPLE_RATE / HOP_LENGTH))
    return {
        "step_s": round(frames_per_point * HOP_LENGTH / ANALYSIS_SAMPLE_RATE, 4),
        "rms": _downsampled(rms, frames_per_point, 5),
        "centroid": _downsampled(features.joined("centroid"), frames_per_point, 1),
        "rolloff": _downsampled(features.joined("rolloff"), frames_per_point, 1),
        "chroma": _downsampled(chroma, frames_per_point, 3),
        "mfcc": _downsampled(mfcc, frames_per_point, 2),
    }


def _track(mel: MelSummary, chroma: FloatArray, duration: float,
           warnings: list[str]) -> BeatResult | None:  # fmt: skip
    """Tempo and beats of audio that is not silent; None for a clip too short (why goes to
    `warnings`)."""
    if duration < MIN_TEMPO_SECONDS:
        warnings.append(
            f"clip is {duration:.1f} s long, too short for a tempo (needs {MIN_TEMPO_SECONDS:g} s)"
        )
        return None
    return track_beats(mel.onset_envelope, mel.power_flux, ANALYSIS_SAMPLE_RATE, HOP_LENGTH,
                       percussiveness(mel.broadband), chroma,
                       mel.low_onsets, mel.snare_onsets)  # fmt: skip


def _tempo(beats: BeatResult | None, pitched: bool, warnings: list[str]) -> BeatResult:
    """The tempo to report: always an estimate for music (a weak pulse only lowers the
    confidence); none for a clip too short (`beats` None) or for noise (no pitched content and
    no pulse). Why there is none goes to `warnings`."""
    no_beats = np.zeros(0, np.int64)
    if beats is None:
        return BeatResult(None, no_beats)
    if beats.tempo is not None and not pitched and beats.confidence == 0.0:
        warnings.append(f"no steady beat and no pitched content (pulse clarity "
                        f"{beats.clarity:.2f}): no tempo")  # fmt: skip
        return BeatResult(None, no_beats, clarity=beats.clarity)
    if beats.warning:
        warnings.append(beats.warning)
    return beats


def _key(note_chroma: notes.NoteChroma, mean_chroma: list[float], spectral_chroma: list[float],
         duration: float, chord_evidence: Callable[[], chords.ChordEvidence | None],
         warnings: list[str]) -> KeyEstimate | None:  # fmt: skip
    """Key of audio that is not silent; why there is none goes to `warnings`. Noise is told
    from music by two signs together: the notes explain little of its spectrum, and its plain
    spectral chroma correlates with no key. `chord_evidence` is called (a transcription per
    beat) only for a clip long enough and tonal enough to have a key."""
    if duration < MIN_KEY_SECONDS:
        warnings.append(
            f"clip is {duration:.1f} s long, too short for a key (needs {MIN_KEY_SECONDS:g} s)"
        )
        return None
    spectral_key = estimate_key(spectral_chroma)
    spectral_confidence = spectral_key.confidence if spectral_key else 0.0
    tonality = note_chroma.tonality
    if tonality < MIN_TONALITY and spectral_confidence < MIN_KEY_CONFIDENCE:
        warnings.append(f"no clear tonal centre (notes explain only {tonality:.0%} of the "
                        "spectrum): no key")  # fmt: skip
        return None
    span = opening_span(note_chroma.chroma, note_chroma.block_seconds)
    first = note_chroma.chroma[span]
    estimate = estimate_key(mean_chroma, opening_chroma=first.sum(axis=0) if first.size else None,
                            bass_chroma=note_chroma.bass_chroma.sum(axis=0),
                            opening_bass=opening_bass(note_chroma.bass_chroma[span]),
                            chords=chord_evidence())  # fmt: skip
    if estimate is None:
        warnings.append("no pitched content (flat chroma): no key")
    elif estimate.confidence < MIN_KEY_CONFIDENCE:
        warnings.append(
            f"no clear tonal centre (best key {estimate.name} correlates only "
            f"{estimate.confidence:.2f}): no key"
        )
        return None
    return estimate


def _chord_evidence(spectra: FloatArray, tuning: float,
                    beats: BeatResult | None) -> chords.ChordEvidence | None:  # fmt: skip
    """The key evidence of the chords, beat by beat (`chords`)."""
    beat_times = (beats.beat_frames * (HOP_LENGTH / ANALYSIS_SAMPLE_RATE) if beats is not None
                  else np.zeros(0))  # fmt: skip
    frame_seconds = notes.NOTE_HOP / ANALYSIS_SAMPLE_RATE
    starts = chords.segment_starts(beat_times, spectra.shape[0], frame_seconds)
    return chords.evidence(chords.recognise(*chords.segment_notes(spectra, starts, tuning)))


def _analyze_stream(
    blocks: Iterable[tuple[FloatArray, int]],
    native_rate: int,
    native_frames: int,
    progress: _Progress,
    should_abort: AbortCheck | None,
) -> AnalysisReport:
    rfft = real_fft(native_frames / max(native_rate, 1))
    frontend = StftFrontend(rfft=rfft)
    note_frontend = StftFrontend(notes.NOTE_FFT, notes.NOTE_HOP, notes.CHUNK_FRAMES, rfft)
    features = _FrameFeatures(ANALYSIS_SAMPLE_RATE)
    log_spectra: list[FloatArray] = []
    consumed = 0
    for samples, native_count in blocks:
        if should_abort is not None and should_abort():
            raise JobAbortedError("analysis aborted")
        for chunk in frontend.push(samples):
            features.add(chunk)
        for chunk in note_frontend.push(samples):
            log_spectra.append(notes.log_spectrum(chunk.magnitude, ANALYSIS_SAMPLE_RATE))
        consumed += native_count
        progress.update(DECODE_PROGRESS * consumed / max(native_frames, 1))
    for chunk in frontend.finish():
        features.add(chunk)
    for chunk in note_frontend.finish():
        log_spectra.append(notes.log_spectrum(chunk.magnitude, ANALYSIS_SAMPLE_RATE))
    progress.update(DECODE_PROGRESS)

    duration = frontend.samples_pushed / ANALYSIS_SAMPLE_RATE
    rms = features.joined("rms")
    mel = summarise_mel(features.columns.pop("mel_power", []))
    chroma = features.joined("chroma").reshape(-1, spectral.N_CHROMA)
    contrast = (
        spectral.clip_top_db(features.joined("contrast_peak_db"), TOP_DB)
        - spectral.clip_top_db(features.joined("contrast_valley_db"), TOP_DB)
    ).reshape(-1, spectral.N_CONTRAST)
    progress.update(95.0)

    warnings: list[str] = []
    energy_max = float(rms.max()) if rms.size else 0.0
    silent = energy_max < SILENCE_RMS
    if silent:
        warnings.append("audio is silent (loudest frame below -60 dBFS): no tempo or key")
    mean_chroma = _means(chroma, spectral.N_CHROMA)
    spectra = (np.concatenate(log_spectra) if log_spectra
               else np.zeros((0, notes.spectrum_bins()), np.float32))  # fmt: skip
    note_chroma = notes.note_chroma(spectra, ANALYSIS_SAMPLE_RATE)
    key_chroma = key_profile_input(note_chroma.chroma, note_chroma.bass_chroma)
    key_warnings: list[str] = []
    key_estimate = None
    tracked = None if silent else _track(mel, chroma, duration, warnings)
    if not silent:
        chord_evidence = partial(_chord_evidence, spectra, note_chroma.tuning, tracked)
        key_estimate = _key(note_chroma, key_chroma, mean_chroma, duration, chord_evidence,
                            key_warnings)  # fmt: skip
    beats = (BeatResult(None, np.zeros(0, np.int64)) if silent
             else _tempo(tracked, key_estimate is not None, warnings))  # fmt: skip
    warnings.extend(key_warnings)
    tempo, beat_frames = beats.tempo, beats.beat_frames

    beat_times = [
        round(float(frame) * HOP_LENGTH / ANALYSIS_SAMPLE_RATE, 4) for frame in beat_frames
    ]
    report = AnalysisReport(
        duration=round(duration, 4),
        sample_rate=native_rate,
        tempo=round(tempo, 3) if tempo is not None else None,
        tempo_confidence=round(beats.confidence, 4) if tempo is not None else None,
        beats=beat_times,
        beat_count=len(beat_times),
        key=key_estimate.name if key_estimate else None,
        key_confidence=round(key_estimate.confidence, 4) if key_estimate else None,
        energy=_mean(rms),
        energy_variance=float(np.var(rms, dtype=np.float64)) if rms.size else 0.0,
        energy_max=energy_max,
        energy_min=float(rms.min()) if rms.size else 0.0,
        spectral_centroid=_mean(features.joined("centroid")),
        spectral_rolloff=_mean(features.joined("rolloff")),
        spectral_bandwidth=_mean(features.joined("bandwidth")),
        spectral_flatness=_mean(features.joined("flatness")),
        spectral_contrast=_means(contrast, spectral.N_CONTRAST),
        zero_crossing_rate=_mean(features.joined("zero_crossing_rate")),
        mfcc=_means(mel.mfcc, N_MFCC),
        mfcc_variance=_variances(mel.mfcc, N_MFCC),
        chroma=mean_chroma,
        key_chroma=key_chroma,
        tuning=round(note_chroma.tuning, 3),
        warnings=warnings,
        curves=_curves(rms, features, chroma, mel.mfcc),
    ).sanitised()
    progress.update(100.0)
    return report


def analyze(
    path: Path | str,
    progress: ProgressCallback | None = None,
    should_abort: AbortCheck | None = None,
    limits: AudioLimits = DEFAULT_LIMITS,
) -> AnalysisReport:
    """Analyse one audio file. `progress` gets percentages 0..100, never decreasing;
    `should_abort` is polled between decode blocks (True raises `JobAbortedError`).
    Raises `AudioError` (or `FfmpegMissingError`) for input that cannot be decoded or that asks
    for more than `limits` allow."""
    info = audio_io.probe(path, count_frames=False, limits=limits)
    limits.check_budget(str(info.path), info.frames, info.sample_rate, ANALYSIS_SAMPLE_RATE, 1)
    reporter = _Progress(progress)
    reporter.update(0.0)
    blocks = audio_io.iter_decoded(info, ANALYSIS_SAMPLE_RATE, mono=True)
    with _single_threaded_blas():
        report = _analyze_stream(blocks, info.sample_rate, info.frames, reporter, should_abort)
    logger.debug("analysed %s: %.1f s, tempo %s, key %s", info.path, report.duration,
                 report.tempo, report.key)  # fmt: skip
    return report


def _single_threaded_blas() -> AbstractContextManager[object]:
    """The matrix products here are small (a chunk of frames by a filter bank): a second BLAS
    thread gains little alone and loses a lot when the cores are shared (two analysis workers,
    other jobs): measured 0.29 s vs 0.50-0.60 s for 180 s of audio on a busy 2-core machine."""
    limits: AbstractContextManager[object] = _blas_controller().limit(limits=1, user_api="blas")
    return limits


def prepare_process() -> None:
    """Pay the first-call costs of an analysis that do not depend on the file: numpy's lazy
    `numpy.ma` import (`np.median` reaches it) and threadpoolctl's search of the loaded
    libraries. Processes forked after this start with both paid (`batch.analyze_many`)."""
    import numpy.ma  # noqa: F401

    _blas_controller()


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    """threadpoolctl's view of the loaded BLAS, found once per process: `threadpool_limits`
    searches the loaded libraries again on every call (0.45 ms, 4 % of a 3 s file's analysis).
    numpy's BLAS is loaded with numpy, before this can run."""
    from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]

    return ThreadpoolController()


def _warm_up_blocks(seconds: float = 6.0) -> Iterator[tuple[FloatArray, int]]:
    """Clicks at 120 BPM over an A minor triad: enough to run every code path once."""
    time_s = np.arange(int(seconds * ANALYSIS_SAMPLE_RATE)) / ANALYSIS_SAMPLE_RATE
    tones = sum(np.sin(2 * np.pi * hz * time_s) for hz in (220.0, 261.63, 329.63))
    clicks = (np.mod(time_s, 0.5) < 0.01) * np.random.default_rng(0).standard_normal(time_s.size)
    samples = (0.1 * tones + 0.5 * clicks).astype(np.float32)
    yield samples, samples.size


def warm_up() -> None:
    """Run every code path once (imports, filter banks and note templates cached), so the first
    real job in a worker process pays for none of it. Nothing here needs librosa or numba any
    more, so this takes well under a second."""
    with _single_threaded_blas():
        _analyze_stream(_warm_up_blocks(), ANALYSIS_SAMPLE_RATE, 1, _Progress(None), None)
