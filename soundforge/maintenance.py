"""Periodic maintenance of the queue: rescue the jobs of workers that died (a running queue job
whose worker's heartbeat is older than `stalled_after_s` is retried, or failed once its stage's
attempts are used up), and prune finished queue jobs after `prune_after_days`; remove the files
of SoundForge's own storage areas that no row needs (`cleanup_orphaned`).

Procrastinate 3.x has no built-in rescue, and its worker stops heartbeating when it starts to
drain; SoundForge's workers keep heartbeating while any job runs (`soundforge.worker_hooks`),
and the threshold must still exceed the drain grace period (`check_rescue_threshold`), so a live
worker, draining or not, is never robbed of its job.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from soundforge import jobs, workflow
from soundforge.errors import ConfigError
from soundforge.file_store import open_storage
from soundforge.models import Stage
from soundforge.queries import query
from soundforge.settings import Settings
from soundforge.status import Status, is_terminal
from soundforge.storage import STEMS_DIR, CleanupReport, StoredFile

log = logging.getLogger(__name__)
Connection = psycopg.Connection[Any]

def check_rescue_threshold(settings: Settings) -> None:
    """`stalled_after_s` must exceed the drain grace plus two heartbeat intervals, or a worker
    that is draining (or merely between heartbeats) could look dead."""
    needed = settings.shutdown_grace_s + 2 * settings.heartbeat_interval_s
    if settings.stalled_after_s <= needed:
        raise ConfigError(
            f"SOUNDFORGE_STALLED_AFTER_S={settings.stalled_after_s:g} is too short: it must "
            f"exceed SOUNDFORGE_SHUTDOWN_GRACE_S + 2 x SOUNDFORGE_HEARTBEAT_INTERVAL_S "
            f"({needed:g} s), or a draining worker's jobs would be taken from it"
        )


@dataclass(frozen=True)
class RescuedJob:
    """One queue job taken from a dead worker: `retried` (back to `todo`) or `failed`."""

    procrastinate_job_id: int
    task_name: str
    queue: str
    attempt: int
    action: str
    heartbeat_age_s: float | None
    job_rows: list[uuid.UUID] = field(default_factory=list)


@dataclass
class RescueReport:
    dry_run: bool
    jobs: list[RescuedJob] = field(default_factory=list)

    @property
    def retried(self) -> int:
        return sum(1 for job in self.jobs if job.action == "retried")

    @property
    def failed(self) -> int:
        return sum(1 for job in self.jobs if job.action == "failed")

    @property
    def orphans(self) -> int:
        return sum(1 for job in self.jobs if job.action == ORPHAN_FAILED)


ORPHAN_FAILED = "row failed"


def _attempts_allowed(settings: Settings, task_name: str) -> int:
    """A stage task's attempts setting; any other task (maintenance) gets one attempt."""
    stage = Stage.for_task(task_name)
    return 1 if stage is None else stage.attempts(settings)


def _active_rows(conn: Connection, procrastinate_job_id: int) -> list[tuple[Stage, uuid.UUID]]:
    rows = []
    for stage in Stage:
        for row in conn.execute(
            query("active_rows_for_queue_job", table=stage.table),
            {"procrastinate_job_id": procrastinate_job_id},
        ).fetchall():
            rows.append((stage, row["id"]))
    return rows


def _fail_rows(conn: Connection, rows: list[tuple[Stage, uuid.UUID]], message: str) -> None:
    for stage, row_id in rows:
        job = jobs.get_job(conn, stage, row_id)
        if job is not None:
            workflow.fail_job(conn, job, message)
            log.warning("%s job %s failed: %s", stage.value, row_id, message,
                        extra={"track_id": str(job.track_id), "job_id": str(row_id)})  # fmt: skip


def rescue_stalled(
    conn: Connection, settings: Settings, *, dry_run: bool = False,
    stalled_after_s: float | None = None,
) -> RescueReport:  # fmt: skip
    """Retry (or, with no attempts left, fail) every running queue job whose worker is gone or
    silent for longer than `stalled_after_s` (default: the setting), in one transaction; the
    job rows keep their active status on a retry, so the re-run continues the same row. Rows
    left queued or running by a queue job that has already ended are failed."""
    threshold = settings.stalled_after_s if stalled_after_s is None else stalled_after_s
    report = RescueReport(dry_run=dry_run)
    with conn.transaction():
        stalled = conn.execute(
            query("lock_stalled_queue_jobs"), {"stalled_after_s": threshold}
        ).fetchall()
        reason = f"the worker running this job stopped (no heartbeat for over {threshold:g} s)"
        for queue_job in stalled:
            report.jobs.append(_rescue_one(conn, settings, queue_job, reason, dry_run))
        report.jobs.extend(_fail_orphaned_rows(conn, threshold, dry_run))
        if dry_run:
            raise psycopg.Rollback  # ends the transaction quietly, releasing the row locks
    return report


def rescue_dead_worker(
    conn: Connection, settings: Settings, queue_worker_id: int | None,
    procrastinate_job_ids: list[int], reason: str,
) -> RescueReport:  # fmt: skip
    """Retry (or fail) the running queue jobs of a worker process that has just ended (the
    supervisor saw it exit): those its Procrastinate worker row holds and those it reported,
    without waiting for a heartbeat to go stale; then remove its worker row."""
    report = RescueReport(dry_run=False)
    with conn.transaction():
        orphaned = conn.execute(
            query("lock_dead_worker_queue_jobs"),
            {"worker_id": queue_worker_id, "ids": procrastinate_job_ids},
        ).fetchall()
        for queue_job in orphaned:
            report.jobs.append(_rescue_one(conn, settings, queue_job, reason, dry_run=False))
        if queue_worker_id is not None:
            conn.execute(query("delete_queue_worker"), {"worker_id": queue_worker_id})
    return report


def _rescue_one(
    conn: Connection, settings: Settings, queue_job: dict[str, Any], reason: str,
    dry_run: bool,
) -> RescuedJob:  # fmt: skip
    queue_id = int(queue_job["id"])
    attempt = int(queue_job["attempts"]) + 1
    age: timedelta | None = queue_job["heartbeat_age"]
    rows = _active_rows(conn, queue_id)
    give_up = attempt >= _attempts_allowed(settings, queue_job["task_name"])
    rescued = RescuedJob(
        procrastinate_job_id=queue_id, task_name=queue_job["task_name"],
        queue=queue_job["queue_name"], attempt=attempt,
        action="failed" if give_up else "retried",
        heartbeat_age_s=age.total_seconds() if age is not None else None,
        job_rows=[row_id for _stage, row_id in rows],
    )  # fmt: skip
    if dry_run:
        return rescued
    if give_up:
        conn.execute(query("fail_queue_job"), {"id": queue_id})
        suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
        _fail_rows(conn, rows, reason + suffix)
    else:
        conn.execute(query("retry_queue_job"), {"id": queue_id})
    log.warning(
        "rescued queue job %d (%s, attempt %d): %s; %s",
        queue_id, rescued.task_name, attempt, reason, rescued.action,
        extra={"job_id": ",".join(str(row) for row in rescued.job_rows) or None},
    )  # fmt: skip
    return rescued


def _fail_orphaned_rows(conn: Connection, threshold_s: float, dry_run: bool) -> list[RescuedJob]:
    """Rows still queued or running whose queue job has ended: nothing will ever finish them,
    so they end `failed` (a `soundforge retry` queues them again)."""
    found = []
    for stage in Stage:
        rows = conn.execute(
            query("lock_orphaned_rows", table=stage.table), {"stalled_after_s": threshold_s}
        ).fetchall()
        for row in rows:
            found.append(RescuedJob(
                procrastinate_job_id=int(row["procrastinate_job_id"]), task_name=row["task_name"],
                queue=row["queue_name"], attempt=int(row["attempts"]), action=ORPHAN_FAILED,
                heartbeat_age_s=None, job_rows=[row["id"]],
            ))  # fmt: skip
            if not dry_run:
                message = (f"its queue job {row['procrastinate_job_id']} ended "
                           f"({row['queue_status']}) without finishing this row")  # fmt: skip
                _fail_rows(conn, [(stage, row["id"])], message)
    return found


def prune_finished_jobs(conn: Connection, days: int) -> dict[str, int]:
    """Delete finished queue jobs (and their events) older than `days`; counts per queue."""
    if days < 1:
        raise ConfigError(f"prune --days must be at least 1 (got {days})")
    counts: dict[str, int] = {}
    with conn.transaction():
        for row in conn.execute(query("delete_finished_queue_jobs"), {"days": days}):
            counts[row["queue_name"]] = counts.get(row["queue_name"], 0) + 1
    log.info("pruned %d finished queue job(s) older than %d day(s)", sum(counts.values()), days)
    return counts


def cleanup_orphaned(
    conn: Connection, settings: Settings, *, dry_run: bool = False,
    now: Callable[[], float] = time.time,
) -> CleanupReport:  # fmt: skip
    """Remove the files of SoundForge's own areas that no row needs: stored files older than
    `storage_orphan_grace_s` that no row references, temporaries older than
    `storage_temp_grace_s`, in both cases only when no live job row owns them. Each track's
    files are decided and removed in one transaction holding the track's and its job rows'
    locks (the locks a completion takes), so a row that commits meanwhile keeps its file,
    whatever the file's age; a track busy at that moment is left for the next run."""
    storage = open_storage(settings)
    candidates = storage.cleanup_candidates(
        settings.storage_orphan_grace_s, settings.storage_temp_grace_s, now
    )
    removed: list[StoredFile] = []
    for track_id, group in itertools.groupby(
        sorted(candidates, key=_track_key), key=lambda file: _track_key(file)[0]
    ):
        files = list(group)
        try:
            with conn.transaction():
                unneeded = _unneeded_files(conn, uuid.UUID(track_id) if track_id else None, files)
                for file in unneeded:
                    if dry_run or storage.remove_owned(file.relative):
                        removed.append(file)
                if dry_run:
                    raise psycopg.Rollback
        except psycopg.errors.LockNotAvailable:
            log.info("cleanup: track %s is busy; its files wait for the next run", track_id,
                     extra={"track_id": track_id})  # fmt: skip
    log.info("cleanup %s %d file(s)", "would remove" if dry_run else "removed", len(removed))
    return CleanupReport(
        count=len(removed), bytes=sum(file.size for file in removed),
        paths=[file.relative for file in removed], dry_run=dry_run,
    )  # fmt: skip


def _track_key(file: StoredFile) -> tuple[str, str]:
    owner = file.owner
    return (str(owner.track_id) if owner else "", file.relative)


def _unneeded_files(
    conn: Connection, track_id: uuid.UUID | None, files: list[StoredFile]
) -> list[StoredFile]:
    """The files no row needs, read under the locks that a completion of one of the track's
    job rows takes (`LockNotAvailable` when one is held right now)."""
    live_download = False
    live_runs: set[uuid.UUID] = set()
    if track_id is not None:
        params = {"track_id": track_id}
        conn.execute(query("lock_track_for_cleanup"), params)
        downloads = conn.execute(query("lock_download_rows_for_cleanup"), params).fetchall()
        runs = conn.execute(query("lock_processing_rows_for_cleanup"), params).fetchall()
        live_download = any(not is_terminal(Status(row["status"])) for row in downloads)
        live_runs = {row["id"] for row in runs if not is_terminal(Status(row["status"]))}
    unneeded = []
    for file in files:
        owner = file.owner
        in_use = owner is not None and (
            owner.processing_job_id in live_runs if owner.area == STEMS_DIR else live_download
        )
        if in_use:
            continue  # a job still running may write, read or record it
        if not file.temp and _referenced(conn, file.relative):
            continue
        unneeded.append(file)
    return unneeded


def _referenced(conn: Connection, relative: str) -> bool:
    row = conn.execute(query("path_referenced"), {"path": relative}).fetchone()
    return bool(row and row["referenced"])
