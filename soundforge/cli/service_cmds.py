"""CLI commands that run and maintain the service: run (the supervisor), rescue-stalled,
prune. (`cleanup`, the orphan-file sweep, is in `database_cmds`.)"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from soundforge import maintenance
from soundforge.cli.common import add_json_flag, database, print_json, settings
from soundforge.errors import ConfigError
from soundforge.queue import GROUP_NAMES
from soundforge.settings import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run the supervisor: worker processes per queue group (systemd service)"
    )
    parser.add_argument("--queues", default=None, metavar="Q[,Q...]",
                        help="the queues this host serves, of download, processing, analysis, "
                        "maintenance (default: SOUNDFORGE_QUEUES, else all)")
    parser.add_argument("--processes", default=None, metavar="GROUP=N[,...]",
                        help="worker processes per group, e.g. processing=2 (default: "
                        "SOUNDFORGE_<GROUP>_PROCESSES)")
    parser.add_argument("--concurrency", default=None, metavar="GROUP=N[,...]",
                        help="jobs at once per process of a group, e.g. download=8 (default: "
                        "SOUNDFORGE_<GROUP>_CONCURRENCY)")  # fmt: skip
    parser.set_defaults(handler=run_supervisor)

    parser = subparsers.add_parser(
        "rescue-stalled",
        help="retry running jobs whose worker stopped heartbeating (fail them when out of "
        "attempts)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list, do not change anything")
    parser.add_argument("--after", type=float, default=None, metavar="SECONDS",
                        help="heartbeat age that counts as stalled (default: "
                        "SOUNDFORGE_STALLED_AFTER_S)")  # fmt: skip
    add_json_flag(parser)
    parser.set_defaults(handler=run_rescue_stalled)

    parser = subparsers.add_parser("prune", help="delete finished queue jobs older than N days")
    parser.add_argument("--days", type=int, default=None, metavar="N",
                        help="age in days (default: SOUNDFORGE_PRUNE_AFTER_DAYS)")  # fmt: skip
    add_json_flag(parser)
    parser.set_defaults(handler=run_prune)


def run_supervisor(args: argparse.Namespace) -> int:
    from soundforge.supervisor import Supervisor

    overrides: dict[str, Any] = {}
    if args.queues is not None:
        overrides["queues"] = args.queues
    for flag, suffix in (("processes", "processes"), ("concurrency", "concurrency")):
        for group, count in _group_counts(getattr(args, flag), f"--{flag}").items():
            overrides[f"{group}_{suffix}"] = count
    config = load_settings(**overrides)
    if not args.verbose:
        logging.getLogger().setLevel(config.log_level.upper())
    # the workers read their settings too (pool sizes follow the concurrency): pass the flags on
    environ = {**os.environ, **{f"SOUNDFORGE_{name.upper()}": str(value)
                                for name, value in overrides.items()}}  # fmt: skip
    return Supervisor(config, environ=environ).run()


def _group_counts(text: str | None, flag: str) -> dict[str, int]:
    """`processing=2,download=1` -> {"processing": 2, "download": 1}."""
    counts: dict[str, int] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        group, _, number = item.partition("=")
        if group.strip() not in GROUP_NAMES or not number.strip().isdigit():
            raise ConfigError(f"{flag} {item.strip()!r}: expected GROUP=N with GROUP one of "
                              f"{', '.join(GROUP_NAMES)}")  # fmt: skip
        counts[group.strip()] = int(number)
    return counts


def run_rescue_stalled(args: argparse.Namespace) -> int:
    config = settings()
    if args.after is None:
        maintenance.check_rescue_threshold(config)
    with database(config, autocommit=True) as conn:
        report = maintenance.rescue_stalled(
            conn, config, dry_run=args.dry_run, stalled_after_s=args.after
        )
    if args.json:
        print_json([job.__dict__ for job in report.jobs])
        return 0
    verb = "would be" if args.dry_run else "was"
    for job in report.jobs:
        if job.action == maintenance.ORPHAN_FAILED:
            print(f"job row {job.job_rows[0]} of ended queue job {job.procrastinate_job_id} "
                  f"({job.task_name}) {verb} failed")  # fmt: skip
            continue
        age = f"{job.heartbeat_age_s:.0f} s" if job.heartbeat_age_s is not None else "no worker"
        print(f"queue job {job.procrastinate_job_id} ({job.task_name}, attempt {job.attempt}, "
              f"heartbeat {age}) {verb} {job.action}")  # fmt: skip
    stalled = len(report.jobs) - report.orphans
    print(f"{stalled} stalled job(s): {report.retried} retried, {report.failed} failed; "
          f"{report.orphans} orphaned row(s) failed"
          + (" (dry run)" if args.dry_run else ""))  # fmt: skip
    return 0


def run_prune(args: argparse.Namespace) -> int:
    config = settings()
    days = args.days if args.days is not None else config.prune_after_days
    with database(config, autocommit=True) as conn:
        counts = maintenance.prune_finished_jobs(conn, days)
    if args.json:
        print_json({"days": days, "deleted": counts})
        return 0
    detail = ", ".join(f"{queue} {count}" for queue, count in sorted(counts.items()))
    print(f"deleted {sum(counts.values())} finished queue job(s) older than {days} day(s)"
          + (f" ({detail})" if detail else ""))  # fmt: skip
    return 0
