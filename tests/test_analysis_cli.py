"""`soundforge analyze` and the engine's contract at its edges: the JSON report has exactly the
agreed keys and no NaN; bad input is one error line and exit 1, never a traceback; silence and
too-short clips give null tempo/key with warnings; progress only goes up; abort stops."""

from __future__ import annotations

import itertools
import json
import math
import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

pytest.importorskip("librosa")

from soundforge.analysis import RESULT_COLUMNS, analyze
from soundforge.cli.main import main
from soundforge.errors import JobAbortedError
from tests.audio_synth import write_test_song
from tests.cli_runner import run_cli

SR = 22050
REPORT_KEYS = {
    "tempo_confidence",
    "key_chroma",
    "tuning",
    "duration",
    "sample_rate",
    "tempo",
    "beats",
    "beat_count",
    "key",
    "key_confidence",
    "energy",
    "energy_variance",
    "energy_max",
    "energy_min",
    "spectral_centroid",
    "spectral_rolloff",
    "spectral_bandwidth",
    "spectral_flatness",
    "spectral_contrast",
    "zero_crossing_rate",
    "mfcc",
    "mfcc_variance",
    "chroma",
    "warnings",
    "curves",  # per-frame curves at ~2 points/s for the dashboard's pictures
}
FAKE_M4A = b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A mp42isom" + bytes(2048)


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("analysis_cli")
    return write_test_song(folder / "song.wav", 10.0, 44100, tempo=120.0, key="A minor")


def _numbers(value: Any) -> list[float]:
    if isinstance(value, list):
        return [number for item in value for number in _numbers(item)]
    return [float(value)] if isinstance(value, int | float) else []


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["analyze", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_report_has_exactly_the_agreed_keys_and_finite_numbers(
    song: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, str(song), "--json")
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    report = json.loads(out)
    assert set(report) == REPORT_KEYS
    assert all(math.isfinite(number) for number in _numbers(report))
    assert report["sample_rate"] == 44100
    assert report["beat_count"] == len(report["beats"]) > 0
    assert (
        len(report["spectral_contrast"]),
        len(report["mfcc"]),
        len(report["mfcc_variance"]),
        len(report["chroma"]),
    ) == (7, 13, 13, 12)
    assert report["key"] == "A minor"
    assert report["tempo"] == pytest.approx(120.0, rel=0.02)


def test_result_columns_are_all_filled_for_music(song: Path) -> None:
    report = analyze(song)
    columns = report.result_columns()
    assert tuple(columns) == RESULT_COLUMNS
    assert all(value is not None for value in columns.values())
    assert report.to_dict()["tempo"] == columns["tempo"]


def test_human_summary_names_tempo_and_key(song: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(song))
    assert code == 0
    assert "120" in out and "A minor" in out and "BPM" in out


def _truncated_copy(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    return target


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing.wav", "no such file"),
        ("notes.txt", "not an audio file"),
        ("empty.wav", "empty"),
        ("cut.wav", "truncated"),
        ("cut.flac", "corrupt or truncated"),
        ("cut.mp3", "truncated"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_1(
    tmp_path: Path, song: Path, capsys: pytest.CaptureFixture[str], name: str, expected: str
) -> None:
    path = tmp_path / name
    if name == "notes.txt":
        path.write_text("these are not the sounds you are looking for\n" * 100)
    elif name == "empty.wav":
        path.touch()
    elif name.startswith("cut."):
        whole = write_test_song(tmp_path / f"whole{path.suffix}", 6.0, SR, channels=1)
        _truncated_copy(whole, path, 0.5)
    code, out, err = _run(capsys, str(path), "--json")
    assert code == 1
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert expected in err and "Traceback" not in err


def test_format_needing_ffmpeg_without_ffmpeg_says_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "song.m4a"
    path.write_bytes(FAKE_M4A)
    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on it
    code, _, err = _run(capsys, str(path))
    assert code == 1
    assert len(err.strip().splitlines()) == 1
    assert "needs ffmpeg" in err and "install" in err


def test_console_script_reports_missing_ffmpeg_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "song.m4a"
    path.write_bytes(FAKE_M4A)
    result = run_cli("analyze", str(path), env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "needs ffmpeg" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_m4a_decodes_through_ffmpeg_to_the_same_tempo_and_key(tmp_path: Path) -> None:
    wav = write_test_song(tmp_path / "song.wav", 12.0, 44100, tempo=132.0, key="E major")
    m4a = tmp_path / "song.m4a"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(m4a)], check=True
    )
    report = analyze(m4a)
    assert report.tempo == pytest.approx(132.0, rel=0.02)
    assert report.key == "E major"
    assert report.duration == pytest.approx(12.0, abs=0.1)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")
def test_garbage_in_an_mp4_container_is_a_decode_error_with_ffmpeg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.m4a"
    path.write_bytes(FAKE_M4A)
    code, _, err = _run(capsys, str(path))
    assert code == 1
    assert "not an audio file we can decode" in err


def test_silence_gives_null_tempo_and_key_with_warnings_and_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "silence.wav"
    soundfile.write(path, np.zeros(SR * 8, dtype=np.float32), SR)
    report = analyze(path)
    assert report.tempo is None and report.key is None and report.key_confidence is None
    assert report.beats == [] and report.beat_count == 0
    assert any("silent" in warning for warning in report.warnings)
    json.dumps(report.to_dict(), allow_nan=False)


def test_clip_too_short_for_a_tempo_gives_null_tempo_with_a_warning(tmp_path: Path) -> None:
    path = write_test_song(tmp_path / "short.wav", 1.0, SR, channels=1)
    report = analyze(path)
    assert report.tempo is None and report.key is None
    assert any("too short for a tempo" in warning for warning in report.warnings)
    json.dumps(report.to_dict(), allow_nan=False)


def test_white_noise_has_no_tempo_and_no_key_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    noise = 0.1 * np.random.default_rng(0).standard_normal(SR * 10)
    soundfile.write(path, noise.astype(np.float32), SR)
    report = analyze(path)
    assert report.tempo is None and report.beats == [] and report.key is None
    assert any("no steady beat" in warning for warning in report.warnings)
    assert any("no clear tonal centre" in warning for warning in report.warnings)


def test_a_few_samples_still_give_a_finite_report(tmp_path: Path) -> None:
    path = tmp_path / "blip.wav"
    soundfile.write(path, np.full(100, 0.5, dtype=np.float32), SR)
    report = analyze(path)
    assert report.duration == pytest.approx(100 / SR, abs=1e-4)
    json.dumps(report.to_dict(), allow_nan=False)


def test_progress_rises_monotonically_from_0_to_100(song: Path) -> None:
    seen: list[float] = []
    analyze(song, progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 100.0
    assert all(later > earlier for earlier, later in itertools.pairwise(seen))


def test_abort_check_stops_the_analysis(song: Path) -> None:
    with pytest.raises(JobAbortedError):
        analyze(song, should_abort=lambda: True)


def test_many_files_give_one_json_line_each_in_order_and_errors_on_their_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "music"
    (folder / "inner").mkdir(parents=True)
    tempi = {"a.wav": 100.0, "b.flac": 130.0, "inner/c.wav": 90.0}
    for name, bpm in tempi.items():
        write_test_song(folder / name, 6.0, SR, tempo=bpm, channels=1)
    (folder / "broken.wav").write_bytes(b"RIFF" + bytes(2000))
    (folder / "notes.txt").write_text("not audio, and not picked up from a folder\n")
    code, out, err = _run(capsys, str(folder), "--json", "--jobs", "2")
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert code == 1  # one file failed
    assert [Path(line["file"]).relative_to(folder).as_posix() for line in lines] == sorted(
        ["a.wav", "b.flac", "broken.wav", "inner/c.wav"])  # fmt: skip
    by_name = {Path(line["file"]).relative_to(folder).as_posix(): line for line in lines}
    assert set(by_name["broken.wav"]) == {"file", "error"}
    for name, bpm in tempi.items():
        assert set(by_name[name]) == REPORT_KEYS | {"file"}
        assert by_name[name]["tempo"] == pytest.approx(bpm, rel=0.02)
    assert "Traceback" not in err


def test_analyze_command_loads_no_librosa_numba_or_queue_stack(song: Path) -> None:
    """The cold path of `soundforge analyze`: nothing compiled by numba, nothing imported that
    the command does not use (these cost seconds per fresh process; the settings are used: the
    audio limits come from them)."""
    probe = (
        "import sys; from soundforge.cli.main import main; code = main(['analyze', sys.argv[1]]);"
        "heavy = [name for name in ('librosa', 'numba', 'scipy.signal', 'psycopg', "
        "'procrastinate') if name in sys.modules];"
        "print('HEAVY', heavy); sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(song)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout


def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`soundforge analyze --json DIR | head -1`: once the reader has gone, the next line
    cannot be written; the command stops there with SIGPIPE's exit status and no traceback."""
    folder = tmp_path / "music"
    folder.mkdir()
    for index in range(30):
        write_test_song(folder / f"clip{index:02d}.wav", 2.0, SR, tempo=100.0 + index,
                        channels=1, seed=index)  # fmt: skip
    command = [sys.executable, "-m", "soundforge.cli.main", "analyze", "--json", "--jobs", "1",
               str(folder)]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # the reader goes away with 29 files still to analyse
        errors = process.stderr.read().decode()
        code = process.wait(timeout=120)
    assert json.loads(first)["file"].endswith("clip00.wav")
    assert "Traceback" not in errors and "BrokenPipe" not in errors
    assert code == 141


def test_progress_bar_is_drawn_in_a_terminal_without_a_refresh_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--jobs forks its workers while the bar is up: a refresh thread holding a lock at the
    fork would leave it held in every child, so the bar is drawn as files finish instead."""
    import threading

    from soundforge.cli import analyze_cmd

    leader, follower = os.openpty()
    drawn = b""
    with open(follower, "w", encoding="utf-8") as terminal:
        monkeypatch.setattr(sys, "stderr", terminal)
        threads = threading.active_count()
        with analyze_cmd._progress_bar(2) as advance:
            assert threading.active_count() == threads
            advance()
            advance()
            terminal.flush()
            while select.select([leader], [], [], 0.5)[0]:
                drawn += os.read(leader, 65536)
    os.close(leader)
    assert b"1/2" in drawn and b"2/2" in drawn
