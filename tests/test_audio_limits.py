"""Decode bombs and poisoned samples, through every decoder path: a header asking for an absurd
rate, channel count, length or decoded size is refused before anything is written; a header
that lies about its length costs no more than the file really holds; NaN/infinite samples are a
permanent error (one attempt, a readable row error); ffmpeg writing megabytes to stderr cannot
block its reader."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import soundfile

from soundforge import audio_io, jobs, live, workflow
from soundforge.audio_limits import AudioLimitError, AudioLimits, NonFiniteAudioError
from soundforge.engines import default_engines
from soundforge.errors import AudioError
from soundforge.models import Stage
from soundforge.sources import StoredAudio, validate_audio_file
from soundforge.status import Status
from soundforge.storage import Storage, download_relpath
from tests.cli_runner import run_cli
from tests.factories import make_track
from tests.support.job_rows import stage_rows
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(180)
Connection = psycopg.Connection[Any]


def wav_bytes(
    frames: int, sample_rate: int, channels: int = 1, *, data_declared: int | None = None,
    riff_declared: int | None = None,
) -> bytes:  # fmt: skip
    """A 16-bit PCM WAV of a quiet tone whose header may claim other sizes than it holds."""
    t = np.arange(frames * channels) / 50.0
    data = (np.sin(t) * 3000).astype("<i2").tobytes()
    declared = len(data) if data_declared is None else data_declared
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2,
                      channels * 2, 16)  # fmt: skip
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", declared) + data
    riff = len(body) if riff_declared is None else riff_declared
    return b"RIFF" + struct.pack("<I", riff) + body


@pytest.fixture
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def test_a_6_kb_wav_declaring_1_hz_is_refused_before_any_scratch_is_written(
    tmp_path: Path, tiny_repo: Path
) -> None:
    from soundforge.separation import Separator

    bomb = tmp_path / "bomb.wav"
    bomb.write_bytes(wav_bytes(3000, sample_rate=1))
    assert 5000 < bomb.stat().st_size < 7000
    with pytest.raises(AudioLimitError, match="sample rate 1 Hz is outside"):
        audio_io.probe(bomb)

    scratch = tmp_path / "stems"
    scratch.mkdir()
    with pytest.raises(AudioLimitError):
        Separator(repo=tiny_repo, shifts=0).separate(bomb, scratch / "run")
    assert list(scratch.rglob("*")) == []

    with pytest.raises(AudioLimitError):
        validate_audio_file(bomb)
    assert not bomb.exists()  # a refused download is removed


def test_analyze_cli_refuses_a_60_kb_1_hz_wav_in_one_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    bomb = tmp_path / "bomb.wav"
    bomb.write_bytes(wav_bytes(30_000, sample_rate=1))
    result = run_cli("analyze", str(bomb), env=cli_env)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sample rate 1 Hz" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr


@pytest.mark.parametrize(
    ("sample_rate", "channels", "message"),
    [(500_000, 1, "sample rate 500000 Hz"), (7_999, 1, "sample rate 7999 Hz"),
     (44_100, 9, "9 channels")],
)  # fmt: skip
def test_rates_and_channel_counts_outside_the_limits_are_refused(
    tmp_path: Path, sample_rate: int, channels: int, message: str
) -> None:
    path = tmp_path / "odd.wav"
    path.write_bytes(wav_bytes(2000, sample_rate, channels))
    with pytest.raises(AudioLimitError, match=message):
        audio_io.probe(path)


def test_duration_and_decoded_size_limits_are_checked_from_the_header(
    tmp_path: Path, tiny_repo: Path
) -> None:
    from soundforge.separation import Separator

    path = tmp_path / "three_seconds.wav"
    path.write_bytes(wav_bytes(3 * 8000, 8000, 2))
    with pytest.raises(AudioLimitError, match="longer than the 2 s maximum"):
        audio_io.probe(path, limits=AudioLimits(max_duration_s=2))
    audio_io.probe(path, limits=AudioLimits(max_duration_s=4))

    # At 8 kHz it is 192 kB decoded, at the model's 44.1 kHz ~1 MiB: over a 512 kB budget.
    tight = AudioLimits(max_decoded_bytes=512 * 1024)
    audio_io.probe(path, limits=tight)
    out_dir = tmp_path / "run"
    with pytest.raises(AudioLimitError, match="budget"):
        Separator(repo=tiny_repo, shifts=0, limits=tight).separate(path, out_dir)
    assert not out_dir.exists()


def test_a_wav_header_lying_about_its_length_costs_only_what_the_file_holds(
    tmp_path: Path,
) -> None:
    claims_ten_hours = tmp_path / "claims.wav"
    claims_ten_hours.write_bytes(wav_bytes(8000, 8000, data_declared=10 * 3600 * 8000 * 2))
    with pytest.raises(AudioError, match="truncated"):
        audio_io.probe(claims_ten_hours)

    streamed = tmp_path / "streamed.wav"  # sizes 0xFFFFFFFF: a stream of unknown length
    streamed.write_bytes(wav_bytes(8000, 8000, data_declared=0xFFFFFFFF,
                                   riff_declared=0xFFFFFFFF))  # fmt: skip
    with pytest.raises(AudioError, match="truncated"):
        audio_io.probe(streamed)
    with pytest.raises(AudioError, match="truncated"):
        validate_audio_file(claims_ten_hours)


def _fake_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, decode_script: str) -> None:
    """An `ffmpeg` on PATH that answers the probe with a 1 s header and decodes by running
    `decode_script` (Python, with `sys` imported)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    script = folder / "ffmpeg"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "if 'pipe:1' not in sys.argv:\n"
        "    sys.stderr.write('  Duration: 00:00:01.00, bitrate: 1 kb/s\\n'\n"
        "                     '  Stream #0:0: Audio: pcm_f32le, 8000 Hz, mono, flt\\n')\n"
        "    sys.exit(1)\n" + decode_script
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{Path(sys.executable).parent}")


def _matroska(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mka"
    path.write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 16)
    return path


@pytest.mark.timeout(60)
def test_ffmpeg_writing_a_megabyte_to_stderr_fails_cleanly_instead_of_blocking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_ffmpeg(tmp_path, monkeypatch, (
        "for n in range(16384):\n"
        "    sys.stderr.write(f'[matroska @ 0x55] corrupt block {n:06d}, skipping xxxxxxxx\\n')\n"
        "sys.stderr.write('Invalid data found when processing input\\n')\n"
        "sys.stdout.buffer.write(b'\\0' * 4 * 800)\n"
        "sys.exit(1)\n"
    ))  # fmt: skip
    with pytest.raises(AudioError) as raised:
        audio_io.probe(_matroska(tmp_path))
    message = str(raised.value)
    assert "Invalid data found when processing input" in message and len(message) < 400


def test_a_stream_decoding_to_more_than_its_header_said_stops_at_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header says 1 s; the decoder keeps producing (an hour, if nobody stopped it).
    _fake_ffmpeg(tmp_path, monkeypatch, (
        "block = b'\\0' * 4 * 8000\n"
        "for _ in range(3600):\n"
        "    sys.stdout.buffer.write(block)\n"
    ))  # fmt: skip
    clip = _matroska(tmp_path)
    info = audio_io.probe(clip, count_frames=False, limits=AudioLimits(max_duration_s=3))
    assert info.frames == 8000
    decoded = 0
    with pytest.raises(AudioLimitError, match="longer than the 3 s maximum"):
        for block in audio_io.iter_blocks(info):
            decoded += block.shape[0]
    assert decoded <= 3 * 8000


def _nan_wav(path: Path) -> Path:
    samples = np.full((8000 * 2, 2), 0.1, dtype=np.float32)
    samples[5000, 1] = np.nan
    samples[9000, 0] = np.inf
    soundfile.write(path, samples, 8000, subtype="FLOAT")
    return path


def test_non_finite_samples_are_refused_by_every_decoder_path(tmp_path: Path) -> None:
    path = _nan_wav(tmp_path / "nan.wav")
    with pytest.raises(NonFiniteAudioError, match="audio contains non-finite samples"):
        list(audio_io.iter_blocks(path))
    with pytest.raises(NonFiniteAudioError):
        validate_audio_file(path)


def _one_hz_bomb(path: Path) -> Path:
    path.write_bytes(wav_bytes(3000, sample_rate=1))
    return path


@pytest.mark.parametrize(
    ("make_file", "message"),
    [(_nan_wav, "audio contains non-finite samples"), (_one_hz_bomb, "sample rate 1 Hz")],
)  # fmt: skip
def test_bad_stored_audio_fails_separation_and_analysis_after_one_attempt(
    conn: Connection, database_url: str, tmp_path: Path, tiny_repo: Path,
    make_file: Callable[[Path], Path], message: str,
) -> None:  # fmt: skip
    """Audio already in storage (stored before a limit existed): each stage's task fails its
    row at once, with no retry and no stem or scratch file left."""
    settings = settings_for(database_url, tmp_path / "store", demucs_repo=tiny_repo,
                            separate_attempts=3, analyze_attempts=3)  # fmt: skip
    storage = Storage(settings.storage_path)
    track = make_track(conn)
    relative = download_relpath(track.id, "wav")
    audio = storage.resolve(relative)
    audio.parent.mkdir(parents=True)
    make_file(audio)
    download = jobs.advance(conn, jobs.create_job(conn, Stage.DOWNLOAD, track.id),
                            Status.DOWNLOADING)  # fmt: skip
    with running_worker(settings, queues=("processing", "analysis")):
        workflow.complete_download(
            conn, download, StoredAudio(relative, audio.stat().st_size, "wav", 2.0),
            workflow.PipelineOptions(stems=True, analysis=True),
        )  # fmt: skip
        row = wait_for(
            lambda: (rows := live.pipeline_rows(conn, [track.id])) and live.pipeline_finished(
                rows[0]) and rows[0],
            timeout_s=120, message="both stages to end",
        )  # fmt: skip
    for stage, table_stage in (("separate", Stage.SEPARATE), ("analyze", Stage.ANALYZE)):
        assert row[f"{stage}_status"] == "failed", row
        assert message in row[f"{stage}_error"], row
        [job] = stage_rows(conn, table_stage, track.id)
        assert job.attempts == 1
    stems_dir = storage.root / "stems"
    assert not stems_dir.exists() or not any(p.is_file() for p in stems_dir.rglob("*"))


def test_a_1_hz_download_fails_at_once_and_leaves_nothing_stored(
    conn: Connection, database_url: str, tmp_path: Path
) -> None:
    bomb = _one_hz_bomb(tmp_path / "bomb.wav")
    settings = settings_for(database_url, tmp_path / "store", download_attempts=3)
    with running_worker(settings, queues=("download",)) as runtime:
        [metadata] = default_engines(runtime.settings).expand(str(bomb))
        imported = workflow.import_track(conn, metadata, workflow.PipelineOptions())
        row = wait_for(
            lambda: (rows := live.pipeline_rows(conn, [imported.track.id]))
            and live.pipeline_finished(rows[0]) and rows[0], message="the download to end",
        )  # fmt: skip
    assert row["download_status"] == "failed" and "sample rate 1 Hz" in row["download_error"]
    [download] = stage_rows(conn, Stage.DOWNLOAD, imported.track.id)
    assert download.attempts == 1
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []
