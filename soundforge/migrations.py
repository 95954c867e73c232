"""`soundforge migrate`: applies Procrastinate's schema (from the installed package) and our
numbered SQL files in `schema/`, each in its own transaction, under an advisory lock so two
runs at once are safe, recording name and checksum so a second run is a no-op and an applied
file that changed stops the run.

Procrastinate ships a full `schema.sql` plus upgrade files; on a fresh database we apply the
full schema and record every upgrade file it already contains, later runs apply only the
upgrade files a newer package brings.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from procrastinate.schema import SchemaManager

from soundforge.db import connect, masked_url
from soundforge.errors import SoundForgeError
from soundforge.queries import query

log = logging.getLogger(__name__)

MIGRATION_LOCK_KEY = 0x50F7_0001
MIGRATION_URL_SETTING = "SOUNDFORGE_MIGRATION_DATABASE_URL"  # the owner role's URL (deploy/)
PROCRASTINATE_PREFIX = "procrastinate/"
PROCRASTINATE_SCHEMA = PROCRASTINATE_PREFIX + "schema.sql"


class MigrationError(SoundForgeError):
    """A schema file failed or an applied one changed on disk."""


class SchemaNotCurrentError(SoundForgeError):
    """The database was never migrated, or misses schema files this version needs."""

    exit_code = 2


@dataclass(frozen=True)
class SchemaFile:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    name: str
    applied_at: datetime | None
    changed: bool = False

    @property
    def pending(self) -> bool:
        return self.applied_at is None


def schema_dir() -> Path:
    """Our migrations: `schema/` beside the package in a checkout, `soundforge/_schema` when
    installed from a wheel."""
    installed = Path(str(resources.files("soundforge"))) / "_schema"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "schema"


def soundforge_files(directory: Path | None = None) -> list[SchemaFile]:
    directory = directory or schema_dir()
    files = sorted(path for path in directory.glob("*.sql") if path.name[:3].isdigit())
    return [SchemaFile(path.name, path.read_text(encoding="utf-8")) for path in files]


def procrastinate_upgrade_files() -> list[SchemaFile]:
    directory = Path(SchemaManager.get_migrations_path())
    return [
        SchemaFile(PROCRASTINATE_PREFIX + path.name, path.read_text(encoding="utf-8"))
        for path in sorted(directory.glob("*.sql"))
    ]


def _applied(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in conn.execute(query("list_applied_migrations"))}


def _apply(conn: psycopg.Connection[Any], schema_file: SchemaFile) -> None:
    log.info("applying %s", schema_file.name)
    try:
        with conn.transaction():
            conn.execute(schema_file.sql.encode())
            conn.execute(
                query("record_migration"),
                {"name": schema_file.name, "checksum": schema_file.checksum},
            )
    except psycopg.errors.InsufficientPrivilege:
        raise  # `migrate` names the role and the setting
    except psycopg.Error as error:
        raise MigrationError(f"{schema_file.name} failed: {error}".strip()) from None


def _record_only(conn: psycopg.Connection[Any], schema_file: SchemaFile) -> None:
    conn.execute(
        query("record_migration"), {"name": schema_file.name, "checksum": schema_file.checksum}
    )


_CREATED_FUNCTION = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+(\w+)", re.I)


def _first_missing_upgrade(conn: psycopg.Connection[Any], upgrades: list[SchemaFile]) -> int:
    """For a Procrastinate schema installed before SoundForge recorded it: the index of the
    first upgrade file it lacks (the first that creates a function of the current schema the
    database does not have), or `len(upgrades)` when it is current."""
    current = set(_CREATED_FUNCTION.findall(SchemaManager.get_schema()))
    present = {row["name"] for row in conn.execute(query("procrastinate_functions"))}
    for index, upgrade in enumerate(upgrades):
        if (set(_CREATED_FUNCTION.findall(upgrade.sql)) & current) - present:
            return index
    return len(upgrades)


def _migrate_procrastinate(conn: psycopg.Connection[Any], applied: dict[str, Any]) -> list[str]:
    done: list[str] = []
    upgrades = procrastinate_upgrade_files()
    if PROCRASTINATE_SCHEMA not in applied:
        present = conn.execute(query("procrastinate_schema_present")).fetchone()
        with conn.transaction():
            if present and present["present"]:
                missing_from = _first_missing_upgrade(conn, upgrades)
                log.info("Procrastinate schema already present; recording it as applied, "
                         "with %d upgrade file(s) to run", len(upgrades) - missing_from)
            else:
                conn.execute(SchemaManager.get_schema().encode())
                done.append(PROCRASTINATE_SCHEMA)
                missing_from = len(upgrades)
            full = SchemaFile(PROCRASTINATE_SCHEMA, SchemaManager.get_schema())
            _record_only(conn, full)
            for upgrade in upgrades[:missing_from]:
                _record_only(conn, upgrade)
        applied = {upgrade.name: True for upgrade in upgrades[:missing_from]}
    for upgrade in upgrades:
        if upgrade.name not in applied:
            _apply(conn, upgrade)
            done.append(upgrade.name)
    return done


def _check_unchanged(applied: dict[str, Any], files: list[SchemaFile]) -> None:
    for schema_file in files:
        row = applied.get(schema_file.name)
        if row is not None and row["checksum"] != schema_file.checksum:
            raise MigrationError(
                f"{schema_file.name} was applied on {row['applied_at']:%Y-%m-%d %H:%M} and has "
                "changed since; restore the applied version and add a new numbered file instead"
            )


def migrate(conninfo: str, directory: Path | None = None) -> list[str]:
    """Apply every pending schema file; returns the names applied (empty: nothing to do)."""
    files = soundforge_files(directory)
    with connect(conninfo, autocommit=True) as conn:
        conn.execute(query("lock_migrations"), {"key": MIGRATION_LOCK_KEY})
        try:
            conn.execute(query("create_migrations_table"))
            applied = _applied(conn)
            _check_unchanged(applied, files)
            done = _migrate_procrastinate(conn, applied)
            for schema_file in files:
                if schema_file.name not in applied:
                    _apply(conn, schema_file)
                    done.append(schema_file.name)
            return done
        except psycopg.errors.InsufficientPrivilege as error:
            raise MigrationError(
                f"role {conn.info.user!r} may not change the schema "
                f"({str(error).splitlines()[0]}); migrations run as the owner role: "
                f"run `soundforge migrate` with DATABASE_URL set to the URL in "
                f"{MIGRATION_URL_SETTING} (see deploy/postgres-roles.sql)"
            ) from None
        finally:
            if not conn.closed:
                conn.execute(query("unlock_migrations"), {"key": MIGRATION_LOCK_KEY})


def migration_status(conninfo: str, directory: Path | None = None) -> list[MigrationState]:
    """Every known schema file with when it was applied (None: pending)."""
    files = [
        SchemaFile(PROCRASTINATE_SCHEMA, SchemaManager.get_schema()),
        *procrastinate_upgrade_files(),
        *soundforge_files(directory),
    ]
    with connect(conninfo, autocommit=True) as conn:
        present = conn.execute(query("migrations_table_present")).fetchone()
        applied = _applied(conn) if present and present["present"] else {}
    states = []
    for schema_file in files:
        row = applied.get(schema_file.name)
        changed = (
            row is not None
            and not schema_file.name.startswith(PROCRASTINATE_PREFIX)
            and row["checksum"] != schema_file.checksum
        )
        states.append(
            MigrationState(schema_file.name, row["applied_at"] if row else None, changed)
        )
    return states


def known_migration_names(directory: Path | None = None) -> list[str]:
    """The name of every schema file this version expects applied (names only: cheap)."""
    ours = sorted(path.name for path in (directory or schema_dir()).glob("*.sql")
                  if path.name[:3].isdigit())  # fmt: skip
    upgrades = sorted(path.name for path in Path(SchemaManager.get_migrations_path()).glob("*.sql"))
    return [PROCRASTINATE_SCHEMA, *(PROCRASTINATE_PREFIX + name for name in upgrades), *ours]


def pending_migrations(conn: psycopg.Connection[Any]) -> list[str] | None:
    """The expected schema files not applied to this database; None when it has no
    SoundForge schema at all (never migrated)."""
    present = conn.execute(query("migrations_table_present")).fetchone()
    if not present or not present["present"]:
        return None
    applied = {row["name"] for row in conn.execute(query("list_applied_migration_names"))}
    return [name for name in known_migration_names() if name not in applied]


def require_current_schema(conn: psycopg.Connection[Any], conninfo: str) -> None:
    """Raise `SchemaNotCurrentError` (one line saying to run `soundforge migrate`) unless every
    schema file this version knows is applied."""
    pending = pending_migrations(conn)
    if pending == []:
        return
    where = f"the database at {masked_url(conninfo)}"
    if pending is None:
        problem = f"{where} has no SoundForge schema"
    else:
        plural = "migration" if len(pending) == 1 else "migrations"
        problem = f"{where} is {len(pending)} {plural} behind"
    raise SchemaNotCurrentError(f"{problem}: run `soundforge migrate`")


def check_schema(conninfo: str) -> None:
    """`require_current_schema` over a connection of its own (for process starts)."""
    with connect(conninfo, autocommit=True) as conn:
        require_current_schema(conn, conninfo)
