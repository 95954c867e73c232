"""The connection pools' `check`: a pooled connection is tested with a round trip only when the
server has sent it something while it sat idle.

psycopg_pool's `check_connection` sends an empty query every time a connection is lent: two
round trips per job on the queue pool (the fetch and the finish), for a failure that announces
itself. An idle pooled connection hears nothing from the server (it listens to no channel:
Procrastinate's LISTEN connection is outside the pool) until the server ends it: a restart, a
`pg_terminate_backend` or an idle timeout send an error message and close the socket. So the
socket is polled first, without waiting; only a readable one (a message, or the end of the
stream) or a closed connection gets the full check, which raises and makes the pool replace
the connection. A link cut without a word from the server is caught by neither check before
the next statement (the empty query would wait on it just the same).
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool


def server_has_spoken(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether an idle connection has anything to read (or no usable socket at all)."""
    if conn.closed:
        return True
    try:
        socket = conn.pgconn.socket
    except psycopg.OperationalError:
        return True
    poller = select.poll()  # not select.select: a busy worker's descriptors may pass 1024
    poller.register(socket, select.POLLIN)
    return bool(poller.poll(0))


def check_connection(conn: psycopg.Connection[Any]) -> None:
    """`ConnectionPool(check=...)`: the full check only when the server has spoken."""
    if server_has_spoken(conn):
        ConnectionPool.check_connection(conn)


async def check_async_connection(conn: psycopg.AsyncConnection[Any]) -> None:
    """`AsyncConnectionPool(check=...)`: the full check only when the server has spoken."""
    if server_has_spoken(conn):
        await AsyncConnectionPool.check_connection(conn)
