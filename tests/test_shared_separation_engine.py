"""The GPU worker's shared separation engine, run on the CPU with the tiny model
(`SOUNDFORGE_SEPARATION_JOBS_TOGETHER` forces it without a GPU): a processing worker whose slots
hold several waiting separations runs them in one engine process, together (their progress
advances side by side); a separation that arrives while another runs joins it at once instead
of waiting for it to end (continuous batching); cancelling one of them fails only that job, the
engine process is not killed, and the others complete with their stems, equal to each song
separated alone."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from soundforge import engine_batching, jobs, music, workflow
from soundforge.engine_batching import jobs_together
from soundforge.engine_process import ChildSetup, EngineCall, EngineDiedError
from soundforge.engines import default_engines
from soundforge.errors import JobAbortedError
from soundforge.models import Job, Stage
from soundforge.runtime import Runtime
from soundforge.separation import Separator, write_local_repo
from soundforge.settings import Settings, load_settings
from soundforge.status import Status
from soundforge.storage import Storage
from soundforge.supervisor import worker_groups
from tests.audio_synth import write_test_song
from tests.support.engines import POLITE_TOGETHER_FACTORY, STUCK_TOGETHER_FACTORY
from tests.support.job_rows import stage_rows
from tests.support.pipeline import pid_alive
from tests.support.worker_thread import running_worker, settings_for, wait_for
from tests.test_separation_support import read_stem

pytestmark = pytest.mark.timeout(300)
Connection = psycopg.Connection[Any]


def _separation(conn: Connection, track_id: uuid.UUID) -> Job | None:
    rows = stage_rows(conn, Stage.SEPARATE, track_id)
    return rows[-1] if rows else None


def _completed(conn: Connection, track_id: uuid.UUID) -> bool:
    row = _separation(conn, track_id)
    return row is not None and row.status is Status.COMPLETED


def _three_songs(database_url: str, tmp_path: Path,
                 lengths: tuple[float, float, float]) -> tuple[Settings, list[Path]]:  # fmt: skip
    """Settings for a worker whose shared engine runs three separations together (tiny
    htdemucs), and three songs of `lengths` seconds."""
    repo = write_local_repo(tmp_path / "models", "htdemucs", size="tiny")
    settings = settings_for(database_url, tmp_path / "store", demucs_repo=repo,
                            separation_jobs_together=3)  # fmt: skip
    songs = [write_test_song(tmp_path / f"song{index}.wav", seconds=seconds, tempo=120.0,
                             key="A minor", seed=index)
             for index, seconds in enumerate(lengths)]  # fmt: skip
    return settings, songs


def _import_song(conn: Connection, runtime: Runtime, song: Path) -> uuid.UUID:
    """Import a local song (its download is queued, with stems and no analysis)."""
    [metadata] = default_engines(runtime.settings).expand(str(song))
    return workflow.import_track(conn, metadata,
                                 workflow.PipelineOptions(analysis=False)).track.id  # fmt: skip


def _running_together(conn: Connection, track_ids: list[uuid.UUID]) -> list[Job] | None:
    """The separations under way at once (each past 0 %, none done), when two or more are."""
    rows = [row for row in (_separation(conn, track) for track in track_ids) if row]
    running = [row for row in rows
               if row.status is Status.PROCESSING and 0 < (row.progress or 0) < 100]  # fmt: skip
    return running if len(running) >= 2 else None


def test_waiting_separations_share_one_engine_and_a_cancel_stops_only_its_job(
    conn: Connection, database_url: str, tmp_path: Path
) -> None:
    settings, songs = _three_songs(database_url, tmp_path, (60.0, 60.0, 150.0))
    track_ids: list[uuid.UUID] = []
    with running_worker(settings, queues=("download",)) as runtime:
        for song in songs:
            track_ids.append(_import_song(conn, runtime, song))
        wait_for(lambda: all(_separation(conn, track) for track in track_ids), timeout_s=120,
                 message="three separations waiting")  # fmt: skip
    with running_worker(settings, queues=("processing",), concurrency=3) as runtime:
        wait_for(lambda: _running_together(conn, track_ids), timeout_s=120, interval_s=0.05,
                 message="separations progressing side by side")  # fmt: skip
        engines: Runtime = runtime
        [shared] = engines.engine_processes.pids()  # one engine process holds them all
        cancelled = _separation(conn, track_ids[2])  # the longest song, still running
        assert cancelled is not None and cancelled.status is Status.PROCESSING
        workflow.cancel_job(conn, cancelled.id)
        wait_for(lambda: all(_completed(conn, track) for track in track_ids[:2]),
                 timeout_s=180, message="the other separations to complete")  # fmt: skip
        row = wait_for(lambda: (r := jobs.reload(conn, cancelled)).status is Status.FAILED and r,
                       timeout_s=60, message="the cancelled separation to fail")  # fmt: skip
        assert row.error == workflow.CANCELLED
        assert pid_alive(shared) and engines.engine_processes.pids() == [shared]
    for track in track_ids[:2]:
        stems = conn.execute("SELECT count(*) AS n FROM stems WHERE track_id = %s",
                             (track,)).fetchone()  # fmt: skip
        assert stems is not None and stems["n"] == 4


def _progress(conn: Connection, track_id: uuid.UUID) -> tuple[Status, float] | None:
    row = _separation(conn, track_id)
    return (row.status, row.progress or 0.0) if row is not None else None


def test_a_separation_arriving_mid_stream_joins_it_and_a_cancelled_one_leaves_alone(
    conn: Connection, database_url: str, tmp_path: Path
) -> None:
    settings, songs = _three_songs(database_url, tmp_path, (120.0, 20.0, 90.0))
    track_ids: list[uuid.UUID] = []
    # (status and progress of the first song's separation) when each later one first progressed
    first_when_joined: dict[int, tuple[Status, float]] = {}

    def import_song(runtime: Runtime, song: Path) -> None:
        track_ids.append(_import_song(conn, runtime, song))

    def watch_joins() -> bool:
        first = _progress(conn, track_ids[0])
        for index in range(1, len(track_ids)):
            later = _progress(conn, track_ids[index])
            if first and later and later[1] > 0 and index not in first_when_joined:
                first_when_joined[index] = first
        return len(first_when_joined) == 2

    with running_worker(settings, queues=("download", "processing"), concurrency=4) as runtime:
        import_song(runtime, songs[0])
        wait_for(lambda: (p := _progress(conn, track_ids[0])) and p[1] > 0, timeout_s=120,
                 interval_s=0.05, message="the first separation to run")  # fmt: skip
        engines: Runtime = runtime
        [shared] = engines.engine_processes.pids(busy_only=True)  # the download's child is idle
        import_song(runtime, songs[1])  # they arrive while the first one runs
        import_song(runtime, songs[2])
        wait_for(watch_joins, timeout_s=240, interval_s=0.05,
                 message="the later separations to progress")  # fmt: skip
        cancelled = _separation(conn, track_ids[2])
        assert cancelled is not None and cancelled.status is Status.PROCESSING
        workflow.cancel_job(conn, cancelled.id)
        wait_for(lambda: all(_completed(conn, track) for track in track_ids[:2]),
                 timeout_s=240, message="the other separations to complete")  # fmt: skip
        row = wait_for(lambda: (r := jobs.reload(conn, cancelled)).status is Status.FAILED and r,
                       timeout_s=60, message="the cancelled separation to fail")  # fmt: skip
        assert row.error == workflow.CANCELLED
        assert pid_alive(shared) and shared in engines.engine_processes.pids()
    # Each later separation started while the first one was still separating, not after it.
    for index in (1, 2):
        status, percent = first_when_joined[index]
        assert status is Status.PROCESSING and percent < 99.0, (index, status, percent)
    store = Storage(settings.storage_path)
    alone = Separator("htdemucs", repo=settings.demucs_repo, shifts=0)
    for index in (0, 1):
        expected = alone.separate(songs[index], tmp_path / f"alone{index}")
        stems = music.list_stems_for_track(conn, track_ids[index])
        assert sorted(stem.stem_type for stem in stems) == sorted(expected)
        for stem in stems:
            assert stem.file_path is not None
            ours = read_stem(store.resolve(stem.file_path))
            theirs = read_stem(expected[stem.stem_type])
            assert ours.shape == theirs.shape
            assert float(np.abs(ours - theirs).max()) <= 1e-4, (index, stem.stem_type)


def test_jobs_together_follows_the_device_and_raises_the_processing_concurrency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    monkeypatch.setattr(engine_batching, "NVIDIA_GPUS", gpus)

    def settings(**values: Any) -> Settings:
        return load_settings(processing_concurrency=2, **values)

    assert jobs_together(settings(device="cpu")) == 1
    assert jobs_together(settings(device="auto")) == 1  # the driver shows no GPU
    (gpus / "0000:01:00.0").mkdir()
    assert engine_batching.gpu_count() == 1
    assert jobs_together(settings(device="auto")) == 4
    assert jobs_together(settings(device="cuda")) == 4
    assert jobs_together(settings(device="cpu", separation_jobs_together=3)) == 3
    groups = {group.name: group for group in worker_groups(settings(device="cuda"))}
    assert groups["processing"].concurrency == 4
    groups = {group.name: group for group in worker_groups(settings(device="cpu"))}
    assert groups["processing"].concurrency == 2


def test_a_shared_engine_stuck_in_a_batch_is_killed_after_a_stopped_call_s_grace(
    tmp_path: Path,
) -> None:
    settings = settings_for("postgresql:///unused", tmp_path / "store",
                            separation_jobs_together=2)  # fmt: skip
    setup = ChildSetup(settings, STUCK_TOGETHER_FACTORY, (), os.getpid())
    child = engine_batching.SharedEngineChild(setup, drop_grace_s=1.0)
    running = threading.Event()
    call = EngineCall("separate", (tmp_path / "song.wav", tmp_path / "out", "htdemucs"))
    try:
        with pytest.raises(JobAbortedError):  # the slot returns at once, the job is ended
            child.call(call, lambda percent: running.set(), running.is_set, None, "")
        assert child.dead is None and pid_alive(child.pid)  # not killed on the spot
        wait_for(lambda: child.dead is not None, timeout_s=60,
                 message="the stuck engine to be killed after its grace")  # fmt: skip
        assert not pid_alive(child.pid)
        with pytest.raises(EngineDiedError):  # later calls fail (retried), never hang
            child.call(call, lambda percent: None, lambda: False, None, "")
    finally:
        child.close()


def test_a_shared_engine_that_ends_a_stopped_call_is_kept(tmp_path: Path) -> None:
    settings = settings_for("postgresql:///unused", tmp_path / "store",
                            separation_jobs_together=2)  # fmt: skip
    setup = ChildSetup(settings, POLITE_TOGETHER_FACTORY, (), os.getpid())
    child = engine_batching.SharedEngineChild(setup, drop_grace_s=1.0)
    running = threading.Event()
    call = EngineCall("separate", (tmp_path / "song.wav", tmp_path / "out", "htdemucs"))
    try:
        with pytest.raises(JobAbortedError):
            child.call(call, lambda percent: running.set(), running.is_set, None, "")
        time.sleep(3.0)  # well past the grace: the engine ended the call, so it is kept
        assert child.dead is None and pid_alive(child.pid)
        cancelled = EngineCall("separate", (tmp_path / "other.wav", tmp_path / "o", "htdemucs"))
        with pytest.raises(JobAbortedError):  # stopped before its batch: never started there
            child.call(cancelled, lambda percent: None, lambda: True, None, "")
        time.sleep(2.0)
        assert child.dead is None and pid_alive(child.pid)
    finally:
        child.close()
