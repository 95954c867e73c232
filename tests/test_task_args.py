"""Hostile `procrastinate defer` arguments: an unknown or missing name, a wrong type, a bad id
or an unknown model fails the queue job at its first attempt (never retried), creates no track
or job row, and the worker goes on with the next job."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from soundforge import queue, workflow
from soundforge.models import IMPORT_TASK, Stage
from soundforge.separation.errors import UnknownModelError
from soundforge.sources import TrackMetadata
from soundforge.status import Status
from soundforge.task_args import BadTaskArgumentError
from soundforge.tasks import maintenance, stages
from tests.audio_synth import write_test_song
from tests.support.job_rows import stage_rows
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)
TRACK_ID = "00000000-0000-4000-8000-000000000001"


@pytest.mark.parametrize(
    ("task", "kwargs", "message"),
    [
        (stages.import_source, {"source": 123}, "'source' must be a string, not a whole number"),
        (stages.import_source, {"source": None}, "'source' must be a string, not null"),
        (stages.import_source, {}, "missing a required argument: 'source'"),
        (stages.import_source, {"source": "x.wav", "evil": 1}, "unexpected keyword argument"),
        (stages.import_source, {"source": "x.wav", "force": "false"},
         "'force' must be true or false, not a string"),
        (stages.download, {"track_id": 5}, "'track_id' must be a string"),
        (stages.separate, {"track_id": TRACK_ID, "model": ["a"]}, "'model' must be a string"),
        (stages.analyze, {"track_id": TRACK_ID, "job_id": {}}, "'job_id' must be a string or null"),
        (maintenance.prune_jobs, {"days": True}, "'days' must be a whole number or null"),
    ],
)  # fmt: skip
def test_wrong_names_and_types_are_refused_naming_the_argument(
    task: Any, kwargs: dict[str, Any], message: str
) -> None:
    arguments = (None,) if task.pass_context else ()  # refused before the context is used
    with pytest.raises(BadTaskArgumentError, match=message) as refused:
        task.func(*arguments, **kwargs)
    assert refused.value.args[0].startswith(task.name)


def test_hostile_defers_fail_at_once_leave_no_rows_and_the_worker_goes_on(
    conn: psycopg.Connection[Any], database_url: str, tmp_path: Path
) -> None:
    song = write_test_song(tmp_path / "song.wav", seconds=2.0, tempo=100.0, key="D major")
    hostile: list[tuple[str, dict[str, Any]]] = [
        (IMPORT_TASK, {"source": 123}),
        (IMPORT_TASK, {"source": str(song), "evil": 1}),
        (IMPORT_TASK, {"source": str(song), "model": "../../etc/passwd"}),
        (IMPORT_TASK, {"source": "/" + "a" * 100_000}),
        (Stage.DOWNLOAD.task_name, {"track_id": "nope"}),
        (Stage.ANALYZE.task_name, {"track_id": TRACK_ID, "job_id": "zzz"}),
        (Stage.ANALYZE.task_name, {"track_id": TRACK_ID, "force": "false"}),
    ]
    for task_name, args in hostile:
        queue.defer(conn, task_name, Stage.DOWNLOAD.queue, args)
    settings = settings_for(database_url, tmp_path / "store")  # 3 download attempts
    with running_worker(settings, queues=["download"]):
        ended = wait_for(lambda: _ended(conn, len(hostile)), timeout_s=120,
                         message="every hostile job to end")  # fmt: skip
        assert [(row["status"], row["attempts"]) for row in ended] == [("failed", 1)] * len(
            hostile
        ), ended
        assert conn.execute("SELECT count(*) AS n FROM tracks").fetchone() == {"n": 0}
        metadata = TrackMetadata(title="Song", artist=None, album=None, album_art_url=None,
                                 duration=None, spotify_id=None, spotify_url=None,
                                 origin=str(song))  # fmt: skip
        good = workflow.import_track(conn, metadata, workflow.PipelineOptions(stems=False,
                                                                              analysis=False))
        wait_for(lambda: stage_rows(conn, Stage.DOWNLOAD, good.track.id)[0].status
                 is Status.COMPLETED, timeout_s=120, message="the good download")  # fmt: skip


def _ended(conn: psycopg.Connection[Any], count: int) -> list[dict[str, Any]] | None:
    rows = list(conn.execute(
        "SELECT task_name, status, attempts FROM procrastinate_jobs "
        "WHERE queue_name = 'download' ORDER BY id"
    ))  # fmt: skip
    done = [row for row in rows if row["status"] not in ("todo", "doing")]
    return rows if len(done) == count and len(rows) == count else None


def test_an_unknown_model_is_refused_before_any_row_is_made() -> None:
    with pytest.raises(UnknownModelError, match=re.escape("unknown separation model '../../x'")):
        workflow.PipelineOptions(model="../../x")
