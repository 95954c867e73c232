"""The analysis engine's hand-written DSP gives librosa's numbers: STFT framing across chunk
boundaries, RMS / zero-crossing rate, every spectral reduction, MFCCs, the onset envelope and
the subsampled tempogram; and a whole `analyze()` agrees with the original system's way
(`librosa.load` and one librosa call per feature)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

pytest.importorskip("librosa")

import librosa

from soundforge.analysis import (
    analyze,
    filters,
    spectral,
)
from soundforge.analysis.engine import summarise_mel
from soundforge.analysis.frontend import FrameChunk, StftFrontend
from soundforge.analysis.rhythm import first_tempo, mean_tempogram, track_beats_at
from tests.audio_synth import chord_progression, drum_pattern, write_test_song

SR = 22050
FloatArray = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def song() -> FloatArray:
    """8 s of drums and chords with a little noise, so every bin has something in it."""
    rng = np.random.default_rng(1)
    mix = drum_pattern(8.0, 117.0, SR) + 0.8 * chord_progression(8.0, "E minor", 117.0, SR)
    return (mix + 1e-3 * rng.standard_normal(mix.size)).astype(np.float32)


@pytest.fixture(scope="module")
def chunks(song: FloatArray) -> list[FrameChunk]:
    """Frames from odd-sized pushes and chunks, so chunk and block boundaries fall anywhere."""
    frontend = StftFrontend(chunk_frames=37)
    produced: list[FrameChunk] = []
    for start in range(0, song.size, 5001):
        produced.extend(frontend.push(song[start : start + 5001]))
    produced.extend(frontend.finish())
    return produced


def _joined(chunks: list[FrameChunk], name: str) -> FloatArray:
    return np.concatenate([getattr(chunk, name) for chunk in chunks])


def test_chunked_stft_equals_librosa_stft_frame_for_frame(
    song: FloatArray, chunks: list[FrameChunk]
) -> None:
    reference = np.abs(librosa.stft(song, n_fft=2048, hop_length=512)).T
    magnitude = _joined(chunks, "magnitude")
    assert magnitude.shape == reference.shape
    np.testing.assert_allclose(magnitude, reference, atol=1e-4 * reference.max(), rtol=1e-3)


def test_rms_and_zero_crossing_rate_equal_librosa(
    song: FloatArray, chunks: list[FrameChunk]
) -> None:
    np.testing.assert_allclose(
        _joined(chunks, "rms"), librosa.feature.rms(y=song)[0], rtol=1e-4, atol=1e-7
    )
    reference = librosa.feature.zero_crossing_rate(song)[0]
    ours = _joined(chunks, "zero_crossing_rate")
    # librosa pads the ends by repeating the edge sample, we pad with zeros like the STFT does.
    np.testing.assert_allclose(ours[2:-2], reference[2:-2], atol=0.5 / 2048)


def test_spectral_reductions_equal_librosa_features(chunks: list[FrameChunk]) -> None:
    magnitude = _joined(chunks, "magnitude")
    power = np.square(magnitude)
    banks = spectral.filterbanks(SR, 2048, 0.0)
    spectrum = magnitude.T
    centroid, bandwidth, total = spectral.spectral_centroid_bandwidth(magnitude, banks)
    np.testing.assert_allclose(
        centroid, librosa.feature.spectral_centroid(S=spectrum, sr=SR)[0], rtol=1e-3
    )
    np.testing.assert_allclose(
        bandwidth, librosa.feature.spectral_bandwidth(S=spectrum, sr=SR)[0], rtol=2e-3
    )
    rolloff = spectral.spectral_rolloff(magnitude, banks.frequencies, total)
    reference_rolloff = librosa.feature.spectral_rolloff(S=spectrum, sr=SR)[0]
    bin_hz = SR / 2048
    assert np.mean(np.abs(rolloff - reference_rolloff) <= bin_hz + 1e-3) > 0.99
    np.testing.assert_allclose(
        spectral.spectral_flatness(power),
        librosa.feature.spectral_flatness(S=spectrum, power=2.0)[0],
        rtol=1e-3,
        atol=1e-7,
    )
    peak_db, valley_db = spectral.spectral_contrast_levels(magnitude, banks.contrast_bands)
    contrast = spectral.clip_top_db(peak_db) - spectral.clip_top_db(valley_db)
    np.testing.assert_allclose(
        contrast, librosa.feature.spectral_contrast(S=spectrum, sr=SR).T, atol=1e-2
    )
    mel, chroma = spectral.mel_and_chroma(power, banks)
    np.testing.assert_allclose(
        mel,
        librosa.feature.melspectrogram(S=power.T, sr=SR).T,
        rtol=1e-3,
        atol=1e-6 * float(mel.max()),
    )
    np.testing.assert_allclose(
        chroma, librosa.feature.chroma_stft(S=power.T, sr=SR, tuning=0.0).T, atol=1e-4
    )


def test_mfcc_and_onset_envelope_equal_librosa_from_the_same_mel_spectrum(
    chunks: list[FrameChunk],
) -> None:
    power = np.square(_joined(chunks, "magnitude"))
    mel, _ = spectral.mel_and_chroma(power, spectral.filterbanks(SR, 2048, 0.0))
    summary = summarise_mel([mel[:100], mel[100:230], mel[230:]])
    mel_db = librosa.power_to_db(mel.T)
    np.testing.assert_allclose(summary.mfcc, librosa.feature.mfcc(S=mel_db, n_mfcc=13).T, atol=1e-2)
    np.testing.assert_allclose(
        summary.onset_envelope, librosa.onset.onset_strength(S=mel_db, sr=SR), atol=1e-3
    )


def test_subsampled_tempogram_gives_librosas_tempo(chunks: list[FrameChunk]) -> None:
    power = np.square(_joined(chunks, "magnitude"))
    mel, _ = spectral.mel_and_chroma(power, spectral.filterbanks(SR, 2048, 0.0))
    envelope = summarise_mel([mel]).onset_envelope
    reference = librosa.feature.tempogram(onset_envelope=envelope, sr=SR, win_length=344)
    np.testing.assert_allclose(
        mean_tempogram(envelope, SR, 512)[:, 0], reference.mean(axis=1), atol=0.03
    )
    reference_tempo = float(librosa.feature.tempo(onset_envelope=envelope, sr=SR)[0])
    tempo, clarity = first_tempo(envelope, SR, 512)
    assert tempo == pytest.approx(reference_tempo, rel=0.03)
    assert clarity > 5.0


def test_report_means_match_the_original_systems_librosa_features(tmp_path: Path) -> None:
    path = write_test_song(tmp_path / "song.wav", 12.0, tempo=104.0, key="D major")
    report = analyze(path)
    y, sr = librosa.load(path)

    def mean(values: FloatArray) -> float:
        return float(np.mean(values))

    expected = {
        "energy": mean(librosa.feature.rms(y=y)),
        "spectral_centroid": mean(librosa.feature.spectral_centroid(y=y, sr=sr)),
        "spectral_rolloff": mean(librosa.feature.spectral_rolloff(y=y, sr=sr)),
        "spectral_bandwidth": mean(librosa.feature.spectral_bandwidth(y=y, sr=sr)),
        "spectral_flatness": mean(librosa.feature.spectral_flatness(y=y)),
        "zero_crossing_rate": mean(librosa.feature.zero_crossing_rate(y)),
    }
    for name, value in expected.items():
        assert getattr(report, name) == pytest.approx(value, rel=0.01), name
    np.testing.assert_allclose(
        report.spectral_contrast,
        librosa.feature.spectral_contrast(y=y, sr=sr).mean(axis=1),
        atol=0.3,
    )
    np.testing.assert_allclose(
        report.mfcc, librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13).mean(1), atol=0.5
    )
    np.testing.assert_allclose(
        report.chroma, librosa.feature.chroma_stft(y=y, sr=sr).mean(1), atol=0.02
    )
    assert report.duration == pytest.approx(12.0, abs=1e-3)


def test_numpy_beat_tracker_gives_librosas_beats(chunks: list[FrameChunk]) -> None:
    power = np.square(_joined(chunks, "magnitude"))
    mel, _ = spectral.mel_and_chroma(power, spectral.filterbanks(SR, 2048, 0.0))
    envelope = summarise_mel([mel]).onset_envelope
    for bpm in (58.0, 117.0, 170.0):
        _, reference = librosa.beat.beat_track(onset_envelope=envelope, sr=SR, bpm=bpm)
        np.testing.assert_array_equal(track_beats_at(envelope, bpm, SR, 512), reference)


@pytest.mark.parametrize(("sample_rate", "n_fft"), [(22050, 2048), (44100, 4096)])
def test_filter_banks_equal_librosas(sample_rate: int, n_fft: int) -> None:
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft)
    np.testing.assert_allclose(filters.mel_bank(sample_rate, n_fft, 128), reference, atol=1e-7)
    for tuning in (0.0, 0.21, -0.37):
        np.testing.assert_allclose(
            filters.chroma_bank(sample_rate, n_fft, tuning),
            librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=tuning),
            atol=1e-6,
        )


@pytest.mark.parametrize("cents", [0.0, 17.0, -33.0])
def test_tuning_estimate_equals_librosas(cents: float) -> None:
    t = np.arange(3 * SR) / SR
    tones = sum(np.sin(2 * np.pi * hz * 2 ** (cents / 1200) * t) for hz in (220, 277.2, 330, 523))
    noise = 0.01 * np.random.default_rng(0).standard_normal(t.size)
    power = np.abs(librosa.stft(tones + noise)) ** 2
    assert filters.estimate_tuning(power.T, SR, 2048) == pytest.approx(
        librosa.estimate_tuning(S=power, sr=SR), abs=1e-9)  # fmt: skip
