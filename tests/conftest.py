"""Shared fixtures: a fresh PostgreSQL database per test session, migrated with the real
`soundforge migrate` code and dropped at the end; tables emptied after every test. The host's
server is only used through SQL: the session ends by checking its postmaster is the one it
started with (a test that needs to stop a server makes its own, see tests/support/own_postgres)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from soundforge.db import connect
from soundforge.migrations import migrate
from soundforge.storage import Storage
from tests.support.loopback_http import LOOPBACK_NETWORKS, LoopbackServer
from tests.support.own_postgres import HostPostmaster
from tests.support.pipeline import ServiceProcesses

# Nothing in the tests may reach the network: a missing model fails with its message instead of
# being fetched (the fetch itself is tested against a loopback weight host).
os.environ["SOUNDFORGE_FETCH_MODELS"] = "false"
ADMIN_URL = os.environ.get(
    "SOUNDFORGE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
QUEUE_TABLES = (
    "procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers, "
    "procrastinate_workers"
)


def database_url_for(name: str) -> str:
    base = psycopg.conninfo.conninfo_to_dict(ADMIN_URL)
    base["dbname"] = name
    return psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in base.items()})


def create_database(prefix: str = "sf_test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session", autouse=True)
def host_postmaster_untouched() -> Iterator[HostPostmaster]:
    """The host's postmaster (PID and start time) is the same after the whole session."""
    before = HostPostmaster.of(ADMIN_URL)
    yield before
    after = HostPostmaster.of(ADMIN_URL)
    assert after == before, f"the host's PostgreSQL was restarted: {before} -> {after}"


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """An empty database (no migrations) of its own, for tests of migrate itself."""
    name = create_database("sf_fresh")
    try:
        yield database_url_for(name)
    finally:
        drop_database(name)


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """The session's migrated database."""
    name = create_database()
    url = database_url_for(name)
    try:
        migrate(url)
        yield url
    finally:
        drop_database(name)


def empty_tables(database_url: str) -> None:
    with connect(database_url, autocommit=True) as cleaner:
        cleaner.execute(f"TRUNCATE tracks, {QUEUE_TABLES} RESTART IDENTITY CASCADE")


@pytest.fixture(autouse=True)
def _empty_tables_after_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that used the session's database leaves it empty for the next one (those that
    ran workers or the CLI without `conn` too), so no test sees another's rows."""
    yield
    callspec = getattr(request.node, "callspec", None)
    parametrized = callspec is not None and "database_url" in callspec.params
    if "database_url" in request.fixturenames and "conn" not in request.fixturenames \
            and not parametrized:  # a test may pass its own (bad) database_url  # fmt: skip
        empty_tables(request.getfixturevalue("database_url"))


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection; every table is emptied after the test."""
    connection = connect(database_url, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()
        empty_tables(database_url)


@pytest.fixture
def storage(tmp_path: Path) -> Storage:
    store = Storage(tmp_path / "store")
    store.ensure_root()
    return store


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for running the real `soundforge` command in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDFORGE_")}
    env["DATABASE_URL"] = database_url
    env["SOUNDFORGE_STORAGE_PATH"] = str(tmp_path / "store")
    env["SOUNDFORGE_FETCH_MODELS"] = "false"
    env["SOUNDFORGE_ALLOWED_NETWORKS"] = LOOPBACK_NETWORKS  # the tests' loopback servers
    env["SOUNDFORGE_IMPORT_ROOTS"] = str(tmp_path)  # local sources: the test's own files
    return env


@pytest.fixture
def services(tmp_path: Path) -> Iterator[ServiceProcesses]:
    """`soundforge run` / `soundforge worker` subprocesses, stopped when the test ends."""
    processes = ServiceProcesses(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def public() -> Iterator[LoopbackServer]:
    """A loopback HTTP server on 127.0.0.1, playing a public host where a test allows it."""
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def internal(public: LoopbackServer) -> Iterator[LoopbackServer]:
    """An 'internal service' on 127.0.0.2, on the same port as `public`: nothing may reach it
    (`internal.requests` stays empty); it serves `/secret`."""
    port = int(public.base_url.rsplit(":", 1)[1])
    with LoopbackServer(host="127.0.0.2", port=port) as server:
        server.serve_bytes("/secret", b"internal-service-reply " * 100, "text/plain")
        yield server
