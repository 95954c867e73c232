"""What an operator asks of a running SoundForge, answered from the database: queue counts and
waits, finished-job tallies, failures, stalled rows, live workers, and health (database
reachable, schema current, a live worker for every queue with waiting work). The Queues page,
`/metrics`, `/healthz` and `soundforge health` all read these functions."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import psycopg

from soundforge.db import connect
from soundforge.errors import SoundForgeError
from soundforge.migrations import soundforge_files
from soundforge.queries import query

Connection = psycopg.Connection[Any]
MIN_FRESH_HEARTBEAT_S = 5.0


class Health(IntEnum):
    """`soundforge health`'s exit codes."""

    HEALTHY = 0
    DEGRADED = 1
    DOWN = 2


@dataclass(frozen=True)
class QueueStats:
    queue: str
    counts: dict[str, int] = field(default_factory=dict)
    waiting: int = 0
    oldest_waiting_s: float | None = None


@dataclass(frozen=True)
class HealthReport:
    health: Health
    reasons: list[str]
    checks: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.health.name.lower(), "reasons": self.reasons,
                "checks": self.checks}  # fmt: skip


def fresh_heartbeat_s(heartbeat_interval_s: float) -> float:
    """How old a worker's heartbeat may be for it to count as alive."""
    return max(3 * heartbeat_interval_s, MIN_FRESH_HEARTBEAT_S)


def queue_stats(conn: Connection, *, live_only: bool = False) -> list[QueueStats]:
    """Per queue: jobs by status (only `todo` and `doing` when `live_only`: cheap whatever the
    history's size) and the waiting jobs with the oldest one's age."""
    counts: dict[str, dict[str, int]] = {}
    statement = "queue_live_counts" if live_only else "queue_job_counts"
    for row in conn.execute(query(statement)):
        counts.setdefault(row["queue"], {})[row["status"]] = int(row["jobs"])
    waiting = {row["queue"]: row for row in conn.execute(query("queue_waiting"))}
    return [
        QueueStats(
            queue=name,
            counts=counts.get(name, {}),
            waiting=int(waiting[name]["waiting"]) if name in waiting else 0,
            oldest_waiting_s=float(waiting[name]["oldest_age_s"]) if name in waiting else None,
        )
        for name in sorted(set(counts) | set(waiting))
    ]


def stage_outcomes(conn: Connection) -> list[dict[str, Any]]:
    """Rows (stage, status, le, jobs, seconds) of the finished-job tally."""
    return conn.execute(query("stage_outcomes")).fetchall()


def duration_buckets(conn: Connection) -> list[float]:
    """The tally's bucket bounds, ending with +Infinity."""
    return [float(row["le"]) for row in conn.execute(query("duration_buckets"))]


def done_in_last_hour(conn: Connection, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Per stage: rows completed / failed in the last hour."""
    since = (now or datetime.now(UTC)).replace(tzinfo=None) - timedelta(hours=1)
    done: dict[str, dict[str, int]] = {}
    for row in conn.execute(query("done_since"), {"since": since}):
        done.setdefault(row["stage"], {})[row["status"]] = int(row["jobs"])
    return done


def recent_failures(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    return conn.execute(query("recent_failures"), {"limit": limit}).fetchall()


def stalled_rows(conn: Connection, limit: int = 50) -> list[dict[str, Any]]:
    return conn.execute(query("stalled_rows"), {"limit": limit}).fetchall()


def workers(conn: Connection) -> list[dict[str, Any]]:
    return conn.execute(query("live_workers")).fetchall()


@functools.cache
def _expected_migrations() -> frozenset[str]:
    return frozenset(schema_file.name for schema_file in soundforge_files())


def pending_migrations(conn: Connection) -> list[str]:
    """SoundForge's schema files not applied to this database (all of them when it was never
    migrated)."""
    try:
        with conn.transaction():
            applied = {row["name"] for row in conn.execute(query("applied_soundforge_migrations"))}
    except psycopg.errors.UndefinedTable:
        applied = set()
    return sorted(_expected_migrations() - applied)


def check_health(conn: Connection, heartbeat_interval_s: float) -> HealthReport:
    """Healthy: schema current and, for every queue with waiting jobs, a worker serving it whose
    heartbeat is fresh. Down: the schema is missing or behind."""
    pending = pending_migrations(conn)
    if pending:
        return HealthReport(Health.DOWN, [f"the schema is {len(pending)} migration(s) behind: "
                            "run `soundforge migrate`"], {"database": "reachable",
                            "pending_migrations": pending})  # fmt: skip
    limit_s = fresh_heartbeat_s(heartbeat_interval_s)
    live = [worker for worker in workers(conn) if worker["heartbeat_age_s"] <= limit_s]
    reasons = []
    queues: dict[str, Any] = {}
    for stats in queue_stats(conn, live_only=True):
        if not stats.waiting:
            continue
        serving = [worker["id"] for worker in live
                   if worker["queues"] is None or stats.queue in worker["queues"]]  # fmt: skip
        queues[stats.queue] = {"waiting": stats.waiting, "live_workers": len(serving),
                               "oldest_waiting_s": stats.oldest_waiting_s}  # fmt: skip
        if not serving:
            reasons.append(f"queue {stats.queue} has {stats.waiting} waiting job(s) and no "
                           f"worker with a heartbeat in the last {limit_s:g} s")  # fmt: skip
    checks = {"database": "reachable", "pending_migrations": [], "live_workers": len(live),
              "queues": queues}  # fmt: skip
    return HealthReport(Health.DEGRADED if reasons else Health.HEALTHY, reasons, checks)


def health_of(conninfo: str, heartbeat_interval_s: float) -> HealthReport:
    """`check_health` on a connection of its own; DOWN when the database cannot be reached."""
    try:
        with connect(conninfo, autocommit=True, connect_timeout=5) as conn:
            return check_health(conn, heartbeat_interval_s)
    except (SoundForgeError, psycopg.Error) as error:
        return HealthReport(Health.DOWN, [str(error)], {"database": "unreachable"})
