"""Engines in killable child processes (`soundforge.engine_process`), with real workers, real
signals and real engines: a cancel or a time limit ends a chunked download without
Content-Length, the analysis of a 20-minute file, a separation and the expansion of an import
promptly, whatever the engine is doing; the engine's process group is gone (no grandchild
left) and a fresh child serves the next job; the same under a bare `procrastinate worker`."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import uuid
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from soundforge import jobs, queue, workflow
from soundforge.engine_process import EngineCall, EngineProcesses
from soundforge.engines import default_engines
from soundforge.models import IMPORT_TASK, Job, Stage
from soundforge.runtime import Runtime
from soundforge.status import Status
from tests.audio_synth import write_test_song
from tests.support.engines import (
    FACTORY,
    FAULTS_VARIABLE,
    GRANDCHILD_MARK,
    PID_FACTORY,
    write_script,
)
from tests.support.fake_spotify import spotify_id
from tests.support.job_rows import stage_rows
from tests.support.loopback_http import LoopbackServer, loopback_server
from tests.support.pipeline import child_pids, command_line, pid_alive
from tests.support.worker_thread import running_worker, settings_for, wait_for

pytestmark = pytest.mark.timeout(300)
Connection = psycopg.Connection[Any]
PROMPT_S = 10.0  # generous for a loaded CI box; the kill itself is immediate


@pytest.fixture
def song(tmp_path: Path) -> Path:
    return write_test_song(tmp_path / "song.wav", seconds=4.0, tempo=120.0, key="A minor")


@pytest.fixture(scope="module")
def long_song(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 minutes of mono 22.05 kHz audio (53 MB), synthesized cheaply: a chord with a beat."""
    path = tmp_path_factory.mktemp("long") / "twenty-minutes.wav"
    rate, seconds = 22050, 20 * 60
    t = np.arange(rate * 10) / rate  # ten seconds, repeated
    block = 0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 277.2 * t))
    block *= 0.6 + 0.4 * (np.sin(2 * np.pi * 2 * t) > 0)
    pcm = (np.clip(block, -1, 1) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        for _ in range(seconds // 10):
            out.writeframes(pcm)
    return path


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def drip_without_length(server: LoopbackServer, path: str) -> str:
    """A WAV header, then a few bytes every 50 ms, chunked, with no Content-Length: a download
    whose engine cannot report progress, until the client goes away."""

    def handler(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "audio/wav")
        request.send_header("Transfer-Encoding", "chunked")
        request.end_headers()
        if request.command == "HEAD":
            return
        header = b"RIFF\xff\xff\xff\x7fWAVEfmt " + bytes(200)
        pieces = [header] + [bytes(64)] * 100_000
        for piece in pieces:
            try:
                request.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                request.wfile.flush()
            except OSError:  # the engine was killed
                return
            if server.stop.wait(0.05):
                return

    return server.add(path, handler)


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def _import(conn: Connection, runtime: Runtime, source: str, **options: Any) -> Job:
    [metadata] = default_engines(runtime.settings).expand(source)
    imported = workflow.import_track(conn, metadata, workflow.PipelineOptions(**options))
    return imported.download_job


def _stage_row(conn: Connection, stage: Stage, track_id: uuid.UUID) -> Job | None:
    rows = stage_rows(conn, stage, track_id)
    return rows[-1] if rows else None


def _busy_child(runtime: Runtime) -> int:
    pid: int = wait_for(lambda: next(iter(runtime.engine_processes.pids(busy_only=True)), None),
                        message="an engine process to take the job")  # fmt: skip
    return pid


def _assert_cancelled_promptly(conn: Connection, job: Job, child: int) -> None:
    workflow.cancel_job(conn, job.id)
    wait_for(lambda: not pid_alive(child) and not group_members(child), timeout_s=PROMPT_S,
             message=f"engine process {child} and its group to be gone")  # fmt: skip
    row = wait_for(lambda: (r := jobs.reload(conn, job)).status is Status.FAILED and r,
                   timeout_s=PROMPT_S, message="the row to fail")  # fmt: skip
    assert row.error == workflow.CANCELLED
    wait_for(lambda: _queue_status(conn, row.procrastinate_job_id) == "aborted",
             timeout_s=PROMPT_S, message="the queue job to end aborted")  # fmt: skip


def _queue_status(conn: Connection, procrastinate_job_id: int | None) -> str | None:
    row = conn.execute("SELECT status FROM procrastinate_jobs WHERE id = %s",
                       (procrastinate_job_id,)).fetchone()  # fmt: skip
    return row["status"] if row else None


def _next_job_gets_a_fresh_child(conn: Connection, runtime: Runtime, song: Path,
                                 killed: int) -> None:  # fmt: skip
    job = _import(conn, runtime, str(song), stems=False, analysis=False)
    wait_for(lambda: jobs.reload(conn, job).status is Status.COMPLETED, timeout_s=120,
             message="the next download")  # fmt: skip
    pids = runtime.engine_processes.pids()
    assert pids and killed not in pids


def _cancel_when_running(conn: Connection, runtime: Runtime, audio: Path, stage: Stage,
                         song: Path, **options: Any) -> None:  # fmt: skip
    """Import `audio`, cancel its `stage` once running, check the engine is gone at once and
    the next job runs on a fresh engine process."""
    download = _import(conn, runtime, str(audio), **options)
    row = wait_for(lambda: (r := _stage_row(conn, stage, download.track_id))
                   and r.status is Status.PROCESSING and r,
                   timeout_s=120, message=f"the {stage.value} to start")  # fmt: skip
    child = _busy_child(runtime)
    _assert_cancelled_promptly(conn, row, child)
    _next_job_gets_a_fresh_child(conn, runtime, song, child)


def test_cancelling_a_download_without_content_length_kills_its_engine_at_once(
    conn: Connection, database_url: str, tmp_path: Path, song: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "store")
    with loopback_server() as server, running_worker(settings) as runtime:
        url = drip_without_length(server, "/endless.wav")
        job = _import(conn, runtime, url, stems=False, analysis=False)
        child = _busy_child(runtime)
        wait_for(lambda: server.requests_for("/endless.wav"), message="the download to start")
        _assert_cancelled_promptly(conn, job, child)
        _next_job_gets_a_fresh_child(conn, runtime, song, child)


def test_cancelling_the_analysis_of_a_20_minute_file_kills_its_engine_at_once(
    conn: Connection, database_url: str, tmp_path: Path, song: Path, long_song: Path
) -> None:
    settings = settings_for(database_url, tmp_path / "store",
                            import_roots=f"{tmp_path},{long_song.parent}")  # fmt: skip
    with running_worker(settings) as runtime:
        _cancel_when_running(conn, runtime, long_song, Stage.ANALYZE, song, stems=False)


def test_cancelling_a_separation_kills_its_engine_at_once(
    conn: Connection, database_url: str, tmp_path: Path, song: Path, long_song: Path,
    tiny_repo: Path,
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "store", demucs_repo=tiny_repo)
    minutes = tmp_path / "three-minutes.wav"
    with wave.open(str(long_song)) as source, wave.open(str(minutes), "wb") as out:
        out.setparams(source.getparams())
        out.writeframes(source.readframes(source.getframerate() * 180))
    with running_worker(settings, concurrency=1) as runtime:
        _cancel_when_running(conn, runtime, minutes, Stage.SEPARATE, song, analysis=False)


def test_a_silent_engine_with_a_grandchild_is_killed_with_its_whole_group(
    conn: Connection, database_url: str, tmp_path: Path, song: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    script = write_script(tmp_path / "faults.json",
                          {"fetch": [{"block": "silent", "grandchild": True}]})
    monkeypatch.setenv(FAULTS_VARIABLE, str(script))
    settings = settings_for(database_url, tmp_path / "store")
    with running_worker(settings, FACTORY) as runtime:
        job = _import(conn, runtime, str(song), stems=False, analysis=False)
        child = _busy_child(runtime)
        # the grandchild once it has exec'd (just forked, it still shows the engine's command)
        wait_for(lambda: [p for p in group_members(child)
                          if p != child and GRANDCHILD_MARK in _command_line(p)],
                 message="the engine's grandchild")  # fmt: skip
        _assert_cancelled_promptly(conn, job, child)
        _next_job_gets_a_fresh_child(conn, runtime, song, child)


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:  # it has ended
        return ""


@pytest.mark.parametrize("stage", [Stage.DOWNLOAD, Stage.ANALYZE, Stage.SEPARATE])
def test_each_engine_is_stopped_at_its_stage_time_limit(
    conn: Connection, database_url: str, tmp_path: Path, long_song: Path, tiny_repo: Path,
    stage: Stage,
) -> None:  # fmt: skip
    limit = {Stage.DOWNLOAD: 1.0, Stage.ANALYZE: 1.0, Stage.SEPARATE: 0.5}[stage]
    settings = settings_for(
        database_url, tmp_path / "store", demucs_repo=tiny_repo,
        import_roots=f"{tmp_path},{long_song.parent}",
        **{f"{stage.value}_time_limit_s": limit, f"{stage.value}_attempts": 1},
    )  # fmt: skip
    with loopback_server() as server, running_worker(settings, concurrency=1) as runtime:
        source = drip_without_length(server, "/endless.wav") if stage is Stage.DOWNLOAD \
            else str(long_song)  # fmt: skip
        download = _import(conn, runtime, source, stems=stage is Stage.SEPARATE,
                           analysis=stage is Stage.ANALYZE)  # fmt: skip
        row = wait_for(lambda: (r := _stage_row(conn, stage, download.track_id))
                       and r.status is Status.FAILED and r,
                       timeout_s=180, message=f"the {stage.value} to hit its limit")  # fmt: skip
        assert row.error == (f"time limit exceeded: {stage.value} ran longer than {limit:g} s "
                             f"(SOUNDFORGE_{stage.value.upper()}_TIME_LIMIT_S)")  # fmt: skip
        wait_for(lambda: runtime.engine_processes.pids(busy_only=True) == [],
                 message="no engine process busy")  # fmt: skip


PLAYLIST = f"https://open.spotify.com/playlist/{spotify_id(7)}"


def endless_spotify(server: LoopbackServer) -> dict[str, Any]:
    """Settings for a Spotify whose token endpoint answers with a body that never ends: expanding
    a playlist hangs in the engine, reporting nothing, until the engine is killed."""
    return {"spotify_client_id": "id", "spotify_client_secret": "secret",
            "spotify_auth_url": drip_without_length(server, "/api/token"),
            "spotify_api_url": server.url("/v1")}  # fmt: skip


def _defer_import(conn: Connection, source: str) -> int:
    queued = queue.defer(conn, IMPORT_TASK, Stage.DOWNLOAD.queue,
                         {"source": source, "stems": False, "analysis": False})  # fmt: skip
    assert queued is not None
    return queued


def test_cancelling_an_import_kills_its_expansion_at_once(
    conn: Connection, database_url: str, tmp_path: Path, song: Path
) -> None:
    with loopback_server() as server:
        settings = settings_for(database_url, tmp_path / "store", **endless_spotify(server))
        with running_worker(settings) as runtime:
            queued = _defer_import(conn, PLAYLIST)
            child = _busy_child(runtime)
            wait_for(lambda: server.requests_for("/api/token"),
                     message="the expansion to ask for a token")  # fmt: skip
            assert queue.cancel(conn, queued)
            wait_for(lambda: not pid_alive(child) and not group_members(child),
                     timeout_s=PROMPT_S, message=f"engine process {child} to be gone")  # fmt: skip
            wait_for(lambda: _queue_status(conn, queued) == "aborted", timeout_s=PROMPT_S,
                     message="the import to end aborted")  # fmt: skip
            _next_job_gets_a_fresh_child(conn, runtime, song, child)
    assert conn.execute("SELECT count(*) AS n FROM tracks").fetchone() == {"n": 1}  # the song


def test_an_import_is_stopped_at_the_download_time_limit(
    conn: Connection, database_url: str, tmp_path: Path
) -> None:
    with loopback_server() as server:
        settings = settings_for(database_url, tmp_path / "store", **endless_spotify(server),
                                download_time_limit_s=1.0, download_attempts=1)  # fmt: skip
        with running_worker(settings, concurrency=1) as runtime:
            queued = _defer_import(conn, PLAYLIST)
            child = _busy_child(runtime)
            wait_for(lambda: _queue_status(conn, queued) == "failed", timeout_s=60,
                     message="the import to hit the download time limit")  # fmt: skip
            wait_for(lambda: not pid_alive(child) and not group_members(child),
                     timeout_s=PROMPT_S, message=f"engine process {child} to be gone")  # fmt: skip
            assert runtime.engine_processes.pids(busy_only=True) == []


def test_an_import_interrupted_by_a_worker_shutdown_is_queued_again(
    conn: Connection, database_url: str, tmp_path: Path
) -> None:
    with loopback_server() as server:
        settings = settings_for(database_url, tmp_path / "store", **endless_spotify(server))
        with running_worker(settings) as runtime:
            queued = _defer_import(conn, PLAYLIST)
            child = _busy_child(runtime)
        assert not pid_alive(child)
    assert _queue_status(conn, queued) == "aborted"
    again = conn.execute(
        "SELECT args FROM procrastinate_jobs WHERE task_name = %s AND status = 'todo'",
        (IMPORT_TASK,),
    ).fetchall()  # fmt: skip
    assert [row["args"] for row in again] == [
        {"source": PLAYLIST, "stems": False, "analysis": False, "model": "htdemucs",
         "force": False}
    ]  # fmt: skip


def _pid_processes(tmp_path: Path, recycle_after: int, count: int) -> EngineProcesses:
    settings = settings_for("postgresql:///unused", tmp_path / "store",
                            engine_recycle_after_jobs=recycle_after)  # fmt: skip
    processes = EngineProcesses(settings, PID_FACTORY)
    processes.start(count)
    return processes


def _served_by(processes: EngineProcesses) -> int:
    """The pid of the child that served one call."""
    [pid] = processes.run(EngineCall("expand", ("any",)), lambda percent: None, lambda: False)
    return int(pid)


def test_a_worn_engine_process_serves_on_until_its_successor_is_ready(tmp_path: Path) -> None:
    processes = _pid_processes(tmp_path, recycle_after=2, count=1)
    try:
        first = _served_by(processes)
        assert _served_by(processes) == first  # its second call: worn out, successor starting
        assert _served_by(processes) == first  # no job waits for the successor to start
        wait_for(lambda: not pid_alive(first), message="the worn child to end")
        [successor] = processes.pids()
        assert _served_by(processes) == successor != first
    finally:
        processes.close()


def test_a_worn_engine_process_is_replaced_while_a_ready_one_serves(tmp_path: Path) -> None:
    processes = _pid_processes(tmp_path, recycle_after=3, count=2)

    def served_by() -> int:
        return _served_by(processes)

    try:
        barrier = threading.Barrier(2)

        def together(_: int) -> int:
            barrier.wait()
            return served_by()

        with ThreadPoolExecutor(2) as pair:  # both children busy at once: both have started
            both = set(pair.map(together, range(2)))
        assert both == set(processes.pids())
        worn = served_by()
        assert served_by() == worn  # the warm child used last serves again: its third call
        assert served_by() == (both - {worn}).pop()  # the other ready one, not a new one
        wait_for(lambda: not pid_alive(worn), message="the worn child to exit")
        wait_for(lambda: len(processes.pids()) == 2, message="a fresh child in its place")
        assert worn not in processes.pids()
    finally:
        processes.close()


def _engine_children(parent: int) -> list[int]:
    return [pid for pid in child_pids(parent)
            if "soundforge.engine_process" in command_line(pid) and pid_alive(pid)]  # fmt: skip


@pytest.fixture
def bare_worker(cli_env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`procrastinate --app=soundforge.app.app worker`, as the README shows it."""
    env = cli_env | {"SOUNDFORGE_RETRY_WAIT_S": "0", "SOUNDFORGE_LOG_LEVEL": "INFO"}
    procrastinate = str(Path(sys.executable).with_name("procrastinate"))
    with (tmp_path / "procrastinate-worker.log").open("wb") as log:
        process = subprocess.Popen(
            [procrastinate, "--app=soundforge.app.app", "worker", "--queues=download"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_cancel_holds_under_a_bare_procrastinate_worker(
    conn: Connection, database_url: str, tmp_path: Path, song: Path,
    bare_worker: subprocess.Popen[bytes],
) -> None:  # fmt: skip
    settings = settings_for(database_url, tmp_path / "store")
    with loopback_server() as server:
        from soundforge.runtime import build_runtime

        runtime = build_runtime(settings)  # for expand only: nothing runs here
        try:
            url = drip_without_length(server, "/endless.wav")
            job = _import(conn, runtime, url, stems=False, analysis=False)
            wait_for(lambda: server.requests_for("/endless.wav"), timeout_s=120,
                     message="the download to start")  # fmt: skip
            [child] = wait_for(lambda: _engine_children(bare_worker.pid),
                               message="the worker's engine process")  # fmt: skip
            _assert_cancelled_promptly(conn, job, child)
            quick = _import(conn, runtime, str(song), stems=False, analysis=False)
            wait_for(lambda: jobs.reload(conn, quick).status is Status.COMPLETED,
                     timeout_s=120, message="the next download")  # fmt: skip
            assert child not in _engine_children(bare_worker.pid)
            assert bare_worker.poll() is None
        finally:
            runtime.close()
