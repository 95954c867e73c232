"""The one track-list query (`music.track_page`) that `soundforge tracks`/`status` and the web
dashboard share: tempo range and key filters on the newest analysis, search, paging, newest
first; and the CLI printing tempo and key."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from soundforge import music
from soundforge.errors import PermanentError
from soundforge.keys import InvalidKeyError, camelot, normalize_key
from soundforge.models import Stage
from tests.cli_runner import run_cli
from tests.factories import make_job, make_track
from tests.support.web import analysed_track


def test_key_names_and_camelot_codes_convert_both_ways() -> None:
    assert camelot("A minor") == "8A" and camelot("C major") == "8B"
    assert camelot("F# minor") == "11A" and camelot("E major") == "12B"
    assert normalize_key("Am") == "A minor" and normalize_key("8a") == "A minor"
    assert normalize_key("Bb major") == "A# major" and normalize_key("12B") == "E major"
    with pytest.raises(InvalidKeyError):
        normalize_key("H minor")


def test_tempo_range_text_parses_open_and_closed_ends() -> None:
    assert music.parse_tempo_range("120-130") == (120.0, 130.0)
    assert music.parse_tempo_range("120-") == (120.0, None)
    assert music.parse_tempo_range("-130") == (None, 130.0)
    with pytest.raises(PermanentError):
        music.parse_tempo_range("fast")


def test_track_page_filters_tempo_and_key_on_the_newest_analysis(
    conn: psycopg.Connection[Any],
) -> None:
    slow = analysed_track(conn, "Slow", 90.0, "A minor")
    wanted = analysed_track(conn, "Wanted", 125.0, "A minor")
    analysed_track(conn, "Other key", 126.0, "C major")
    changed = analysed_track(conn, "Re-analysed", 124.0, "A minor")
    job = make_job(conn, Stage.ANALYZE, changed)  # a newer analysis says 140 BPM
    music.create_analysis_result(conn, track_id=changed.id, analysis_job_id=job.id,
                                 columns={"tempo": 140.0, "key": "A minor"}, features={})
    make_track(conn, "Not analysed")
    page = music.track_page(conn, music.TrackQuery(tempo_min=120, tempo_max=130, key="8A"))
    assert [row["title"] for row in page.rows] == ["Wanted"]
    assert page.rows[0]["id"] == wanted.id and page.rows[0]["key_confidence"] == 0.75
    everything = music.track_page(conn, music.TrackQuery(key="Am"))
    assert [row["id"] for row in everything.rows] == [changed.id, wanted.id, slow.id]
    with pytest.raises(PermanentError, match="empty"):
        music.track_page(conn, music.TrackQuery(tempo_min=130, tempo_max=120))


def test_track_page_pages_newest_first_and_says_whether_more_follow(
    conn: psycopg.Connection[Any],
) -> None:
    for number in range(5):
        make_track(conn, f"Song {number}", artist="Band")
    first = music.track_page(conn, music.TrackQuery(search="band", limit=2))
    last = music.track_page(conn, music.TrackQuery(search="band", limit=2, offset=4))
    assert [row["title"] for row in first.rows] == ["Song 4", "Song 3"] and first.has_more
    assert [row["title"] for row in last.rows] == ["Song 0"] and not last.has_more


def test_tracks_and_status_commands_show_and_filter_tempo_and_key(
    conn: psycopg.Connection[Any], cli_env: dict[str, str]
) -> None:
    analysed_track(conn, "Groove", 128.0, "A minor", artist="Band")
    analysed_track(conn, "Ballad", 72.0, "A minor")
    listed = run_cli("tracks", "--tempo", "120-130", "--key", "A minor", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    assert "128.0 BPM" in listed.stdout and "A minor (8A)" in listed.stdout
    assert "Groove" in listed.stdout and "Ballad" not in listed.stdout
    as_json = run_cli("tracks", "--json", "--key", "8A", env=cli_env)
    rows = json.loads(as_json.stdout)
    assert [(row["title"], row["tempo"], row["key"], row["key_camelot"]) for row in rows] == [
        ("Ballad", 72.0, "A minor", "8A"), ("Groove", 128.0, "A minor", "8A")]
    assert rows[0]["stages"]["analyze"]["status"] == "queued"
    status = run_cli("status", env=cli_env)
    assert status.returncode == 0 and "72.0 BPM" in status.stdout
    status_json = json.loads(run_cli("status", "--json", env=cli_env).stdout)
    assert {row["key_camelot"] for row in status_json} == {"8A"}
    bad = run_cli("tracks", "--key", "H minor", env=cli_env)
    assert bad.returncode != 0 and "is not a key" in bad.stderr and "Traceback" not in bad.stderr
