"""Maintenance tasks on the `maintenance` queue, each also deferred periodically by every
worker's Procrastinate periodic deferrer (the database makes each tick run once): rescue the
jobs of dead workers (`rescue_cron`), prune finished queue jobs (`prune_cron`), remove orphaned
files (`cleanup_cron`). The work itself is in `soundforge.maintenance`.

The schedules are read from the settings once, when this module is imported: Procrastinate
registers periodic tasks at import time, before any worker has its settings in hand, so this
import is the edge where they are read.
"""

from __future__ import annotations

from typing import Any

from soundforge import maintenance
from soundforge.queue import MAINTENANCE_QUEUE
from soundforge.runtime import get_runtime
from soundforge.settings import load_settings
from tasks.blueprint import blueprint

_schedule = load_settings()


@blueprint.periodic(cron=_schedule.rescue_cron, periodic_id="rescue",
                    queueing_lock="soundforge.rescue_stalled")  # fmt: skip
@blueprint.task(name="soundforge.rescue_stalled", queue=MAINTENANCE_QUEUE)
def rescue_stalled(timestamp: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Retry (or fail, when out of attempts) running jobs whose worker stopped heartbeating."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        report = maintenance.rescue_stalled(conn, runtime.settings, dry_run=dry_run)
    return {"retried": report.retried, "failed": report.failed, "dry_run": dry_run}


@blueprint.periodic(cron=_schedule.prune_cron, periodic_id="prune",
                    queueing_lock="soundforge.prune_jobs")  # fmt: skip
@blueprint.task(name="soundforge.prune_jobs", queue=MAINTENANCE_QUEUE)
def prune_jobs(timestamp: int | None = None, days: int | None = None) -> dict[str, int]:
    """Delete finished queue jobs older than `days` (default: `prune_after_days`)."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        return maintenance.prune_finished_jobs(conn, days or runtime.settings.prune_after_days)


@blueprint.periodic(cron=_schedule.cleanup_cron, periodic_id="cleanup",
                    queueing_lock="soundforge.cleanup_orphaned")  # fmt: skip
@blueprint.task(name="soundforge.cleanup_orphaned", queue=MAINTENANCE_QUEUE)
def cleanup_orphaned(timestamp: int | None = None, dry_run: bool = False) -> dict[str, Any]:
    """Remove the files of downloads/ and stems/ that no row needs and leaked temporaries
    (older than their grace periods); nothing else under the storage root."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        report = maintenance.cleanup_orphaned(conn, runtime.settings, dry_run=dry_run)
    return {"count": report.count, "bytes": report.bytes, "dry_run": report.dry_run}
