"""What every CLI command shares: settings read once, a database connection with a clear
failure line, JSON output, and the file store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import psycopg

from soundforge.db import connect
from soundforge.file_store import FileStore, open_storage
from soundforge.migrations import require_current_schema
from soundforge.models import json_value
from soundforge.settings import Settings, load_settings


def settings() -> Settings:
    return load_settings()


def database(config: Settings, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """A connection for a data command, once the schema is known to be current (else one line
    saying to run `soundforge migrate`, exit 2)."""
    conn = connect(config.database_url, autocommit=autocommit)
    try:
        require_current_schema(conn, config.database_url)
        if not autocommit:
            conn.rollback()  # the check leaves no transaction open behind it
    except BaseException:
        conn.close()
        raise
    return conn


def storage(config: Settings) -> FileStore:
    return open_storage(config)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=json_value, allow_nan=False)
    sys.stdout.write("\n")


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
