"""Maintenance tasks on the `maintenance` queue, each also deferred periodically by every
worker's Procrastinate periodic deferrer (the database makes each tick run once): rescue the
jobs of dead workers (`rescue_cron`), prune finished queue jobs (`prune_cron`), remove orphaned
files (`cleanup_cron`). The work itself is in `soundforge.maintenance`.

Importing this module reads no settings: `register_schedules` puts the three tasks on an app's
periodic registry with the crons of the settings that app was opened with (`soundforge.app`).
"""

from __future__ import annotations

from typing import Any

from procrastinate import App
from procrastinate.tasks import Task

from soundforge import maintenance
from soundforge.queue import MAINTENANCE_QUEUE
from soundforge.runtime import get_runtime
from soundforge.settings import Settings
from soundforge.tasks.blueprint import task


@task(name="soundforge.rescue_stalled", queue=MAINTENANCE_QUEUE)
def rescue_stalled(timestamp: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Retry (or fail, when out of attempts) running jobs whose worker stopped heartbeating."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        report = maintenance.rescue_stalled(conn, runtime.settings, dry_run=dry_run)
    return {"retried": report.retried, "failed": report.failed, "dry_run": dry_run}


@task(name="soundforge.prune_jobs", queue=MAINTENANCE_QUEUE)
def prune_jobs(timestamp: int | None = None, days: int | None = None) -> dict[str, int]:
    """Delete finished queue jobs older than `days` (default: `prune_after_days`)."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        return maintenance.prune_finished_jobs(conn, days or runtime.settings.prune_after_days)


@task(name="soundforge.cleanup_orphaned", queue=MAINTENANCE_QUEUE)
def cleanup_orphaned(timestamp: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove the files of downloads/ and stems/ that no row needs and leaked temporaries
    (older than their grace periods); nothing else under the storage root."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        report = maintenance.cleanup_orphaned(conn, runtime.settings, dry_run=dry_run)
    return {"count": report.count, "bytes": report.bytes, "dry_run": report.dry_run}


def register_schedules(app: App, settings: Settings) -> None:
    """Defer each maintenance task periodically on `app`, with the crons from `settings`; one
    queueing lock per task, so a tick never piles up behind a running one."""
    schedules: tuple[tuple[Task[Any, Any, Any], str, str], ...] = (
        (rescue_stalled, settings.rescue_cron, "rescue"),
        (prune_jobs, settings.prune_cron, "prune"),
        (cleanup_orphaned, settings.cleanup_cron, "cleanup"),
    )
    for periodic_task, cron, periodic_id in schedules:
        app.periodic_registry.register_task(
            task=periodic_task, cron=cron, periodic_id=periodic_id,
            configure_kwargs={"queueing_lock": periodic_task.name},
        )  # fmt: skip
