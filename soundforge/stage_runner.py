"""How every stage task runs: take the row, move it to its active status, call the engine with
throttled progress and abort checks, and finish, retry or fail the row according to the
outcome. Tasks only say which engine to call and how to record its result.

Outcomes: success -> the stage's `finish` (one transaction). An attempt past the stage's time
limit is stopped through the engine's abort check and counts as a failed attempt.
`PermanentError` (bad input) -> row `failed` at once, no retry. Any other error -> retried by
Procrastinate with exponential backoff while attempts remain (the row keeps its active status
and records the attempt), then row `failed`. Abort by the user (`soundforge cancel`) -> row
`failed` with `cancelled`. Abort by a worker shutdown -> the same row goes back to the queue,
never lost.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from procrastinate import JobContext, exceptions
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Job as QueueJob
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from soundforge import jobs, workflow
from soundforge.errors import (
    JobAbortedError,
    PermanentError,
    SoundForgeError,
    StaleRowError,
    TransientError,
)
from soundforge.models import Job, Stage
from soundforge.redact import mask_text
from soundforge.runtime import Runtime, get_runtime
from soundforge.settings import Settings
from soundforge.status import is_terminal

log = logging.getLogger(__name__)
Connection = psycopg.Connection[Any]
T = TypeVar("T")

PROGRESS_MIN_STEP = 1  # percent
PROGRESS_MIN_INTERVAL_S = 0.5


class StageRetryStrategy(BaseRetryStrategy):
    """Retry transient failures with exponential backoff, up to the stage's attempts setting
    (read from the process runtime when a job fails); never bad input, never an abort."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def get_retry_decision(
        self, *, exception: BaseException, job: QueueJob
    ) -> RetryDecision | None:
        if isinstance(exception, PermanentError | JobAbortedError | exceptions.JobAborted):
            return None
        runtime = get_runtime()
        attempts_made = job.attempts + 1
        if attempts_made >= runtime.attempts_for(self.stage):
            return None
        return RetryDecision(retry_in={"seconds": runtime.retry_delay_s(attempts_made)})


class StageTimeLimitError(TransientError):
    """An attempt ran past its stage's time limit and was stopped (a failed attempt)."""


def time_limit_s(settings: Settings, stage: Stage) -> float:
    return {
        Stage.DOWNLOAD: settings.download_time_limit_s,
        Stage.SEPARATE: settings.separate_time_limit_s,
        Stage.ANALYZE: settings.analyze_time_limit_s,
    }[stage]


class TimeLimit:
    """The soft per-stage time limit: the engine is asked to stop (through its abort check)
    once an attempt has run `limit_s`; the supervisor kills a worker that does not stop."""

    def __init__(
        self, stage: Stage, limit_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.stage = stage
        self.limit_s = limit_s
        self._clock = clock
        self._started = clock()

    def exceeded(self) -> bool:
        return self._clock() - self._started > self.limit_s

    def raise_if_exceeded(self) -> None:
        if self.exceeded():
            raise StageTimeLimitError(
                f"time limit exceeded: {self.stage.value} ran longer than {self.limit_s:g} s "
                f"(SOUNDFORGE_{self.stage.value.upper()}_TIME_LIMIT_S)"
            ) from None


def describe(error: BaseException) -> str:
    """A readable one-line error for a job row, secrets masked (it is shown to every reader)."""
    if isinstance(error, SoundForgeError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return mask_text(" ".join(text.split()))[:2000]


class ProgressWriter:
    """The engine's progress callback: writes the row's progress at most every
    `PROGRESS_MIN_STEP` percent and `PROGRESS_MIN_INTERVAL_S` seconds, and stops the engine
    (raising `JobAbortedError`) when the job is to be aborted or its row was ended by someone
    else (a cancel)."""

    def __init__(
        self,
        conn: Connection,
        job: Job,
        should_abort: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conn = conn
        self.job = job
        self._should_abort = should_abort
        self._clock = clock
        self._last_write = float("-inf")

    def should_abort(self) -> bool:
        return self._should_abort()

    def __call__(self, percent: float) -> None:
        if self._should_abort():
            raise JobAbortedError(f"{jobs.stage_of(self.job).value} job {self.job.id} aborted")
        value = int(min(99.0, max(0.0, percent)))  # 100 is written by completion only
        if value < (self.job.progress or 0) + PROGRESS_MIN_STEP:
            return
        now = self._clock()
        if now - self._last_write < PROGRESS_MIN_INTERVAL_S:
            return
        self._last_write = now
        try:
            self.job = jobs.advance(self.conn, self.job, self.job.status, progress=value)
        except StaleRowError:
            self.job = jobs.reload(self.conn, self.job)
            if is_terminal(self.job.status):
                raise JobAbortedError(
                    f"job {self.job.id} was ended elsewhere ({self.job.error or self.job.status})"
                ) from None


def run_stage(
    context: JobContext,
    stage: Stage,
    *,
    track_id: str,
    job_id: str | None,
    force: bool,
    work: Callable[[Runtime, Connection, workflow.StartedStage, ProgressWriter], T],
    finish: Callable[[Runtime, Connection, Job, T], object],
    requeue_args: dict[str, Any],
    model: str | None = None,
) -> None:
    runtime = get_runtime()
    queue_job = context.job
    assert queue_job.id is not None
    attempt = queue_job.attempts + 1
    with runtime.pool.connection() as conn:
        started = workflow.begin_stage(
            conn, stage, uuid.UUID(track_id), uuid.UUID(job_id) if job_id else None,
            procrastinate_job_id=queue_job.id, attempt=attempt, force=force, model=model,
        )  # fmt: skip
        if started is None:
            return
        job = started.job
        extra = {"track_id": track_id, "job_id": str(job.id)}
        log.info("%s attempt %d started", stage.value, attempt, extra=extra)
        limit = TimeLimit(stage, time_limit_s(runtime.settings, stage))
        writer = ProgressWriter(conn, job, lambda: context.should_abort() or limit.exceeded())
        try:
            try:
                result = work(runtime, conn, started, writer)
            except JobAbortedError:
                if not context.should_abort():
                    limit.raise_if_exceeded()  # a failed attempt: retried or failed below
                raise
            _finish(runtime, conn, writer.job, result, finish)
        except (JobAbortedError, exceptions.JobAborted) as error:
            _aborted(conn, context, writer.job, error, requeue_args, extra)
            raise exceptions.JobAborted(describe(error)) from None
        except PermanentError as error:
            log.warning("%s failed: %s", stage.value, describe(error), extra=extra)
            workflow.fail_job(conn, writer.job, describe(error))
            raise
        except Exception as error:
            message = describe(error)
            if attempt >= runtime.attempts_for(stage):
                log.error("%s failed after %d attempts: %s", stage.value, attempt, message,
                          extra=extra)  # fmt: skip
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                workflow.fail_job(conn, writer.job, message + suffix)
            else:
                log.warning("%s attempt %d failed, will retry: %s", stage.value, attempt,
                            message, extra=extra)  # fmt: skip
                _record_attempt(conn, writer.job, attempt, message)
            raise
        log.info("%s completed", stage.value, extra=extra)


def _finish(
    runtime: Runtime,
    conn: Connection,
    job: Job,
    result: T,
    finish: Callable[[Runtime, Connection, Job, T], object],
) -> None:
    try:
        finish(runtime, conn, job, result)
    except StaleRowError:
        job = jobs.reload(conn, job)
        if is_terminal(job.status):
            raise JobAbortedError(f"job {job.id} was ended elsewhere while finishing") from None
        finish(runtime, conn, job, result)


def _record_attempt(conn: Connection, job: Job, attempt: int, message: str) -> None:
    try:
        workflow.record_failed_attempt(conn, job, attempt, message)
    except StaleRowError:
        workflow.record_failed_attempt(conn, jobs.reload(conn, job), attempt, message)


def _aborted(
    conn: Connection,
    context: JobContext,
    job: Job,
    error: BaseException,
    requeue_args: dict[str, Any],
    extra: dict[str, str],
) -> None:
    if context.abort_reason() == AbortReason.SHUTDOWN:
        procrastinate_id = workflow.requeue_after_shutdown(conn, job, requeue_args)
        log.warning("interrupted by shutdown; queued again as job %s", procrastinate_id,
                    extra=extra)  # fmt: skip
        return
    log.warning("aborted: %s", describe(error), extra=extra)
    workflow.fail_job(conn, job, workflow.CANCELLED)
