"""PostgreSQL access: connections and pools built from a URL, with failures to connect turned
into one readable line that names host, port and database (never the password)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from soundforge.errors import ConfigError, DatabaseUnavailableError
from soundforge.pool_checks import check_connection
from soundforge.redact import mask_database_text, mask_url

APPLICATION_NAME = "soundforge"


def describe_dsn(conninfo: str) -> str:
    """`host=... port=... dbname=... user=...` for messages; the password is never included."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "an unparsable database URL"
    host = parts.get("host") or "localhost (socket)"
    port = parts.get("port") or "5432"
    dbname = parts.get("dbname") or parts.get("user") or "?"
    user = parts.get("user")
    described = f"host={host} port={port} dbname={dbname}"
    return f"{described} user={user}" if user else described


def masked_url(conninfo: str) -> str:
    """The database as a `postgresql://host:port/dbname` URL for messages, whatever form it was
    given in: no user-info (which `redact.mask_text` would mask on output anyway) and no other
    parameter, so nothing secret is left in it."""
    try:
        parts = conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError:
        return "an unparsable database URL"
    host = str(parts.get("host") or "")
    if host.startswith("/"):  # a Unix socket folder: the URL form puts it in the query
        host_part, socket = "", f"?host={host}"
    else:
        host_part, socket = host, ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{host_part}{port}/{parts.get('dbname') or ''}{socket}"


def _unavailable(conninfo: str, error: Exception) -> DatabaseUnavailableError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = " ".join(lines) if lines else type(error).__name__
    return DatabaseUnavailableError(
        f"cannot connect to PostgreSQL at {describe_dsn(conninfo)}: "
        + mask_database_text(conninfo, reason)
    )


def connect(conninfo: str, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection with dict rows; `DatabaseUnavailableError` when it cannot be had."""
    try:
        host = str(conninfo_to_dict(conninfo).get("host") or "")
    except psycopg.ProgrammingError as error:
        raise ConfigError(
            "DATABASE_URL is not a valid connection string: "
            + mask_database_text(conninfo, str(error))
        ) from None
    if "@" in host:  # an unescaped '@' in the password: libpq took part of it for the host
        raise ConfigError(
            f"DATABASE_URL is not a valid connection string ({mask_url(conninfo)}): "
            "percent-encode special characters in the password ('@' as %40)"
        )
    try:
        return psycopg.connect(
            conninfo,
            autocommit=autocommit,
            row_factory=dict_row,
            application_name=APPLICATION_NAME,
            connect_timeout=kwargs.pop("connect_timeout", 10),
            **kwargs,
        )
    except psycopg.OperationalError as error:
        raise _unavailable(conninfo, error) from None


def create_pool(
    conninfo: str, min_size: int = 1, max_size: int = 10, application_name: str = APPLICATION_NAME
) -> ConnectionPool[Any]:
    """An opened pool of autocommit dict-row connections (`conn.transaction()` is a real
    transaction); fails fast when the database is unreachable."""
    connect(conninfo).close()  # a clear error now instead of a pool timeout later
    pool: ConnectionPool[Any] = ConnectionPool(
        conninfo,
        min_size=min_size,
        max_size=max_size,
        kwargs={"row_factory": dict_row, "application_name": application_name, "autocommit": True},
        check=check_connection,
        open=False,
    )
    try:
        pool.open(wait=True, timeout=30)
    except PoolTimeout as error:
        raise _unavailable(conninfo, error) from None
    return pool


@contextlib.contextmanager
def transaction(pool: ConnectionPool[Any]) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection inside one transaction (committed on success, rolled back on error)."""
    with pool.connection() as conn, conn.transaction():
        yield conn
