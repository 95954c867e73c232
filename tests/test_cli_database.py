"""The `soundforge` command over the database, run as a real subprocess."""

from __future__ import annotations

import json
import os
from typing import Any

import psycopg

from tests.cli_runner import run_cli
from tests.factories import make_track


def test_help_lists_the_commands(cli_env: dict[str, str]) -> None:
    result = run_cli("--help", env=cli_env)
    assert result.returncode == 0
    for command in ("migrate", "tracks", "delete", "cleanup"):
        assert command in result.stdout


def test_migrate_twice_exits_zero_and_status_lists_files(
    fresh_database: str, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "DATABASE_URL": fresh_database}
    first = run_cli("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied 001_music_tables.sql" in first.stdout
    second = run_cli("migrate", env=env)
    assert (second.returncode, second.stdout.strip()) == (0, "nothing to migrate")
    status = run_cli("migrate", "--status", env=env)
    assert status.returncode == 0 and "pending" not in status.stdout
    assert "003_job_status_guard.sql" in status.stdout


def test_unreachable_database_is_one_line_exit_2_without_the_password(
    cli_env: dict[str, str],
) -> None:
    env = {**cli_env, "DATABASE_URL": "postgresql://sf:hunter2@127.0.0.1:1/music"}
    result = run_cli("tracks", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "host=127.0.0.1 port=1 dbname=music" in lines[0]
    assert "hunter2" not in result.stderr


def test_a_bad_uuid_is_a_clear_message_not_a_traceback(cli_env: dict[str, str]) -> None:
    result = run_cli("delete", "not-a-uuid", env=cli_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "soundforge: error: track id 'not-a-uuid' is not a valid UUID"


def test_an_offset_past_postgresqls_bigint_is_a_clear_message_not_a_traceback(
    cli_env: dict[str, str],
) -> None:
    result = run_cli("tracks", "--offset", str(2**64), env=cli_env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "soundforge: error: limit must be at least 1 and offset from 0 to 9223372036854775807"
    )


def test_an_invalid_setting_names_the_variable(cli_env: dict[str, str]) -> None:
    result = run_cli("tracks", env={**cli_env, "SOUNDFORGE_DB_POOL_MAX_SIZE": "zero"})
    assert result.returncode == 2
    assert "SOUNDFORGE_DB_POOL_MAX_SIZE" in result.stderr and "Traceback" not in result.stderr


def test_tracks_lists_searches_and_prints_json(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    make_track(conn, "Song One", artist="Band")
    make_track(conn, "Other Tune", artist="Solo")
    listed = run_cli("tracks", env=cli_env)
    assert listed.returncode == 0 and "Band - Song One" in listed.stdout
    found = run_cli("tracks", "--search", "TUNE", "--json", env=cli_env)
    assert found.returncode == 0
    data = json.loads(found.stdout)
    assert [item["title"] for item in data] == ["Other Tune"]


def test_delete_removes_the_track_and_says_so(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    track = make_track(conn)
    result = run_cli("delete", str(track.id), env=cli_env)
    assert result.returncode == 0 and "deleted track" in result.stdout
    again = run_cli("delete", str(track.id), env=cli_env)
    assert again.returncode == 1 and "no track with id" in again.stderr


def test_cleanup_dry_run_lists_orphans_and_keeps_them(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    root = cli_env["SOUNDFORGE_STORAGE_PATH"]
    orphan = os.path.join(root, "downloads", "lost.wav")
    os.makedirs(os.path.dirname(orphan))
    with open(orphan, "wb") as handle:
        handle.write(b"x" * 64)
    os.utime(orphan, (0, 0))
    dry = run_cli("cleanup", "--dry-run", "--json", env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["paths"] == ["downloads/lost.wav"]
    assert os.path.exists(orphan)
    real = run_cli("cleanup", env=cli_env)
    assert real.returncode == 0 and "removed 1 orphaned file(s)" in real.stdout
    assert not os.path.exists(orphan)
