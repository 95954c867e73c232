"""Maintenance tasks on the `maintenance` queue (periodic schedules are added with the
supervisor): orphan-file cleanup."""

from __future__ import annotations

from typing import Any

from soundforge import music
from soundforge.runtime import get_runtime
from tasks.blueprint import blueprint


@blueprint.task(name="soundforge.cleanup_orphaned", queue="maintenance")
def cleanup_orphaned(dry_run: bool = False) -> dict[str, Any]:
    """Remove stored files no row references (older than the grace period)."""
    runtime = get_runtime()
    with runtime.pool.connection() as conn:
        referenced = music.referenced_paths(conn)
    report = runtime.storage.cleanup_orphaned(
        referenced, dry_run=dry_run, grace_s=runtime.settings.storage_orphan_grace_s
    )
    return {"count": report.count, "bytes": report.bytes, "dry_run": report.dry_run}
