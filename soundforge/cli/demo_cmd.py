"""`soundforge demo`: the whole pipeline once, on a synthesized song (or a file you name), on the
configured PostgreSQL or, with no DATABASE_URL, an embedded one; prints tempo, key and stems."""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
from pathlib import Path
from typing import Any

from rich.console import Console

from soundforge import demo, live, workflow
from soundforge.cli import progress_bars
from soundforge.cli.common import database, human_size
from soundforge.cli.models_cmd import fetch_with_progress
from soundforge.cli.output import safe, say
from soundforge.db import describe_dsn
from soundforge.embedded_pg import EmbeddedPostgres
from soundforge.engines import default_engines
from soundforge.file_store import open_storage
from soundforge.migrations import migrate
from soundforge.settings import Settings, load_settings

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline once on a synthesized song (embedded PostgreSQL when "
        "DATABASE_URL is not set)",
    )
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE",
                        help="a local audio file (default: a synthesized song)")  # fmt: skip
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder for the embedded PostgreSQL, the song, stored files and "
                        f"logs (default: {demo.default_demo_dir()})")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=demo.PIPELINE_TIMEOUT_S, metavar="S",
                        help="give up when the pipeline has not finished after S seconds "
                        "(default: %(default).0f)")  # fmt: skip
    parser.add_argument("--shell", action="store_true",
                        help="run no pipeline: open a shell ($SHELL) whose DATABASE_URL and "
                        "SOUNDFORGE_STORAGE_PATH are the demo's, its PostgreSQL running until "
                        "the shell exits (then `soundforge status`, `psql \"$DATABASE_URL\"`)")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    demo_dir = (args.data_dir or demo.default_demo_dir()).absolute()
    demo_dir.mkdir(parents=True, exist_ok=True)
    config = load_settings()
    if args.shell:
        return _open_shell(config, demo_dir)
    say(f"SoundForge demo: data in {safe(demo_dir)}")
    song, description = demo.demo_song(demo_dir, args.file)
    say(f"song: {safe(description)}")
    with demo.demo_database(config, demo_dir) as (database_url, server):
        _say_database(database_url, server)
        applied = migrate(database_url)
        print(f"database: {len(applied)} migration(s) applied" if applied
              else "database: schema up to date")  # fmt: skip
        # The song is the one file this command was given (or made): its folder is the
        # import root; the demo's jobs run in this process, as this user.
        config = load_settings(database_url=database_url,
                               storage_path=demo.storage_path(config, demo_dir),
                               import_roots=str(song.resolve().parent))  # fmt: skip
        return _run_pipeline(args, config, demo_dir, song)


def _open_shell(config: Settings, demo_dir: Path) -> int:
    """A shell on the demo's data; the embedded server (if any) stops when it exits."""
    with demo.demo_database(config, demo_dir) as (database_url, server):
        migrate(database_url)
        environment = demo.shell_environment(database_url, demo.storage_path(config, demo_dir))
        shell = demo.user_shell()
        where = f"the embedded PostgreSQL in {server.pgdata}" if server else "DATABASE_URL"
        print(f"SoundForge demo shell ({shell}): DATABASE_URL is the demo's database ({where}),"
              f" SOUNDFORGE_STORAGE_PATH={environment['SOUNDFORGE_STORAGE_PATH']}; try "
              "`soundforge status`, `soundforge tracks`, `psql \"$DATABASE_URL\"`; exit to "
              "stop the server", flush=True)  # fmt: skip
        return subprocess.run([shell], env=environment, check=False).returncode


def _look_hint(args: argparse.Namespace, track_id: object) -> str:
    """How to look at the demo's data afterwards, as a command line to copy."""
    if demo.uses_configured_database(load_settings()):
        return f"look at it: soundforge status {track_id}   (DATABASE_URL is the demo's database)"
    data_dir = f" --data-dir {shlex.quote(str(args.data_dir))}" if args.data_dir else ""
    return (f"look at it: soundforge demo --shell{data_dir}   (a shell on the demo's database:"
            f" soundforge status {track_id}, psql \"$DATABASE_URL\")")  # fmt: skip


def _say_database(database_url: str, server: EmbeddedPostgres | None) -> None:
    if server is None:
        print(f"database: {describe_dsn(database_url)} (DATABASE_URL)")
        return
    account = f", server running as {server.account.name}" if server.account else ""
    print(f"database: embedded PostgreSQL {server.binaries.major_version} in {server.pgdata} "
          f"({server.binaries.bin_dir}{account})")  # fmt: skip


def _run_pipeline(args: argparse.Namespace, config: Any, demo_dir: Path, song: Path) -> int:
    print(f"stems: checking for {config.demucs_model} weights ...", flush=True)
    missing_stems = demo.stems_unavailable_reason(
        config, config.demucs_model, lambda name: fetch_with_progress(config, name, Console())
    )
    if missing_stems:
        say(f"stems: skipped; {safe(missing_stems)}")
    options = workflow.PipelineOptions(stems=missing_stems is None, analysis=True,
                                       model=config.demucs_model)  # fmt: skip
    processes = demo.PipelineProcesses(config, demo_dir / "logs" / "pipeline.log")
    say(f"pipeline: starting the {processes.description} (log: {safe(processes.log_path)})")
    processes.start()
    try:
        rows = _import_and_follow(config, song, options, processes, args.timeout)
    finally:
        processes.stop()
    print("pipeline: stopped")
    storage = open_storage(config)
    with database(config, autocommit=True) as conn:
        summary = live.summarize(conn, rows[0], storage)
    _print_summary(summary, missing_stems)
    print()
    print(_look_hint(args, summary.track_id))
    return 0 if summary.succeeded else 1


def _import_and_follow(
    config: Any,
    song: Path,
    options: workflow.PipelineOptions,
    processes: demo.PipelineProcesses,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """What `soundforge add --wait` does, for one file: import, queue, follow with bars."""
    metadata = default_engines(config).expand(str(song))
    with live.open_listener(config.database_url) as listener, \
            database(config, autocommit=True) as conn:  # fmt: skip
        imported = [workflow.import_track(conn, item, options, force=True)  # a fresh run
                    for item in metadata]  # fmt: skip
        for item in imported:
            say(f"track {item.track.id}  {safe(item.track.title)}  (download queued)")
        with processes.failing_on_exit(timeout_s):
            return progress_bars.follow(listener, conn, [item.track.id for item in imported],
                                        Console())  # fmt: skip


def _print_summary(summary: live.PipelineSummary, missing_stems: str | None) -> None:
    print()
    say(f"{safe(summary.title)}  (track {summary.track_id})")
    stages = ", ".join(f"{stage} {status or 'skipped'}" for stage, status in summary.stages.items())
    print(f"  stages {stages}")
    tempo = f"{summary.tempo_bpm:.1f} BPM" if summary.tempo_bpm else "-"
    print(f"  tempo  {tempo}")
    say(f"  key    {safe(summary.key or '-')}")
    if summary.stems:
        print(f"  stems  {len(summary.stems)}")
        for stem in summary.stems:
            size = human_size(stem.size_bytes)
            say(f"    {stem.stem_type:8} {size:>10}  {safe(stem.location or '-')}")
    elif missing_stems:
        say(f"  stems  not made: {safe(missing_stems)}")
    for stage, error in summary.errors.items():
        say(f"  {stage} failed: {safe(error)}")
