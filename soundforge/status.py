"""The job status machine, pure: which moves are legal. Mirrored in PostgreSQL by the trigger
(`schema/003_job_status_guard.sql`, per-table working status since 015), and tested against it
pair by pair.

Statuses are ranked `queued < downloading < processing < completed | failed`; a job only moves
to a higher rank, `completed` and `failed` are terminal, and progress (0..100) never decreases.
"""

from __future__ import annotations

from enum import StrEnum

from soundforge.errors import IllegalTransitionError


class Status(StrEnum):
    QUEUED = "queued"
    DOWNLOADING = "downloading"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


RANK: dict[Status, int] = {
    Status.QUEUED: 0,
    Status.DOWNLOADING: 1,
    Status.PROCESSING: 2,
    Status.COMPLETED: 3,
    Status.FAILED: 3,
}
TERMINAL: frozenset[Status] = frozenset({Status.COMPLETED, Status.FAILED})
ACTIVE: frozenset[Status] = frozenset({Status.DOWNLOADING, Status.PROCESSING})


def is_terminal(status: Status | str) -> bool:
    return Status(status) in TERMINAL


def is_active(status: Status | str) -> bool:
    """A worker is (or was, if it died) working on a job in this status."""
    return Status(status) in ACTIVE


def can_move(
    current: Status | str, target: Status | str, working: Status | str | None = None
) -> bool:
    """True when a row in `current` may be updated to `target` (staying put is allowed); with
    `working` (its table's active status: a download row works as `downloading`, the others as
    `processing`), the other active status is never allowed."""
    current, target = Status(current), Status(target)
    if working is not None and target in ACTIVE and target != Status(working):
        return False
    if current == target:
        return True
    if current in TERMINAL:
        return False
    return RANK[target] > RANK[current]


def check_move(
    current: Status | str, target: Status | str, working: Status | str | None = None
) -> None:
    if not can_move(current, target, working):
        if Status(current) in TERMINAL:
            reason = f"{current} is final"
        elif working is not None and Status(target) in ACTIVE and target != working:
            reason = f"this stage works as {working}, never {target}"
        else:
            reason = ("statuses only move forward: queued < downloading < processing < "
                      "completed | failed")  # fmt: skip
        raise IllegalTransitionError(f"illegal status change {current} -> {target} ({reason})")


def check_progress(current: int | None, target: int) -> None:
    if not 0 <= target <= 100:
        raise IllegalTransitionError(f"invalid progress {target}: must be between 0 and 100")
    if target < (current or 0):
        raise IllegalTransitionError(
            f"illegal progress change {current} -> {target} (progress never decreases)"
        )
