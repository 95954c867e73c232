"""`soundforge.audio_io` as the analysis uses it: containers sniffed by their first bytes,
streaming decode that downmixes, resamples and counts source frames, and ffmpeg formats probed
from their header (when ffmpeg is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from soundforge import audio_io
from tests.audio_synth import write_test_song


@pytest.mark.parametrize(("suffix", "container"), [(".wav", "wav"), (".flac", "flac"),
                                                   (".ogg", "ogg"), (".mp3", "mp3")])  # fmt: skip
def test_sniff_format_names_the_container_of_a_real_file(
    tmp_path: Path, suffix: str, container: str
) -> None:
    path = write_test_song(tmp_path / f"song{suffix}", 1.0, 22050, channels=1)
    assert audio_io.sniff_format(path) == container


@pytest.mark.parametrize(
    ("head", "container"),
    [
        (b"\x00\x00\x00\x20ftypM4A ", "mp4"),
        (b"\x1aE\xdf\xa3\x01\x00\x00\x00", "matroska"),
        (b"\xff\xf1\x50\x80", "aac"),
        (b"\xff\xfb\x90\x64", "mp3"),
        ((b"\x47\x40\x11\x10" + bytes(184)) * 3, "mpegts"),
        (b"\x47\x40\x11\x10" + bytes(184), None),  # one packet's sync byte is no stream
        (b"hello, world", None),
    ],
)
def test_sniff_format_tells_ffmpeg_containers_from_non_audio(
    tmp_path: Path, head: bytes, container: str | None
) -> None:
    path = tmp_path / "file"
    path.write_bytes(head + bytes(64))
    assert audio_io.sniff_format(path) == container


def test_decode_downmixes_and_resamples_to_the_requested_rate(tmp_path: Path) -> None:
    path = write_test_song(tmp_path / "song.wav", 2.0, 44100, channels=2)
    mono, rate = audio_io.decode(path, sample_rate=22050)
    assert rate == 22050 and mono.dtype == np.float32
    assert mono.shape == (44100,)
    stereo, _ = audio_io.decode(path, sample_rate=22050, mono=False)
    assert stereo.shape == (2, 44100)
    np.testing.assert_allclose(mono, stereo.mean(axis=0), atol=1e-6)


def test_iter_decoded_counts_every_source_frame_for_progress(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    soundfile.write(path, np.zeros((100_000, 2), dtype=np.float32), 48000)
    info = audio_io.probe(path)
    pieces = list(audio_io.iter_decoded(info, 22050, block_frames=30_000))
    assert sum(native for _, native in pieces) == info.frames == 100_000
    assert sum(samples.shape[0] for samples, _ in pieces) == pytest.approx(45937.5, abs=1)
    assert all(samples.ndim == 1 for samples, _ in pieces)


def test_iter_blocks_keeps_native_rate_and_channels(tmp_path: Path) -> None:
    path = write_test_song(tmp_path / "song.wav", 1.0, 32000, channels=2)
    blocks = list(audio_io.iter_blocks(path, block_frames=10_000))
    assert all(block.shape[1] == 2 for block in blocks)
    assert sum(block.shape[0] for block in blocks) == 32000


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_ffmpeg_format_is_probed_from_its_header_and_counted_on_request(tmp_path: Path) -> None:
    wav = write_test_song(tmp_path / "song.wav", 3.0, 48000, channels=2)
    webm = tmp_path / "song.webm"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a",
                    "libopus", str(webm)], check=True)  # fmt: skip
    quick = audio_io.probe(webm, count_frames=False)
    assert (quick.decoder, quick.sample_rate, quick.channels) == ("ffmpeg", 48000, 2)
    assert quick.duration_s == pytest.approx(3.0, abs=0.1)
    assert audio_io.probe(webm).frames == pytest.approx(3 * 48000, abs=960)
