"""`soundforge separate`: prints stem paths (or JSON), flags override settings, and user errors
are one line on stderr with exit code 1. The core install imports without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from soundforge.cli.main import main
from soundforge.separation import write_local_repo
from tests.test_separation_support import write_mix


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_repo(tmp_path_factory.mktemp("repo"), "htdemucs", size="tiny")


@pytest.fixture(scope="module")
def song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mix(tmp_path_factory.mktemp("song") / "song.wav", seconds=2.5)


def test_separate_writes_four_stems_and_prints_their_paths(
    repo: Path, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["separate", str(song), "--out", str(tmp_path / "stems"), "--repo", str(repo),
                 "--shifts", "0"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    stems = {stem: Path(path) for stem, path in (line.split("\t") for line in lines)}
    assert list(stems) == ["drums", "bass", "other", "vocals"]
    assert all(path.is_file() and path.suffix == ".flac" for path in stems.values())


def test_json_output_and_flags_override_settings(
    repo: Path, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SOUNDFORGE_STEM_FORMAT", "flac")
    monkeypatch.setenv("SOUNDFORGE_DEMUCS_REPO", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SOUNDFORGE_SHIFTS", "0")
    assert main(["separate", str(song), "--out", str(tmp_path), "--repo", str(repo),
                 "--format", "wav", "--overlap", "0.5", "--json"]) == 0  # fmt: skip
    stems = json.loads(capsys.readouterr().out)
    assert sorted(stems) == ["bass", "drums", "other", "vocals"]
    assert all(path.endswith(".wav") for path in stems.values())


def test_several_files_go_to_a_folder_each_with_one_model_load(
    repo: Path, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = write_mix(tmp_path / "second.wav", seconds=1.5, seed=2)
    assert main(["separate", str(song), str(second), "--out", str(tmp_path / "out"), "--repo",
                 str(repo), "--shifts", "0", "--batch", "2", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert list(result) == [str(song), str(second)]
    for file, stems in result.items():
        assert sorted(stems) == ["bass", "drums", "other", "vocals"]
        assert all(Path(path).parent == tmp_path / "out" / Path(file).stem
                   and Path(path).is_file() for path in stems.values())  # fmt: skip


def test_repo_comes_from_settings_when_no_flag(
    repo: Path, song: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SOUNDFORGE_DEMUCS_REPO", str(repo))
    assert main(["separate", str(song), "--out", str(tmp_path), "--shifts", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--model", "nope"], "unknown separation model 'nope'"),
     (["--repo", "{empty}"], "htdemucs.yaml does not exist"),
     (["--input", "{bogus}"], "not an audio file")],
)  # fmt: skip
def test_user_errors_are_one_line_and_exit_1(
    repo: Path, song: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    arguments: list[str], message: str,
) -> None:
    (tmp_path / "empty").mkdir()
    bogus = tmp_path / "bogus.mp3"
    bogus.write_bytes(b"\x00\x01 definitely not audio " * 64)
    source = bogus if arguments[0] == "--input" else song
    extra = [] if arguments[0] == "--input" else [
        value.format(empty=tmp_path / "empty") for value in arguments]
    if "--repo" not in extra:
        extra += ["--repo", str(repo)]
    assert main(["separate", str(source), "--out", str(tmp_path / "out"), *extra]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message in error


def test_stem_names_and_cli_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['demucs'] = None\n"
        "from soundforge.separation import STEM_NAMES, StemsExtraMissingError\n"
        "import soundforge.cli.separate_cmd\n"
        "assert STEM_NAMES['htdemucs_6s'][-2:] == ('guitar', 'piano')\n"
        "try:\n"
        "    from soundforge.separation import Separator\n"
        "except StemsExtraMissingError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert "soundforge[stems]" in result.stdout


def test_separate_command_loads_no_database_or_queue_stack(
    repo: Path, song: Path, tmp_path: Path
) -> None:
    """`soundforge separate` needs no database: its fresh process imports neither psycopg nor
    procrastinate (the other commands' modules cost about half a second of every run)."""
    probe = (
        "import sys; from soundforge.cli.main import main;"
        "code = main(['separate', sys.argv[1], '--out', sys.argv[2], '--repo', sys.argv[3],"
        " '--shifts', '0']);"
        "print('HEAVY', [name for name in ('psycopg', 'procrastinate') if name in sys.modules]);"
        "sys.exit(code)"
    )
    done = subprocess.run([sys.executable, "-c", probe, str(song), str(tmp_path / "out"),
                           str(repo)], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout
    assert len(list((tmp_path / "out").glob("*.flac"))) == 4
