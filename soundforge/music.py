"""The Music context: queries over tracks, stems and analysis results (the original system's
`SoundForge.Music`). Every function takes an open connection; the caller owns the transaction.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg

from soundforge.errors import InvalidIdError, PermanentError
from soundforge.file_store import FileStore
from soundforge.keys import normalize_key
from soundforge.models import AnalysisResult, Stem, Track
from soundforge.queries import query

Connection = psycopg.Connection[Any]
MAX_PAGE = 1000
MAX_OFFSET = 2**63 - 1  # PostgreSQL's OFFSET is a bigint


class TrackNotFoundError(PermanentError):
    """No track has the id a user gave."""


@dataclass(frozen=True)
class TrackFields:
    """What a new track is made of (everything but the title may be unknown)."""

    title: str
    spotify_id: str | None = None
    spotify_url: str | None = None
    artist: str | None = None
    album: str | None = None
    album_art_url: str | None = None
    duration: int | None = None
    source_key: str | None = None
    """Identifies a non-Spotify source (see `sources.source_key`); unique like spotify_id."""

    def params(self, track_id: uuid.UUID) -> dict[str, Any]:
        if not self.title.strip():
            raise PermanentError("a track needs a non-empty title")
        return {"id": track_id, **self.__dict__}

    def track_values(self) -> dict[str, Any]:
        """The fields a `Track` shows (the source key is for finding a track, not for display:
        it may stand for a URL with a token in it)."""
        return {name: value for name, value in self.__dict__.items() if name != "source_key"}


def parse_uuid(text: str | uuid.UUID, what: str = "id") -> uuid.UUID:
    """A user-typed id as a UUID, or `InvalidIdError` saying what was wrong (quoting at most
    64 characters of it: whoever defers a task chooses its ids)."""
    if isinstance(text, uuid.UUID):
        return text
    try:
        return uuid.UUID(text.strip())
    except (ValueError, AttributeError):
        shown = text if not isinstance(text, str) or len(text) <= 64 else text[:64] + "..."
        raise InvalidIdError(f"{what} {shown!r} is not a valid UUID") from None


def _page(limit: int, offset: int) -> dict[str, int]:
    if limit < 1 or not 0 <= offset <= MAX_OFFSET:
        raise PermanentError(f"limit must be at least 1 and offset from 0 to {MAX_OFFSET}")
    return {"limit": min(limit, MAX_PAGE), "offset": offset}


def create_track(conn: Connection, fields: TrackFields) -> Track:
    row = conn.execute(query("insert_track"), fields.params(uuid.uuid4())).fetchone()
    assert row is not None
    return Track.from_row(row)


def get_track(conn: Connection, track_id: uuid.UUID | str) -> Track | None:
    row = conn.execute(query("get_track"), {"id": parse_uuid(track_id, "track id")}).fetchone()
    return Track.from_row(row) if row else None


def require_track(conn: Connection, track_id: uuid.UUID | str) -> Track:
    track = get_track(conn, track_id)
    if track is None:
        raise TrackNotFoundError(f"no track with id {track_id}")
    return track


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


@dataclass(frozen=True)
class TrackQuery:
    """What one page of the track list asks for (CLI `tracks`/`status`, the web's Tracks page
    and GET /api/tracks build one and call `track_page`)."""

    search: str | None = None
    tempo_min: float | None = None
    tempo_max: float | None = None
    key: str | None = None
    """As typed: "A minor", "Am", "8A"; normalised to the stored name."""
    track_ids: tuple[uuid.UUID, ...] | None = None
    limit: int = 50
    offset: int = 0

    def params(self) -> dict[str, Any]:
        for name in ("tempo_min", "tempo_max"):
            value = getattr(self, name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise PermanentError(f"{name} must be a number of BPM, not {value}")
        if (self.tempo_min is not None and self.tempo_max is not None
                and self.tempo_min > self.tempo_max):  # fmt: skip
            raise PermanentError(
                f"the tempo range {self.tempo_min:g}-{self.tempo_max:g} is empty (min > max)"
            )
        search = self.search.strip() if self.search else ""
        return {
            "pattern": _like_pattern(search) if search else None,
            "tempo_min": self.tempo_min,
            "tempo_max": self.tempo_max,
            "key": normalize_key(self.key) if self.key and self.key.strip() else None,
            "track_ids": list(self.track_ids) if self.track_ids is not None else None,
            **_page(self.limit, self.offset),
        }


@dataclass(frozen=True)
class TrackPage:
    """Rows of the track list (track columns, the newest analysis' columns, each stage's
    newest job as `<stage>_status/_progress/_error/_job_id`) and whether more follow."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    has_more: bool = False
    offset: int = 0
    limit: int = 50


def track_page(conn: Connection, wanted: TrackQuery) -> TrackPage:
    """One page of tracks, newest first, filtered as `wanted` says (the one track-list query)."""
    params = wanted.params()
    limit = params["limit"]
    # Unprepared: a prepared statement's generic plan would keep every NULL filter's branches.
    rows = conn.execute(query("track_page"), {**params, "limit": limit + 1},
                        prepare=False).fetchall()  # fmt: skip
    return TrackPage(rows[:limit], len(rows) > limit, params["offset"], limit)


_TEMPO_RANGE = re.compile(r"^\s*(\d+(?:\.\d+)?)?\s*-\s*(\d+(?:\.\d+)?)?\s*$")


def parse_tempo_range(text: str) -> tuple[float | None, float | None]:
    """"120-130" -> (120, 130); "120-" and "-130" leave one end open; "128" is 128 +/- 0.5."""
    match = _TEMPO_RANGE.match(text)
    if match is not None and (match.group(1) or match.group(2)):
        low, high = match.group(1), match.group(2)
        return (float(low) if low else None, float(high) if high else None)
    try:
        tempo = float(text)
    except ValueError:
        tempo = math.nan
    if not math.isfinite(tempo) or tempo < 0:
        raise PermanentError(
            f"tempo {text!r} is not a range: write it like 120-130, 120- or -130 (BPM)"
        )
    return tempo - 0.5, tempo + 0.5


def list_tracks(conn: Connection, limit: int = 50, offset: int = 0) -> list[Track]:
    """Newest first."""
    page = track_page(conn, TrackQuery(limit=limit, offset=offset))
    return [Track.from_row(row) for row in page.rows]


def duplicate_audio_tracks(
    conn: Connection, limit: int = 50, offset: int = 0
) -> list[tuple[str, Track]]:
    """(audio SHA-256, track) for every track whose stored audio is identical to another
    track's, grouped by digest, oldest track first in a group."""
    rows = conn.execute(query("duplicate_audio_tracks"), _page(limit, offset)).fetchall()
    return [(row["audio_sha256"], Track.from_row(row)) for row in rows]


def find_or_create_track(conn: Connection, fields: TrackFields) -> tuple[Track, bool]:
    """The track with `fields.spotify_id` (else `fields.source_key`), created if missing; True
    when this call created it.

    Safe under any number of concurrent callers: the unique indexes decide, and a loser reads
    the winner's row (it is committed by the time the INSERT returns under READ COMMITTED).
    """
    if not fields.spotify_id and not fields.source_key:
        return create_track(conn, fields), True
    while True:
        row = conn.execute(query("insert_track_unless_known"), fields.params(uuid.uuid4())
                           ).fetchone()  # fmt: skip
        if row is not None:
            return Track.from_row(row), True
        row = conn.execute(
            query("get_known_track"),
            {"spotify_id": fields.spotify_id, "source_key": fields.source_key},
        ).fetchone()
        if row is not None:
            return Track.from_row(row), False
        # The winner's row was deleted between our two statements: try again.


def list_stems_for_track(conn: Connection, track_id: uuid.UUID | str) -> list[Stem]:
    rows = conn.execute(
        query("list_stems_for_track"), {"track_id": parse_uuid(track_id, "track id")}
    )
    return [Stem.from_row(row) for row in rows]


def get_stem(conn: Connection, stem_id: uuid.UUID | str) -> Stem | None:
    row = conn.execute(query("get_stem"), {"id": parse_uuid(stem_id, "stem id")}).fetchone()
    return Stem.from_row(row) if row else None


def get_analysis_result_for_track(
    conn: Connection, track_id: uuid.UUID | str
) -> AnalysisResult | None:
    """The newest analysis of the track; None when it has none."""
    row = conn.execute(
        query("newest_analysis_result_for_track"), {"track_id": parse_uuid(track_id, "track id")}
    ).fetchone()
    return AnalysisResult.from_row(row) if row else None


def track_jobs(conn: Connection, track_id: uuid.UUID | str) -> list[dict[str, Any]]:
    """Every job row of a track (stage, status, progress, error, attempts, times, model),
    oldest first: a track's history."""
    params = {"track_id": parse_uuid(track_id, "track id")}
    return conn.execute(query("track_jobs"), params).fetchall()


def delete_track(conn: Connection, track_id: uuid.UUID | str) -> bool:
    """Delete a track in one statement; the database cascades to jobs, stems and results."""
    row = conn.execute(query("delete_track"), {"id": parse_uuid(track_id, "track id")}).fetchone()
    return row is not None


def delete_track_with_files(
    conn: Connection, storage: FileStore, track_id: uuid.UUID | str
) -> tuple[bool, list[str]]:
    """Delete a track and then its stored files; returns (deleted, removed paths).

    The rows go first, in the caller's transaction, which this commits before any file is
    touched: a failed delete leaves every file in place, and a crash after the commit leaves
    only orphans that `cleanup_orphaned` removes.
    """
    params = {"id": parse_uuid(track_id, "track id")}
    row = conn.execute(query("delete_track_returning_files"), params).fetchone()
    assert row is not None
    if not row["deleted"]:
        return False, []
    conn.commit()
    removed = [path for path in row["paths"] if storage.remove(path)]
    return True, removed
