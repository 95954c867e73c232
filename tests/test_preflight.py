"""What a user meets before any job runs: a database that was never migrated (or is behind)
gives every data command, `soundforge worker` and `soundforge run` one line saying to run
`soundforge migrate`, exit 2; storage this user cannot write stops `worker` and `run` at once
with a line naming SOUNDFORGE_STORAGE_PATH, and a copy that fails names the storage folder and
the real cause instead of blaming the source file."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from soundforge.migrations import migrate, soundforge_files
from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.plain_user import run_python_as_plain_user

DATA_COMMANDS = (
    ("tracks",),
    ("status",),
    ("add", "--no-stems", "{song}"),
    ("delete", "00000000-0000-0000-0000-000000000001"),
    ("cleanup", "--dry-run"),
    ("cancel", "00000000-0000-0000-0000-000000000001"),
    ("retry", "00000000-0000-0000-0000-000000000001"),
    ("watch", "--max-events", "1"),
    ("prune",),
    ("rescue-stalled", "--dry-run"),
    ("worker", "--queues", "download"),
    ("run",),
)


def _database_name(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


def _assert_schema_line(result: subprocess.CompletedProcess[str], url: str, problem: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    where = f"postgresql://127.0.0.1:5432/{_database_name(url)}"
    assert lines == [f"soundforge: error: the database at {where} {problem}: run "
                     "`soundforge migrate`"], lines  # fmt: skip
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", DATA_COMMANDS, ids=lambda c: c[0])
def test_every_data_command_on_an_unmigrated_database_says_run_migrate(
    fresh_database: str, cli_env: dict[str, str], tmp_path: Path, command: tuple[str, ...]
) -> None:
    song = tmp_path / "song.wav"
    song.write_bytes(tone_bytes(1.0))
    env = {**cli_env, "DATABASE_URL": fresh_database}
    args = [part.format(song=song) for part in command]
    result = run_cli(*args, env=env, timeout=60)
    _assert_schema_line(result, fresh_database, "has no SoundForge schema")


def test_a_database_behind_this_version_says_how_many_migrations(
    fresh_database: str, cli_env: dict[str, str], tmp_path: Path
) -> None:
    older = tmp_path / "older-schema"  # what the previous version of SoundForge shipped
    older.mkdir()
    for schema_file in soundforge_files()[:-2]:
        (older / schema_file.name).write_text(schema_file.sql)
    migrate(fresh_database, older)
    env = {**cli_env, "DATABASE_URL": fresh_database}
    for command in (("tracks",), ("worker", "--queues", "download"), ("run",)):
        _assert_schema_line(run_cli(*command, env=env, timeout=60), fresh_database,
                            "is 2 migrations behind")  # fmt: skip
    assert run_cli("migrate", env=env).returncode == 0
    assert run_cli("tracks", env=env).returncode == 0


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder the plain user (or, not root, this user) may read but not write."""
    folder = Path(os.environ.get("TMPDIR", "/tmp")) / f"sf-readonly-{os.getpid()}-{tmp_path.name}"
    folder.mkdir(mode=0o755)
    if os.geteuid() != 0:
        folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)
    for child in sorted(folder.rglob("*"), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    folder.rmdir()


@pytest.mark.parametrize("command", [("worker", "--queues", "download"), ("run",)],
                         ids=lambda c: c[0])  # fmt: skip
def test_worker_and_run_refuse_storage_they_cannot_write(
    cli_env: dict[str, str], database_url: str, unwritable_dir: Path, command: tuple[str, ...]
) -> None:
    env = {**cli_env, "SOUNDFORGE_STORAGE_PATH": str(unwritable_dir / "store"),
           "HOME": str(unwritable_dir), "NUMBA_CACHE_DIR": "/tmp"}  # fmt: skip
    result = run_python_as_plain_user(["-m", "soundforge.cli.main", *command], env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"soundforge: error: cannot create the storage folder "
                           f"{unwritable_dir / 'store'} (Permission denied)"), line  # fmt: skip
    assert "SOUNDFORGE_STORAGE_PATH" in line


def test_storage_under_a_file_is_refused_for_any_user(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "a-file").write_text("")
    env = {**cli_env, "SOUNDFORGE_STORAGE_PATH": str(tmp_path / "a-file" / "store")}
    result = run_cli("worker", "--queues", "download", env=env, timeout=60)
    assert result.returncode == 2
    assert "cannot create the storage folder" in result.stderr
    assert "Not a directory" in result.stderr and "SOUNDFORGE_STORAGE_PATH" in result.stderr


COPY_SCRIPT = """
import sys
from collections.abc import Iterator
from pathlib import Path
from soundforge.errors import SoundForgeError
from soundforge.settings import load_settings
from soundforge.sources.config import SourceConfig
from soundforge.sources.fetch import fetch_audio
from soundforge.sources.model import TrackMetadata
from soundforge.storage import Storage

song, root = sys.argv[1], sys.argv[2]
metadata = TrackMetadata(title="song", artist=None, album=None, album_art_url=None,
                         duration=None, spotify_id=None, spotify_url=None, origin=song)
config = SourceConfig.from_settings(load_settings())
try:
    fetch_audio(metadata, Storage(root), "00000000-0000-0000-0000-000000000001", config)
except SoundForgeError as error:
    print(type(error).__name__, error)
"""


def test_a_copy_into_unwritable_storage_names_the_storage_folder_not_the_source(
    unwritable_dir: Path, tmp_path: Path
) -> None:
    song = Path(str(unwritable_dir) + "-song.wav")  # readable by all, on another folder
    song.write_bytes(tone_bytes(1.0))
    song.chmod(0o644)
    (unwritable_dir / "downloads").mkdir(mode=0o755)
    if os.geteuid() != 0:
        (unwritable_dir / "downloads").chmod(0o555)
    try:
        result = run_python_as_plain_user(["-c", COPY_SCRIPT, str(song), str(unwritable_dir)],
                                          env={**os.environ, "HOME": "/tmp",
                                               "SOUNDFORGE_IMPORT_ROOTS": str(song.parent)},
                                          )  # fmt: skip
    finally:
        song.unlink()
    assert result.stdout.strip() == (
        f"StorageError cannot copy {song.name} into the storage folder "
        f"{unwritable_dir / 'downloads'} (Permission denied)"
    ), (result.stdout, result.stderr)
