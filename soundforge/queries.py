"""Every SQL statement SoundForge runs lives in `soundforge/sql/*.sql` (`queries.sql` for the
data and the pipeline, `maintenance.sql` for rescue and pruning), each under a
`-- name: <name>` header followed by a one-line `-- description`; this module loads the files
once and hands statements out by name (a name is unique across the files).

Written here rather than with aiosql: psycopg 3 already gives named parameters (`%(id)s`) and
row factories, so a loader of a few lines is all that is missing. Statements for the three job
tables are written once with a `{table}` placeholder, filled with a quoted identifier.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class NamedQuery:
    name: str
    description: str
    text: str


def parse_queries(source: str) -> dict[str, NamedQuery]:
    """Split a queries file into statements by their `-- name:` headers."""
    queries: dict[str, NamedQuery] = {}
    headers = list(_HEADER.finditer(source))
    for index, header in enumerate(headers):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(source)
        body = source[header.end() : end].strip()
        lines = body.splitlines()
        description = ""
        if lines and lines[0].startswith("--"):
            description = lines[0].lstrip("- ").strip()
            body = "\n".join(lines[1:]).strip()
        name = header.group("name")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = NamedQuery(name, description, body.rstrip(";").strip())
    return queries


@cache
def all_queries() -> dict[str, NamedQuery]:
    queries: dict[str, NamedQuery] = {}
    for entry in sorted(resources.files("soundforge.sql").iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, named in parse_queries(entry.read_text(encoding="utf-8")).items():
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (again in {entry.name})")
            queries[name] = named
    return queries


def query(name: str, **identifiers: str) -> sql.Composed | sql.SQL:
    """The statement called `name`; `{placeholders}` are filled with quoted identifiers."""
    return _composed(name, tuple(sorted(identifiers.items())))


@cache
def _composed(name: str, identifiers: tuple[tuple[str, str], ...]) -> sql.Composed | sql.SQL:
    statement = sql.SQL(all_queries()[name].text)
    if identifiers:
        return statement.format(**{key: sql.Identifier(value) for key, value in identifiers})
    return statement
