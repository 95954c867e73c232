"""PostgreSQL servers the tests own, and a guard for the one they do not.

A test that stops or restarts a server makes its own throwaway cluster with the machine's
`initdb`/`pg_ctl` (`soundforge.embedded_pg`, which runs it as an unprivileged account when the
tests run as root), in a temporary folder, reached through a socket in a private folder. The
host's server (the one `SOUNDFORGE_TEST_ADMIN_URL` names) is only ever used through SQL:
`HostPostmaster` records its postmaster's PID and start time so the session can prove it was
left alone.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from soundforge.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    find_binaries,
    running_as_root,
)
from soundforge.migrations import migrate


def have_server_binaries() -> bool:
    try:
        find_binaries()
    except EmbeddedPostgresError:
        return False
    return True


def world_traversable_dir(prefix: str) -> Path:
    """A temporary folder every account can traverse: as root, the embedded server runs as an
    unprivileged account that must reach its cluster (pytest's own tmp folders are 0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir()))
    path.chmod(0o755)
    return path


def stop_servers_under(base: Path) -> None:
    """Teardown after a failure: no server may outlive its test."""
    left_running = list(base.rglob("postgres-*/postmaster.pid"))
    pg_ctl = find_binaries().program("pg_ctl") if left_running else ""
    for version_file in left_running:
        owner = version_file.parent.stat().st_uid
        subprocess.run([pg_ctl, "stop", "-D", str(version_file.parent), "-m", "immediate"],
                       capture_output=True, check=False,
                       user=owner if running_as_root() else None)  # fmt: skip


@contextlib.contextmanager
def throwaway_cluster(database: str = "soundforge") -> Iterator[EmbeddedPostgres]:
    """A migrated database on a PostgreSQL cluster of its own, running while the block runs,
    deleted afterwards; `server.conninfo` reaches it, `server.restart()` restarts it."""
    base = world_traversable_dir("sf-own-pg-")
    try:
        with EmbeddedPostgres(base, database=database) as server:
            migrate(server.conninfo)
            yield server
    finally:
        stop_servers_under(base)
        shutil.rmtree(base, ignore_errors=True)


@dataclass(frozen=True)
class HostPostmaster:
    """Who the host's postmaster is: its PID (from its data folder's postmaster.pid, readable
    by a superuser; None otherwise) and its start time (readable by anyone)."""

    pid: int | None
    started_at: object

    @classmethod
    def of(cls, admin_url: str) -> HostPostmaster:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
            started_at = row[0] if row else None
            pid = None
            with contextlib.suppress(psycopg.Error):
                text = conn.execute("SELECT pg_read_file('postmaster.pid')").fetchone()
                pid = int(str(text[0]).splitlines()[0]) if text else None
        return cls(pid, started_at)
