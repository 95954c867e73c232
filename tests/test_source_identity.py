"""Adding what is already a track: the same local file (same path, size and modification time)
or the same URL finds that track and keeps what it completed; a changed file or `--force`
makes a new track. Each completed download records its file's SHA-256, and `soundforge tracks
--duplicates` lists the tracks whose audio is identical. All through the real CLI with a real
worker."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import psycopg

from tests.cli_runner import run_cli
from tests.support.audio import tone_bytes
from tests.support.pipeline import ServiceProcesses, service_env


def _add(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    result = run_cli("add", "--json", "--no-stems", "--no-analysis", *args, env=env)
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)
    return items


def _add_and_wait(env: dict[str, str], *sources: str) -> None:
    result = run_cli("add", "--wait", "--no-stems", "--no-analysis", *sources, env=env,
                     timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_same_file_twice_is_one_track_and_keeps_its_completed_download(
    conn: psycopg.Connection[Any], cli_env: dict[str, str], tmp_path: Path,
    services: ServiceProcesses,
) -> None:  # fmt: skip
    env = service_env(cli_env)
    song = tmp_path / "song.wav"
    song.write_bytes(tone_bytes(1.0))
    services.start("worker", "--queues", "download", env=env, label="worker")
    [first] = _add(env, str(song))
    _add_and_wait(env, str(song))

    [again] = _add(env, str(song))
    assert again["track_id"] == first["track_id"]
    assert again["download_job_id"] == first["download_job_id"] and again["queued"] is False
    rows = conn.execute("SELECT status, audio_sha256 FROM download_jobs WHERE track_id = %s",
                        (first["track_id"],)).fetchall()  # fmt: skip
    assert rows == [{"status": "completed",
                     "audio_sha256": hashlib.sha256(song.read_bytes()).hexdigest()}]  # fmt: skip

    os.utime(song, ns=(song.stat().st_atime_ns, song.stat().st_mtime_ns + 10**9))  # edited
    [changed] = _add(env, str(song))
    [forced] = _add(env, "--force", str(song))
    assert len({first["track_id"], changed["track_id"], forced["track_id"]}) == 3
    assert changed["queued"] and forced["queued"]


def test_the_same_url_twice_is_one_track_and_force_makes_another(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    url = "https://music.example/albums/1/song.mp3?token=abc"
    [first] = _add(cli_env, url)
    [again] = _add(cli_env, url)
    [forced] = _add(cli_env, "--force", url)
    [other] = _add(cli_env, "https://music.example/albums/1/other.mp3")
    assert again["track_id"] == first["track_id"] and again["queued"] is False
    assert len({first["track_id"], forced["track_id"], other["track_id"]}) == 3
    ids = [first["track_id"], forced["track_id"], other["track_id"]]
    rows = conn.execute("SELECT source_key FROM tracks WHERE id = ANY(%s::uuid[])",
                        (ids,)).fetchall()  # fmt: skip
    assert len(rows) == 3
    assert all(row["source_key"] is None or "token" not in row["source_key"] for row in rows)


def test_tracks_duplicates_lists_tracks_whose_audio_is_identical(
    cli_env: dict[str, str], tmp_path: Path, services: ServiceProcesses
) -> None:
    env = service_env(cli_env)
    song = tmp_path / "song.wav"
    song.write_bytes(tone_bytes(1.0))
    copy = tmp_path / "copy of song.wav"
    shutil.copyfile(song, copy)
    different = tmp_path / "different.wav"
    different.write_bytes(tone_bytes(1.5))
    services.start("worker", "--queues", "download", "--concurrency", "3", env=env,
                   label="worker")  # fmt: skip
    tracks = {item["track_id"] for item in _add(env, str(song), str(copy), str(different))}
    _add_and_wait(env, str(song), str(copy), str(different))

    result = run_cli("tracks", "--duplicates", "--json", env=env)
    assert result.returncode == 0, result.stderr
    listed = [item for item in json.loads(result.stdout) if item["id"] in tracks]
    digest = hashlib.sha256(song.read_bytes()).hexdigest()
    assert sorted(item["title"] for item in listed) == ["copy of song", "song"]
    assert {item["audio_sha256"] for item in listed} == {digest}
    assert {item["id"] for item in listed} < tracks

    text = run_cli("tracks", "--duplicates", env=env).stdout.splitlines()
    start = text.index(f"audio sha256 {digest}") + 1
    group = itertools.takewhile(lambda line: line.startswith("  "), text[start:])
    members = [line.split()[0] for line in group]
    assert {item["id"] for item in listed} <= set(members), text
