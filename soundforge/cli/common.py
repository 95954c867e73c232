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
from soundforge.keys import camelot
from soundforge.live import STAGES
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


ANALYSIS_FIELDS = ("analysis_result_id", "tempo", "key", "key_confidence", "energy",
                   "spectral_centroid", "spectral_rolloff", "zero_crossing_rate")  # fmt: skip
STAGE_FIELDS = ("job_id", "status", "progress", "error")
TRACK_FIELDS = ("id", "title", "artist", "album", "album_art_url", "duration", "spotify_id",
                "spotify_url", "inserted_at", "updated_at")  # fmt: skip


def track_listing(row: dict[str, Any]) -> dict[str, Any]:
    """A track-list row as `--json` prints it: the track, its newest analysis (with the key's
    Camelot code) and each stage's newest job."""
    return {
        **{name: row[name] for name in TRACK_FIELDS},
        **{name: row[name] for name in ANALYSIS_FIELDS},
        "key_camelot": camelot(row["key"]),
        "stages": {stage: {name: row[f"{stage}_{name}"] for name in STAGE_FIELDS}
                   for stage in STAGES},
    }  # fmt: skip


def analysis_summary(row: dict[str, Any]) -> str:
    """"128.0 BPM  A minor (8A)", or "-" parts when the track has no analysis yet."""
    tempo = f"{row['tempo']:.1f} BPM" if row["tempo"] is not None else "- BPM"
    key = f"{row['key']} ({camelot(row['key'])})" if row["key"] else "-"
    return f"{tempo}  {key}"
