"""A worker's two connection pools stay within their own settings whatever its concurrency:
the tasks' pool (`soundforge-tasks`) within `SOUNDFORGE_DB_POOL_MAX_SIZE`, Procrastinate's
(`soundforge-queue`) within `SOUNDFORGE_QUEUE_POOL_MAX_SIZE` (plus the `LISTEN` connection it
opens outside its pool), counted in `pg_stat_activity`
while a real worker runs more downloads at once than either pool has connections."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import workflow
from soundforge.db import connect
from soundforge.engines import default_engines
from soundforge.errors import ConfigError
from soundforge.migrations import migrate
from soundforge.settings import load_settings
from soundforge.status import Status
from tests.audio_synth import write_test_song
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)


def _connections(database_url: str) -> Counter[str]:
    with connect(database_url, autocommit=True) as probe:
        rows = probe.execute(
            "SELECT application_name, count(*) AS n FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "GROUP BY application_name"
        ).fetchall()  # fmt: skip
    return Counter({row["application_name"]: row["n"] for row in rows})


def _statuses(conn: psycopg.Connection[Any], ids: list[uuid.UUID]) -> list[Status]:
    rows = conn.execute("SELECT status FROM download_jobs WHERE id = ANY(%s)", (ids,))
    return [Status(row["status"]) for row in rows]


def test_a_busy_worker_opens_no_more_connections_than_its_pool_settings(
    fresh_database: str, tmp_path: Path
) -> None:
    migrate(fresh_database)
    songs = [write_test_song(tmp_path / f"song-{index}.wav", seconds=1.0, tempo=100.0 + index)
             for index in range(8)]  # fmt: skip
    settings = settings_for(fresh_database, tmp_path / "store", db_pool_min_size=1,
                            db_pool_max_size=2, queue_pool_max_size=3,
                            download_concurrency=8)  # fmt: skip
    peaks: Counter[str] = Counter()
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peaks.update({name: n - peaks[name] for name, n in
                          _connections(fresh_database).items() if n > peaks[name]})  # fmt: skip
            done.wait(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    with connect(fresh_database, autocommit=True) as conn, \
            running_worker(settings, queues=("download",), concurrency=6):  # fmt: skip
        sampler.start()
        engines = default_engines(settings)
        imported = [workflow.import_track(conn, metadata,
                                          workflow.PipelineOptions(stems=False, analysis=False))
                    for song in songs for metadata in engines.expand(str(song))]  # fmt: skip
        ids = [item.download_job.id for item in imported]
        wait_for(lambda: _statuses(conn, ids) == [Status.COMPLETED] * len(songs), timeout_s=120,
                 message="every download to complete")  # fmt: skip
        done.set()
        sampler.join()
    assert 1 <= peaks["soundforge-tasks"] <= 2, peaks
    assert 2 <= peaks["soundforge-queue"] <= 3 + 1, peaks  # and its LISTEN connection


def test_the_tasks_pool_cannot_be_smaller_than_its_minimum() -> None:
    with pytest.raises(ConfigError, match=r"SOUNDFORGE_DB_POOL_MAX_SIZE: .*at least"):
        load_settings(db_pool_min_size=4, db_pool_max_size=2)
