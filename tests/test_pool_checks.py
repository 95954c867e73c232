"""Both connection pools replace a connection the server has ended (a restart, a terminated
backend) before lending it, and lend a healthy idle connection without a round trip."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
from procrastinate import PsycopgConnector
from psycopg import pq

from soundforge.app import build_app
from soundforge.db import connect, create_pool
from soundforge.pool_checks import server_has_spoken
from soundforge.settings import load_settings


def _terminate(database_url: str, application_name: str) -> list[int]:
    """End every backend of `application_name` on this database, as a server restart would."""
    with connect(database_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (application_name,),
        ).fetchall()
    return [row["pid"] for row in rows]


def _wait_until_spoken(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    deadline = time.monotonic() + 10
    while not server_has_spoken(conn):
        assert time.monotonic() < deadline, "the terminated backend's socket never got readable"
        time.sleep(0.01)


def test_the_tasks_pool_replaces_a_terminated_connection(database_url: str) -> None:
    with create_pool(database_url, min_size=1, max_size=1, application_name="sf-check") as pool:
        with pool.connection() as conn:
            first = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
            idle = conn
        assert _terminate(database_url, "sf-check") == [first]
        _wait_until_spoken(idle)
        with pool.connection() as conn:
            second = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]
    assert second != first


class _Trace:
    """libpq's protocol trace of one connection, into a file: what the client sent and got."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        self.handle = self.path.open("w")
        conn.pgconn.trace(self.handle.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)

    def stop(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> str:
        conn.pgconn.untrace()
        self.handle.close()
        return self.path.read_text()


def test_the_tasks_pool_lends_a_healthy_idle_connection_without_a_round_trip(
    database_url: str, tmp_path: Path
) -> None:
    trace = _Trace(tmp_path / "libpq.trace")
    with create_pool(database_url, min_size=1, max_size=1, application_name="sf-check") as pool:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
            assert not server_has_spoken(conn)
        trace.start(conn)
        with pool.connection() as again:
            assert again is conn
            assert trace.stop(again) == "", "lending the connection sent the server a message"


def test_the_queue_pool_lends_a_healthy_idle_connection_without_a_round_trip(
    database_url: str, tmp_path: Path
) -> None:
    app = build_app(load_settings(database_url=database_url))
    trace = _Trace(tmp_path / "libpq.trace")

    async def scenario() -> str:
        async with app.open_async():
            connector = app.connector
            assert isinstance(connector, PsycopgConnector)
            pool = connector.pool
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            trace.start(conn)  # after the COMMIT that gave it back
            async with pool.connection() as again:
                assert again is conn
                return trace.stop(again)

    assert asyncio.run(scenario()) == "", "lending the connection sent the server a message"


def test_the_queue_pool_replaces_a_terminated_connection(database_url: str) -> None:
    app = build_app(load_settings(database_url=database_url))

    async def backend_pid() -> int:
        row = await app.connector.execute_query_one_async("SELECT pg_backend_pid() AS pid")
        return int(row["pid"])

    async def scenario() -> tuple[int, list[int], int]:
        async with app.open_async():
            first = await backend_pid()
            ended = _terminate(database_url, "soundforge-queue")
            await asyncio.sleep(0.2)  # the server's goodbye reaches the idle socket
            return first, ended, await backend_pid()

    first, ended, second = asyncio.run(scenario())
    assert first in ended
    assert second not in ended
