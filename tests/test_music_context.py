"""The Music context: tracks, search, find-or-create under a race, stems, results, deletes."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

from soundforge import music, workflow
from soundforge.db import connect
from soundforge.engines import AnalysisOutcome
from soundforge.errors import InvalidIdError, StaleRowError
from soundforge.models import Stage
from soundforge.storage import Storage, download_relpath
from tests.factories import analysed, make_job, make_track, separated
from tests.support.job_rows import stage_rows


def test_create_and_get_track_round_trips_every_field(conn: psycopg.Connection[Any]) -> None:
    track = make_track(
        conn, "Title", artist="Artist", album="Album", album_art_url="http://img",
        duration=215, spotify_id="4uLU6hMCjMI75M1A2tKUQC",
        spotify_url="https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC",
    )  # fmt: skip
    assert music.get_track(conn, track.id) == track
    assert music.get_track(conn, uuid.uuid4()) is None
    with pytest.raises(InvalidIdError, match="not a valid UUID"):
        music.get_track(conn, "nope")


def test_list_tracks_is_newest_first_and_paginates(conn: psycopg.Connection[Any]) -> None:
    for i in range(5):  # same second: creation order decides
        make_track(conn, f"t{i}")
    page1 = music.list_tracks(conn, limit=2)
    page2 = music.list_tracks(conn, limit=2, offset=2)
    page3 = music.list_tracks(conn, limit=2, offset=4)
    titles = [t.title for t in page1 + page2 + page3]
    assert titles == ["t4", "t3", "t2", "t1", "t0"]


def _titles(conn: psycopg.Connection[Any], text: str) -> list[str]:
    """The track list's search, as `soundforge tracks --search` and the web API run it."""
    return [row["title"] for row in music.track_page(conn, music.TrackQuery(search=text)).rows]


def test_search_is_case_insensitive_on_title_and_artist_and_escapes_wildcards(
    conn: psycopg.Connection[Any],
) -> None:
    make_track(conn, "Bohemian Rhapsody", artist="Queen")
    make_track(conn, "Under Pressure", artist="Queen & David Bowie")
    make_track(conn, "100% Pure", artist="Someone")
    assert set(_titles(conn, "queen")) == {
        "Bohemian Rhapsody",
        "Under Pressure",
    }
    assert _titles(conn, "RHAPS") == ["Bohemian Rhapsody"]
    assert _titles(conn, "100%") == ["100% Pure"]
    assert _titles(conn, "_") == []


def test_search_uses_the_trigram_index(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SET enable_seqscan = off")
    plan = conn.execute(
        "EXPLAIN SELECT * FROM tracks WHERE title ILIKE '%%rhaps%%' OR artist ILIKE '%%rhaps%%'"
    ).fetchall()
    text = "\n".join(row["QUERY PLAN"] for row in plan)
    assert "tracks_title_trgm_index" in text and "tracks_artist_trgm_index" in text


def test_find_or_create_under_a_50_caller_race_makes_one_row(database_url: str) -> None:
    spotify_id = "3n3Ppam7vgaVa1iaRUc9Lp"
    barrier = threading.Barrier(50)
    found: list[tuple[uuid.UUID, bool]] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            with connect(database_url, autocommit=True) as own:
                barrier.wait()
                track, created = music.find_or_create_track(
                    own, music.TrackFields(title="Mr. Brightside", spotify_id=spotify_id)
                )
                found.append((track.id, created))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        assert len(found) == 50
        assert len({track_id for track_id, _ in found}) == 1
        assert sum(created for _, created in found) == 1
    finally:
        with connect(database_url, autocommit=True) as cleanup:
            cleanup.execute("DELETE FROM tracks WHERE spotify_id = %s", (spotify_id,))


def test_stems_are_listed_per_track(conn: psycopg.Connection[Any], storage: Storage) -> None:
    track = make_track(conn)
    separated(conn, storage, track, {stem: b"x" * 10 for stem in ("vocals", "drums", "bass",
                                                                   "other")})  # fmt: skip
    stems = music.list_stems_for_track(conn, track.id)
    assert sorted(s.stem_type for s in stems) == ["bass", "drums", "other", "vocals"]
    assert music.list_stems_for_track(conn, make_track(conn).id) == []


def test_newest_analysis_result_wins_and_several_never_fail(
    conn: psycopg.Connection[Any],
) -> None:
    track = make_track(conn)
    assert music.get_analysis_result_for_track(conn, track.id) is None
    results = []
    for tempo in (100.0, 120.0, 140.0):
        columns = {"tempo": tempo, "key": "C major"}
        results.append(analysed(conn, track, columns=columns, features={"tempo": tempo}))
    # All three land in the same second: creation order decides, not the timestamp.
    newest = music.get_analysis_result_for_track(conn, track.id)
    assert newest is not None and newest.id == results[-1]
    assert newest.tempo == 140.0 and newest.features == {"tempo": 140.0}


def test_at_most_one_analysis_result_per_analysis_job(conn: psycopg.Connection[Any]) -> None:
    track = make_track(conn)
    job = make_job(conn, Stage.ANALYZE, track)
    outcome = AnalysisOutcome(columns={}, features={})
    done = workflow.complete_analysis(conn, job, outcome, "downloads/song.wav")
    with pytest.raises(StaleRowError):  # the completion of a row that moved on stores nothing
        workflow.complete_analysis(conn, job, outcome, "downloads/song.wav")
    with pytest.raises(psycopg.errors.UniqueViolation):  # and the table holds one per job
        workflow.complete_analysis(conn, done, outcome, "downloads/song.wav")


def test_delete_track_cascades_to_jobs_stems_and_results(
    conn: psycopg.Connection[Any], storage: Storage
) -> None:
    track = make_track(conn)
    other = make_track(conn, "kept")
    make_job(conn, Stage.DOWNLOAD, track)
    make_job(conn, Stage.DOWNLOAD, other)
    separated(conn, storage, track, {"vocals": b"x"})
    analysed(conn, track, columns={}, features={})
    assert music.delete_track(conn, track.id)
    assert not music.delete_track(conn, track.id)
    for table in ("download_jobs", "processing_jobs", "analysis_jobs", "stems",
                  "analysis_results"):  # fmt: skip
        row = conn.execute(
            f"SELECT count(*) AS n FROM {table} WHERE track_id = %s", (track.id,)
        ).fetchone()
        assert row is not None and row["n"] == 0, table
    assert len(stage_rows(conn, Stage.DOWNLOAD, other.id)) == 1


def test_delete_track_with_files_removes_rows_then_files(
    conn: psycopg.Connection[Any], storage: Storage
) -> None:
    track = make_track(conn)
    download = make_job(conn, Stage.DOWNLOAD, track)
    audio_rel = download_relpath(track.id, "wav")
    with storage.atomic_write(audio_rel) as handle:
        handle.write(b"x" * 100)
    conn.execute(
        "UPDATE download_jobs SET output_path = %s WHERE id = %s", (audio_rel, download.id)
    )
    _, stems = separated(conn, storage, track, {"vocals": b"x" * 100})
    stem_rel = stems["vocals"].file_path
    assert stem_rel is not None
    keeper = storage.resolve("downloads/unrelated.wav")
    keeper.write_bytes(b"y")
    deleted, removed = music.delete_track_with_files(conn, storage, track.id)
    assert deleted and sorted(removed) == sorted([audio_rel, stem_rel])
    assert not storage.resolve(audio_rel).exists() and not storage.resolve(stem_rel).exists()
    assert not (storage.root / "stems" / str(track.id)).exists()  # empty folders pruned
    assert keeper.exists()
    assert music.delete_track_with_files(conn, storage, track.id) == (False, [])
