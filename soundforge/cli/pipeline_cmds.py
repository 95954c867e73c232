"""CLI commands that drive and follow the pipeline: add, status, watch, cancel, retry, worker."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from typing import Any

from rich.console import Console

from soundforge import live, music, workflow
from soundforge.cli import progress_bars
from soundforge.cli.common import (
    add_json_flag,
    analysis_summary,
    database,
    print_json,
    settings,
    storage,
)
from soundforge.cli.output import safe, say
from soundforge.engines import default_engines
from soundforge.errors import PermanentError
from soundforge.file_store import FileStore
from soundforge.keys import camelot
from soundforge.models import Stage
from soundforge.queue import MAINTENANCE_QUEUE
from soundforge.separation.registry import DEFAULT_MODEL, MODEL_NAMES

ALL_QUEUES = (*(stage.queue for stage in Stage), MAINTENANCE_QUEUE)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("add", help="import sources and queue their pipelines")
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="a file, an http(s) URL, or a Spotify track/album/playlist link")
    parser.add_argument("--model", default=None, choices=MODEL_NAMES,
                        help="separation model (default: SOUNDFORGE_DEMUCS_MODEL, else "
                        f"{DEFAULT_MODEL})")
    parser.add_argument("--no-stems", action="store_true", help="skip stem separation")
    parser.add_argument("--no-analysis", action="store_true", help="skip the analysis")
    parser.add_argument("--force", action="store_true",
                        help="download again even if the track was downloaded before")
    parser.add_argument("--wait", action="store_true",
                        help="show progress until every pipeline ends; exit 1 if a stage failed")
    add_json_flag(parser)
    parser.set_defaults(handler=run_add)

    parser = subparsers.add_parser("status", help="each track's pipeline: stages, progress, errors")
    parser.add_argument("track_id", nargs="?", metavar="TRACK_ID")
    parser.add_argument("--limit", type=int, default=20)
    add_json_flag(parser)
    parser.set_defaults(handler=run_status)

    parser = subparsers.add_parser(
        "watch", help="print job rows as they change, live (LISTEN; states read from the rows)"
    )
    parser.add_argument("track_id", nargs="?", metavar="TRACK_ID")
    parser.add_argument("--max-events", type=int, default=0, metavar="N",
                        help="exit after N lines (default: run until interrupted)")
    add_json_flag(parser)
    parser.set_defaults(handler=run_watch)

    parser = subparsers.add_parser("cancel", help="cancel a queued job or abort a running one")
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.set_defaults(handler=run_cancel)

    parser = subparsers.add_parser("retry", help="run a failed stage again (as a new job row)")
    parser.add_argument("job_id", metavar="JOB_ID")
    parser.set_defaults(handler=run_retry)

    parser = subparsers.add_parser("worker", help="run one worker process for some queues")
    parser.add_argument("--queues", default=",".join(ALL_QUEUES),
                        help=f"comma-separated queues (default: {','.join(ALL_QUEUES)})")
    parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
    parser.add_argument("--name", default=None, help="worker name shown in logs")
    parser.set_defaults(handler=run_worker)  # fmt: skip


def run_add(args: argparse.Namespace) -> int:
    config = settings()
    options = workflow.PipelineOptions(
        stems=not args.no_stems, analysis=not args.no_analysis,
        model=args.model or config.demucs_model,
    )  # fmt: skip
    engines = default_engines(config)
    listener = live.open_listener(config.database_url) if args.wait else None
    with database(config, autocommit=True) as conn:
        imported = workflow.import_sources(conn, engines, args.sources, options,
                                           force=args.force)  # fmt: skip
        if not args.json:
            for item in imported:
                note = "queued" if item.new_download else f"already {item.download_job.status}"
                say(f"track {item.track.id}  {safe(item.track.title)}  (download {note})")
        if listener is None:
            if args.json:
                print_json([{"track_id": i.track.id, "download_job_id": i.download_job.id,
                             "queued": i.new_download} for i in imported])  # fmt: skip
            return 0
        with listener:
            track_ids = [item.track.id for item in imported]
            console = Console(stderr=args.json)
            rows = progress_bars.follow(listener, conn, track_ids, console)
            _print_outcome(conn, rows, storage(config), args.json)
    return 1 if any(live.pipeline_failed(row) for row in rows) else 0


def _print_outcome(
    conn: Any, rows: list[dict[str, Any]], store: FileStore, as_json: bool
) -> None:
    summaries = [live.summarize(conn, row, store) for row in rows]
    if as_json:
        print_json([{
            "track_id": item.track_id, "title": item.title, "stages": item.stages,
            "errors": item.errors, "tempo": item.tempo_bpm, "key": item.key,
            "stems": {stem.stem_type: stem.file_path for stem in item.stems},
            "stem_locations": {stem.stem_type: stem.location for stem in item.stems},
        } for item in summaries])  # fmt: skip
        return
    for item in summaries:
        tempo = f"{item.tempo_bpm:.1f} BPM" if item.tempo_bpm else "-"
        say(f"{safe(item.title)}: tempo {tempo}, key {safe(item.key or '-')}, "
            f"{len(item.stems)} stems")
        for stage, error in item.errors.items():
            say(f"  {stage} failed: {safe(error)}")


def run_status(args: argparse.Namespace) -> int:
    config = settings()
    track_ids = [music.parse_uuid(args.track_id, "track id")] if args.track_id else None
    with database(config, autocommit=True) as conn:
        files: dict[str, str] = {}
        if track_ids:
            music.require_track(conn, track_ids[0])
            files = live.stored_files(conn, track_ids[0], storage(config))
        rows = live.pipeline_rows(conn, track_ids, limit=args.limit)
    if args.json:
        print_json([{**row, "key_camelot": camelot(row["key"]),
                     **({"files": files} if track_ids else {})} for row in rows])  # fmt: skip
        return 0
    for row in rows:
        say(f"{row['track_id']}  {safe(row['title'])}")
        for stage in live.STAGES:
            status, percent, error = live.stage_state(row, stage)
            if status is not None:
                detail = f"  {safe(error)}" if error else ""
                say(f"    {stage:9} {status:12} {percent:3d}%{detail}")
        if row["tempo"] is not None or row["key"] is not None:
            say(f"    {'analysis':9} {analysis_summary(row)}")
    for name, location in files.items():  # one track asked for: where its files are
        say(f"    {name:9} {safe(location)}")
    return 0


def run_watch(args: argparse.Namespace) -> int:
    config = settings()
    wanted = str(music.parse_uuid(args.track_id, "track id")) if args.track_id else None
    shown: dict[str, live.JobState] = {}
    printed = 0
    with live.open_listener(config.database_url) as listener, \
            database(config, autocommit=True) as reader:  # fmt: skip
        print("watching soundforge_progress (Ctrl-C to stop)", file=sys.stderr, flush=True)
        for event in live.events(listener, timeout_s=1.0):
            state = live.job_state(reader, event) if event is not None else None
            if state is None or (wanted and state.track_id != wanted):
                continue
            if shown.get(state.job_id) == state:
                continue  # the row did not change since it was shown (coalesced events)
            shown[state.job_id] = state
            if args.json:
                print_json(state.__dict__)
            else:
                say(f"{state.track_id}  {state.stage:9} {state.status:12} "
                    f"{state.progress:3d}%  job {state.job_id}")  # fmt: skip
                if state.error and state.status == "failed":
                    say(_fit_terminal(f"    error: {safe(state.error)}"))
            sys.stdout.flush()
            printed += 1
            if args.max_events and printed >= args.max_events:
                return 0
    return 0


def _fit_terminal(line: str) -> str:
    """On a terminal, a long error is cut to one line with an ellipsis (the whole text is in
    `soundforge status` and `watch --json`); piped output is left whole."""
    line = " ".join(line.splitlines())
    if not sys.stdout.isatty():
        return line
    width = shutil.get_terminal_size().columns
    return line if len(line) <= width else line[: width - 1] + "…"


def run_cancel(args: argparse.Namespace) -> int:
    config = settings()
    with database(config, autocommit=True) as conn:
        job = workflow.cancel_job(conn, args.job_id)
    print(f"cancelled job {job.id}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    config = settings()
    options = workflow.PipelineOptions(model=config.demucs_model)
    with database(config, autocommit=True) as conn:
        job = workflow.retry_job(conn, args.job_id, options)
    print(f"queued job {job.id} (retry of {args.job_id})")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from soundforge.app import build_app
    from soundforge.preflight import check_service_start
    from soundforge.runtime import build_runtime, set_runtime
    from soundforge.worker_hooks import WorkerHooks, worker_options

    config = settings()
    queues = [name.strip() for name in args.queues.split(",") if name.strip()]
    unknown = sorted(set(queues) - set(ALL_QUEUES))
    if unknown:
        raise PermanentError(
            f"unknown queue(s) {', '.join(unknown)}; choose from {', '.join(ALL_QUEUES)}"
        )
    logging.getLogger().setLevel(config.log_level.upper())
    check_service_start(config)  # no schema or unwritable storage: one line, before any job
    runtime = build_runtime(config)
    set_runtime(runtime)
    runtime.pool  # noqa: B018 - connect now: an unreachable database fails here, clearly
    stages = [stage for stage in map(Stage.for_queue, queues) if stage is not None]
    if stages:  # one warm engine process per job slot, warming up while the worker registers
        runtime.engine_processes.start(args.concurrency, warm_stages=stages)
    name = args.name or f"soundforge-{'+'.join(queues)}"
    # supervisor protocol, job heartbeats, recycling, the queues it serves
    hooks = WorkerHooks(config, name=name, queues=queues)
    app = build_app(config)
    hooks.attach(app)
    try:
        app.run_worker(
            queues=queues,
            concurrency=args.concurrency,
            name=name,
            shutdown_graceful_timeout=config.shutdown_grace_s,
            **worker_options(config, hooks),
        )
    finally:
        runtime.close()
    return 0
