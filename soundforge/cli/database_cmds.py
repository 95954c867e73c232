"""CLI commands over the database and the file store: migrate, tracks, delete, cleanup."""

from __future__ import annotations

import argparse
from typing import Any

from soundforge import maintenance, music
from soundforge.cli.common import (
    add_json_flag,
    analysis_summary,
    database,
    human_size,
    print_json,
    settings,
    storage,
    track_listing,
)
from soundforge.cli.output import safe, say
from soundforge.migrations import migrate, migration_status
from soundforge.models import Track
from soundforge.settings import Settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("migrate", help="apply pending schema migrations")
    parser.add_argument("--status", action="store_true", help="list applied and pending files")
    parser.set_defaults(handler=run_migrate)

    parser = subparsers.add_parser("tracks", help="list or search tracks, newest first")
    parser.add_argument("--search", metavar="Q", help="case-insensitive match on title/artist")
    parser.add_argument("--tempo", metavar="MIN-MAX",
                        help="tempo range in BPM from the newest analysis: 120-130, 120-, -130")
    parser.add_argument("--key", metavar="KEY",
                        help="musical key from the newest analysis: 'A minor', 'Am' or '8A'")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--duplicates", action="store_true",
                        help="only tracks whose downloaded audio is identical (same SHA-256) to "
                        "another track's, grouped")  # fmt: skip
    add_json_flag(parser)
    parser.set_defaults(handler=run_tracks)

    parser = subparsers.add_parser("delete", help="delete a track, its jobs and its files")
    parser.add_argument("track_id", metavar="TRACK_ID")
    parser.set_defaults(handler=run_delete)

    parser = subparsers.add_parser(
        "cleanup",
        help="remove files in downloads/ and stems/ that no row needs (older than the grace "
        "period) and leaked temporaries; nothing else under the storage root",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, do not remove")
    add_json_flag(parser)
    parser.set_defaults(handler=run_cleanup)


def run_migrate(args: argparse.Namespace) -> int:
    config = settings()
    if args.status:
        for state in migration_status(config.database_url):
            if state.changed:
                label = "CHANGED since applied"
            elif state.applied_at is None:
                label = "pending"
            else:
                label = f"applied {state.applied_at:%Y-%m-%d %H:%M:%S}"
            print(f"{label:32} {state.name}")
        return 0
    applied = migrate(config.database_url)
    print("\n".join(f"applied {name}" for name in applied) or "nothing to migrate")
    return 0


def run_tracks(args: argparse.Namespace) -> int:
    config = settings()
    if args.duplicates:
        return _print_duplicates(config, args)
    tempo_min, tempo_max = music.parse_tempo_range(args.tempo) if args.tempo else (None, None)
    wanted = music.TrackQuery(search=args.search, tempo_min=tempo_min, tempo_max=tempo_max,
                              key=args.key, limit=args.limit, offset=args.offset)  # fmt: skip
    with database(config) as conn:
        page = music.track_page(conn, wanted)
    if args.json:
        print_json([track_listing(row) for row in page.rows])
        return 0
    for row in page.rows:
        say(f"{row['id']}  {row['inserted_at']:%Y-%m-%d %H:%M}  {analysis_summary(row):24}  "
            f"{_artist_title(row['artist'], row['title'])}")  # fmt: skip
    return 0


def _artist_title(artist: str | None, title: str | None) -> str:
    """`artist - title` (just the title without an artist), both made terminal-safe."""
    return f"{safe(artist)} - {safe(title)}" if artist else safe(title)


def _track_line(track: Track) -> str:
    artist_title = _artist_title(track.artist, track.title)
    return f"{track.id}  {track.inserted_at:%Y-%m-%d %H:%M}  {artist_title}"


def _print_duplicates(config: Settings, args: argparse.Namespace) -> int:
    with database(config) as conn:
        duplicates = music.duplicate_audio_tracks(conn, args.limit, args.offset)
    if args.json:
        print_json([track.to_dict() | {"audio_sha256": digest} for digest, track in duplicates])
        return 0
    previous = None
    for digest, track in duplicates:
        if digest != previous:
            say(f"audio sha256 {digest}")
            previous = digest
        say(f"  {_track_line(track)}")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    track_id = music.parse_uuid(args.track_id, "track id")
    config = settings()
    with database(config) as conn:
        deleted, removed = music.delete_track_with_files(conn, storage(config), track_id)
    if not deleted:
        raise music.TrackNotFoundError(f"no track with id {track_id}")
    print(f"deleted track {track_id} and {len(removed)} file(s)")
    return 0


def run_cleanup(args: argparse.Namespace) -> int:
    config = settings()
    with database(config) as conn:
        report = maintenance.cleanup_orphaned(conn, config, dry_run=args.dry_run)
    if args.json:
        print_json(report.__dict__)
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for path in report.paths:
        say(f"{verb} {safe(path)}")
    print(f"{verb} {report.count} orphaned file(s), {human_size(report.bytes)}")
    return 0
