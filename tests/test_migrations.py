"""`soundforge migrate`: the schema matches the spec's contract, runs are idempotent, serialised
and refuse changed files."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge.db import connect
from soundforge.migrations import MigrationError, migrate, migration_status, schema_dir

TS = "timestamp without time zone"
INSERT_ORDER = {"insert_order": ("bigint", "NO", None)}  # ours: exact creation order
JOB_COLUMNS = {
    **INSERT_ORDER,
    "lock_version": ("integer", "NO", "1"),
    "procrastinate_job_id": ("bigint", "YES", None),
    "attempts": ("integer", "NO", "0"),
    # ours (019): when a worker took the row and when it ended, for the dashboard and metrics
    "started_at": (TS, "YES", None),
    "finished_at": (TS, "YES", None),
}
TIMESTAMPS = {"inserted_at": (TS, "NO", None), "updated_at": (TS, "NO", None)}
STATUS = ("character varying", "NO", "'queued'::character varying")

# (data_type, is_nullable, column_default) per column, from the spec's migration.
EXPECTED_COLUMNS: dict[str, dict[str, tuple[str, str, str | None]]] = {
    "tracks": {
        "id": ("uuid", "NO", None),
        "spotify_id": ("text", "YES", None),
        "spotify_url": ("text", "YES", None),
        "title": ("text", "NO", None),
        "artist": ("text", "YES", None),
        "album": ("text", "YES", None),
        "album_art_url": ("text", "YES", None),
        "duration": ("integer", "YES", None),
        **TIMESTAMPS,
        **INSERT_ORDER,
        "source_key": ("text", "YES", None),  # ours: the same URL or file finds its track
    },
    "download_jobs": {
        "id": ("uuid", "NO", None),
        "track_id": ("uuid", "NO", None),
        "status": STATUS,
        "progress": ("integer", "YES", "0"),
        "output_path": ("text", "YES", None),
        "file_size": ("bigint", "YES", None),
        "error": ("text", "YES", None),
        **TIMESTAMPS,
        **JOB_COLUMNS,
        "source": ("text", "YES", None),  # ours: where the audio comes from
        "audio_sha256": ("text", "YES", None),  # ours: identical audio across tracks
    },
    "processing_jobs": {
        "id": ("uuid", "NO", None),
        "track_id": ("uuid", "NO", None),
        "model": ("text", "YES", "'htdemucs'::text"),
        "status": STATUS,
        "progress": ("integer", "YES", "0"),
        "output_path": ("text", "YES", None),
        "options": ("jsonb", "YES", None),
        "error": ("text", "YES", None),
        **TIMESTAMPS,
        **JOB_COLUMNS,
    },
    "analysis_jobs": {
        "id": ("uuid", "NO", None),
        "track_id": ("uuid", "NO", None),
        "status": STATUS,
        "progress": ("integer", "YES", "0"),
        "results": ("jsonb", "YES", None),
        "error": ("text", "YES", None),
        **TIMESTAMPS,
        **JOB_COLUMNS,
    },
    "stems": {
        "id": ("uuid", "NO", None),
        "processing_job_id": ("uuid", "NO", None),
        "track_id": ("uuid", "NO", None),
        "stem_type": ("character varying", "NO", None),
        "file_path": ("text", "YES", None),
        "file_size": ("bigint", "YES", None),
        **TIMESTAMPS,
    },
    "analysis_results": {
        "id": ("uuid", "NO", None),
        "track_id": ("uuid", "NO", None),
        "analysis_job_id": ("uuid", "NO", None),
        "tempo": ("double precision", "YES", None),
        "key": ("text", "YES", None),
        "energy": ("double precision", "YES", None),
        "spectral_centroid": ("double precision", "YES", None),
        "spectral_rolloff": ("double precision", "YES", None),
        "zero_crossing_rate": ("double precision", "YES", None),
        "features": ("jsonb", "YES", None),
        **TIMESTAMPS,
        **INSERT_ORDER,
    },
}

EXPECTED_INDEXES = {
    "tracks": {"tracks_pkey", "tracks_spotify_id_index", "tracks_inserted_at_index",
               "tracks_title_trgm_index", "tracks_artist_trgm_index", "tracks_source_key_index",
               "tracks_insert_order_index"},
    "stems": {"stems_pkey", "stems_processing_job_id_index", "stems_track_id_index",
              "stems_inserted_at_index"},
    "analysis_results": {"analysis_results_pkey", "analysis_results_track_id_index",
                         "analysis_results_analysis_job_id_index",
                         "analysis_results_inserted_at_index", "analysis_results_tempo_index",
                         "analysis_results_analysis_job_id_unique_index",
                         "analysis_results_track_id_insert_order_index",
                         "analysis_results_key_index"},
    **{
        table: {f"{table}_pkey", f"{table}_track_id_index", f"{table}_status_index",
                f"{table}_inserted_at_index", f"{table}_track_id_insert_order_index",
                f"{table}_finished_at_index"}
        | ({"download_jobs_audio_sha256_index"} if table == "download_jobs" else set())
        for table in ("download_jobs", "processing_jobs", "analysis_jobs")
    },
}  # fmt: skip

EXPECTED_FOREIGN_KEYS = {
    ("download_jobs", "track_id", "tracks"),
    ("processing_jobs", "track_id", "tracks"),
    ("analysis_jobs", "track_id", "tracks"),
    ("stems", "processing_job_id", "processing_jobs"),
    ("stems", "track_id", "tracks"),
    ("analysis_results", "track_id", "tracks"),
    ("analysis_results", "analysis_job_id", "analysis_jobs"),
    ("soundforge_worker_queues", "worker_id", "procrastinate_workers"),  # ours (019)
    ("download_credentials", "download_job_id", "download_jobs"),  # 010: secrets apart
}


def test_catalog_matches_the_spec_column_by_column(conn: psycopg.Connection[Any]) -> None:
    for table, expected in EXPECTED_COLUMNS.items():
        rows = conn.execute(
            "SELECT column_name, data_type, is_nullable, column_default,"
            " character_maximum_length, datetime_precision"
            " FROM information_schema.columns WHERE table_name = %s",
            (table,),
        ).fetchall()
        actual = {r["column_name"]: (r["data_type"], r["is_nullable"], r["column_default"])
                  for r in rows}  # fmt: skip
        assert actual == expected, table
        for row in rows:
            if row["data_type"] == "character varying":
                assert row["character_maximum_length"] == 255
            if row["data_type"] == TS:
                assert row["datetime_precision"] == 0
        pkey = conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
            (table,),
        ).fetchall()
        assert [r["attname"] for r in pkey] == ["id"]


def test_catalog_has_every_index_with_ectos_names(conn: psycopg.Connection[Any]) -> None:
    for table, expected in EXPECTED_INDEXES.items():
        rows = conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))
        assert {r["indexname"] for r in rows} == expected, table
    unique = conn.execute(
        "SELECT indexname FROM pg_indexes WHERE indexdef LIKE 'CREATE UNIQUE%%'"
        " AND tablename IN ('tracks', 'analysis_results') AND indexname NOT LIKE '%%_pkey'"
    ).fetchall()
    assert {r["indexname"] for r in unique} == {
        "tracks_spotify_id_index",
        "tracks_source_key_index",
        "analysis_results_analysis_job_id_unique_index",
    }
    trgm = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'tracks_title_trgm_index'"
    ).fetchone()
    assert trgm is not None and "gin" in trgm["indexdef"] and "gin_trgm_ops" in trgm["indexdef"]


def test_every_foreign_key_cascades_on_delete(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        "SELECT tc.table_name, kcu.column_name, ccu.table_name AS target, rc.delete_rule,"
        " tc.constraint_name"
        " FROM information_schema.table_constraints tc"
        " JOIN information_schema.key_column_usage kcu USING (constraint_name)"
        " JOIN information_schema.constraint_column_usage ccu USING (constraint_name)"
        " JOIN information_schema.referential_constraints rc USING (constraint_name)"
        " WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = 'public'"
        " AND tc.table_name NOT LIKE 'procrastinate%%'"
    ).fetchall()
    assert {(r["table_name"], r["column_name"], r["target"]) for r in rows} == (
        EXPECTED_FOREIGN_KEYS
    )
    for row in rows:
        assert row["delete_rule"] == "CASCADE"
        assert row["constraint_name"] == f"{row['table_name']}_{row['column_name']}_fkey"


def test_migrate_twice_is_a_no_op_the_second_time(fresh_database: str) -> None:
    first = migrate(fresh_database)
    assert "001_music_tables.sql" in first and "procrastinate/schema.sql" in first
    assert migrate(fresh_database) == []
    assert not any(state.pending for state in migration_status(fresh_database))


def test_status_lists_pending_files_on_an_empty_database(fresh_database: str) -> None:
    states = migration_status(fresh_database)
    assert states and all(state.pending for state in states)
    with connect(fresh_database) as check:
        row = check.execute("SELECT to_regclass('soundforge_schema_migrations') AS t").fetchone()
    assert row is not None and row["t"] is None  # --status writes nothing


def test_concurrent_migrate_runs_apply_each_file_once(fresh_database: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            barrier.wait()
            results.append(migrate(fresh_database))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(set(applied))  # nothing applied twice
    assert "003_job_status_guard.sql" in applied


def test_migrate_refuses_an_applied_file_that_changed(fresh_database: str, tmp_path: Path) -> None:
    directory = tmp_path / "schema"
    shutil.copytree(schema_dir(), directory)
    migrate(fresh_database, directory)
    edited = directory / "001_music_tables.sql"
    edited.write_text(edited.read_text() + "\n-- edited after it was applied\n")
    with pytest.raises(MigrationError, match=r"001_music_tables\.sql .*changed"):
        migrate(fresh_database, directory)
    assert [s.name for s in migration_status(fresh_database, directory) if s.changed] == [
        "001_music_tables.sql"
    ]


def test_migrate_applies_a_new_file_and_rolls_back_a_broken_one(
    fresh_database: str, tmp_path: Path
) -> None:
    directory = tmp_path / "schema"
    shutil.copytree(schema_dir(), directory)
    migrate(fresh_database, directory)
    (directory / "900_broken.sql").write_text(
        "CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;\n"
    )
    with pytest.raises(MigrationError, match=r"900_broken\.sql failed"):
        migrate(fresh_database, directory)
    with connect(fresh_database) as check:
        row = check.execute("SELECT to_regclass('half_done') AS t").fetchone()
    assert row is not None and row["t"] is None
    assert [s.name for s in migration_status(fresh_database, directory) if s.pending] == [
        "900_broken.sql"
    ]


def test_migrate_runs_the_upgrades_an_older_procrastinate_schema_lacks(
    fresh_database: str,
) -> None:
    from procrastinate.schema import SchemaManager

    with connect(fresh_database, autocommit=True) as setup:
        setup.execute(SchemaManager.get_schema().encode())  # `procrastinate schema --apply`
        # ... as of Procrastinate 3.3: without what its 3.4 upgrade adds
        setup.execute("DROP FUNCTION procrastinate_retry_job_v2")
        setup.execute("ALTER TYPE procrastinate_job_event_type RENAME VALUE 'retried' TO 'x'")

    done = migrate(fresh_database)

    upgrades = [name for name in done if name.startswith("procrastinate/")]
    assert upgrades == ["procrastinate/03.04.00_01_pre_add_retry_failed_job_procedure.sql",
                        "procrastinate/03.04.00_50_post_add_retry_failed_job_procedure.sql"]
    with connect(fresh_database) as check:
        row = check.execute("SELECT to_regproc('procrastinate_retry_job_v2') AS f").fetchone()
    assert row is not None and row["f"] is not None
    assert not any(state.pending for state in migration_status(fresh_database))


def test_secrets_stored_before_010_are_kept_apart_and_masked(
    fresh_database: str, tmp_path: Path
) -> None:
    """An installation upgraded from 009: its stored URLs keep working (the whole URL moves
    to download_credentials) and no longer show their password or signature."""
    old_schema = tmp_path / "schema"
    old_schema.mkdir()
    for schema_file in sorted(schema_dir().glob("*.sql")):
        if schema_file.name < "010":
            (old_schema / schema_file.name).write_text(schema_file.read_text())
    migrate(fresh_database, old_schema)
    secret_url = "http://dan:OLDPW@cdn.example/a.flac?X-Amz-Signature=OLDSIG&x=1"
    plain_url = "http://cdn.example/b.flac"
    with connect(fresh_database, autocommit=True) as conn:
        track = conn.execute(
            "INSERT INTO tracks (id, title, inserted_at, updated_at) "
            "VALUES (gen_random_uuid(), 't', now(), now()) RETURNING id"
        ).fetchone()
        assert track is not None
        for source, status, error in (
            (secret_url, "failed", f"{secret_url}: HTTP 403 Forbidden"),
            (plain_url, "completed", None),
        ):
            conn.execute(
                "INSERT INTO download_jobs (id, track_id, source, status, progress, error, "
                "inserted_at, updated_at) VALUES (gen_random_uuid(), %s, %s, 'queued', 0, "
                "NULL, now(), now())", (track["id"], source),
            )  # fmt: skip
            conn.execute(
                "UPDATE download_jobs SET status = %s, error = %s WHERE source = %s",
                (status, error, source),
            )
        before = conn.execute(
            "SELECT source, lock_version, updated_at FROM download_jobs ORDER BY source"
        ).fetchall()

    migrate(fresh_database)

    with connect(fresh_database, autocommit=True) as conn:
        after = conn.execute(
            "SELECT job.source, job.error, job.lock_version, job.updated_at, "
            "credential.source AS kept FROM download_jobs job LEFT JOIN download_credentials "
            "credential ON credential.download_job_id = job.id ORDER BY job.source"
        ).fetchall()
        failures = conn.execute("SELECT error FROM soundforge_failures").fetchall()
    assert [row["source"] for row in after] == ["http://***@cdn.example/a.flac?***", plain_url]
    assert after[0]["error"] == "http://***@cdn.example/a.flac?*** HTTP 403 Forbidden"
    assert [row["kept"] for row in after] == [secret_url, None]
    unchanged = {(r["lock_version"], r["updated_at"]) for r in before}
    assert {(r["lock_version"], r["updated_at"]) for r in after} == unchanged  # no status change
    assert "OLD" not in repr(failures) and "OLD" not in repr(after[1:])
