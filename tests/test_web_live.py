"""Live progress under load: 200 browsers (raw SSE clients) follow one server while a real
worker runs a pipeline. The server holds one LISTEN connection whatever the number of clients,
every client receives every event of the pipeline in order, and the server's memory grows by a
bounded amount (counts and sizes are asserted, never times)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.audio import tone_bytes
from tests.support.pipeline import (
    ServiceProcesses,
    add_track,
    row_history,
    service_env,
    wait_for_pipeline,
)
from tests.support.web import start_web
from tests.support.worker_thread import wait_for

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]
CLIENTS = 200
MAX_GROWTH_BYTES = 100 * 1024 * 1024


class SseClients:
    """`count` raw HTTP clients of /api/events on one event loop in a thread; each keeps the
    progress events it receives."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.received: list[list[dict[str, Any]]] = [[] for _ in range(count)]
        self.connected = 0
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    async def _client(self, index: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Accept: text/event-stream\r\n\r\n")  # fmt: skip
        await writer.drain()
        try:
            while True:
                line = (await reader.readline()).decode()
                if not line:
                    return
                if line.startswith(": connected"):
                    self.connected += 1
                    if self.connected == self.count:
                        self.ready.set()
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event.get("type") == "progress":
                        self.received[index].append(event)
        finally:
            writer.close()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        tasks = [asyncio.create_task(self._client(i)) for i in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _listeners(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'soundforge-web-events'"
    ).fetchone()
    assert row is not None
    return int(row["n"])


def test_two_hundred_live_clients_share_one_listen_and_each_gets_every_event(
    conn: psycopg.Connection[Any], services: ServiceProcesses, cli_env: dict[str, str],
    database_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    env = service_env(cli_env)
    web = start_web(services, env)
    port = int(web.url.rsplit(":", 1)[1])
    services.start("worker", "--queues", "download", "--name", "live-test", env=env,
                   label="worker")  # fmt: skip
    wait_for(lambda: _listeners(conn) == 1, timeout_s=30, message="the server's LISTEN")
    rss_before = _rss_bytes(web.process.pid)
    clients = SseClients(port, CLIENTS)
    try:
        assert clients.ready.wait(120), f"only {clients.connected} clients connected"
        assert _listeners(conn) == 1
        song = tmp_path / "live.wav"
        song.write_bytes(tone_bytes(3.0))
        with row_history(database_url) as history:
            track_id = add_track(env, str(song), "--no-stems", "--no-analysis")
            wait_for_pipeline(database_url, track_id, timeout_s=180)
            wait_for(lambda: sum(e.track_id == track_id for e in history.events) >= 3,
                     timeout_s=10, message="the pipeline's events")  # fmt: skip
        expected = [(e.stage, e.status, e.progress) for e in history.events
                    if e.track_id == track_id]  # fmt: skip

        def everyone_has_all() -> bool:
            return all(len([e for e in got if e["track_id"] == track_id]) >= len(expected)
                       for got in clients.received)  # fmt: skip

        wait_for(everyone_has_all, timeout_s=60, message="every client to get every event")
        for got in clients.received:
            mine = [(e["stage"], e["status"], e["progress"]) for e in got
                    if e["track_id"] == track_id]  # fmt: skip
            assert mine == expected
        assert expected[-1] == ("download", "completed", 100)
        with web.client() as client:
            metrics = client.get("/metrics").text
        assert f"soundforge_web_live_clients {CLIENTS}.0" in metrics
        assert _listeners(conn) == 1
        growth = _rss_bytes(web.process.pid) - rss_before
        assert growth < MAX_GROWTH_BYTES, f"{CLIENTS} live clients grew the server by {growth} B"
    finally:
        clients.close()


def test_a_client_that_stops_reading_is_told_to_resync_instead_of_queueing_forever() -> None:
    from soundforge.web.events import RESYNC, ProgressBroadcaster, next_message

    async def scenario() -> tuple[int, bool, str | None, str | None, int]:
        broadcaster = ProgressBroadcaster("postgresql://unused", queue_size=3)
        async with broadcaster.subscribe() as stuck, broadcaster.subscribe() as reader:
            for number in range(10):
                broadcaster._fan_out(f'{{"n": {number}}}')
                if number < 5:
                    assert await next_message(reader, 1.0) == f'{{"n": {number}}}'
            held, lagging = stuck.queue.qsize(), stuck.lagging
            first = await next_message(stuck, 0.1)
            after = await next_message(stuck, 0.1)
            return held, lagging, first, after, broadcaster.stats.dropped

    held, lagging, first, after, dropped = asyncio.run(scenario())
    assert held == 3 and lagging and dropped == 2  # the stuck one, and the reader after n=4
    assert first == RESYNC and after is None
