"""How every stage task runs: take the row, move it to its active status, run the engine in a
warm engine child process (`soundforge.engine_process`) with throttled progress, and finish,
retry or fail the row according to the outcome. Tasks only say which engine call to make and
how to record its result.

Outcomes: success -> the stage's `finish` (one transaction). An attempt past the stage's time
limit has its engine process group killed and counts as a failed attempt.
`PermanentError` (bad input) -> row `failed` at once, no retry. Any other error -> retried by
Procrastinate with exponential backoff while attempts remain (the row keeps its active status
and records the attempt), then row `failed`. Abort by the user (`soundforge cancel`) -> row
`failed` with `cancelled`. Abort by a worker shutdown -> the same row goes back to the queue,
never lost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from procrastinate import JobContext, exceptions
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Job as QueueJob
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from psycopg_pool import ConnectionPool

from soundforge import jobs, queue, workflow
from soundforge.engine_process import EngineCall
from soundforge.errors import (
    JobAbortedError,
    PermanentError,
    SoundForgeError,
    StaleRowError,
)
from soundforge.models import IMPORT_TASK, Job, Stage
from soundforge.music import parse_uuid
from soundforge.redact import mask_text
from soundforge.runtime import Runtime, get_runtime
from soundforge.status import is_terminal

if TYPE_CHECKING:
    from soundforge.sources import TrackMetadata

log = logging.getLogger(__name__)
Connection = psycopg.Connection[Any]

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
        if attempts_made >= self.stage.attempts(runtime.settings):
            return None
        return RetryDecision(retry_in={"seconds": runtime.retry_delay_s(attempts_made)})


def time_limit_message(stage: Stage, limit_s: float) -> str:
    return (f"time limit exceeded: {stage.value} ran longer than {limit_s:g} s "
            f"({stage.time_limit_variable})")  # fmt: skip


def describe(error: BaseException) -> str:
    """A readable one-line error for a job row, secrets masked (it is shown to every reader)."""
    if isinstance(error, SoundForgeError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return mask_text(" ".join(text.split()))[:2000]


class ProgressWriter:
    """The engine's progress callback: writes the row's progress at most every
    `PROGRESS_MIN_STEP` percent and `PROGRESS_MIN_INTERVAL_S` seconds (borrowing a pooled
    connection for each write), and stops the engine (raising `JobAbortedError`) when the job
    is to be aborted or its row was ended by someone else (a cancel)."""

    def __init__(
        self,
        pool: ConnectionPool[Any],
        job: Job,
        should_abort: Callable[[], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
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
        with self.pool.connection() as conn:
            try:
                self.job = jobs.advance(conn, self.job, self.job.status, progress=value)
            except StaleRowError:
                self.job = jobs.reload(conn, self.job)
                if is_terminal(self.job.status):
                    raise JobAbortedError(f"job {self.job.id} was ended elsewhere "
                                          f"({self.job.error or self.job.status})") from None


def run_stage(
    context: JobContext,
    stage: Stage,
    *,
    track_id: str,
    job_id: str | None,
    force: bool,
    prepare: Callable[[Runtime, Connection, workflow.StartedStage], EngineCall],
    finish: Callable[[Runtime, Connection, Job, EngineCall, Any], object],
    requeue_args: dict[str, Any],
    model: str | None = None,
) -> None:
    """Start the row, run the engine call `prepare` builds in an engine child process, and
    finish or fail the row. Each step borrows a pooled connection for its statements only: no
    connection is held while the engine runs."""
    track_uuid = parse_uuid(track_id, "track id")  # deferred ids are untrusted: permanent
    job_uuid = parse_uuid(job_id, "job id") if job_id else None
    runtime = get_runtime()
    queue_job = context.job
    assert queue_job.id is not None
    attempt = queue_job.attempts + 1
    with runtime.pool.connection() as conn:
        started = workflow.begin_stage(
            conn, stage, track_uuid, job_uuid,
            procrastinate_job_id=queue_job.id, attempt=attempt, force=force, model=model,
        )  # fmt: skip
        if started is None:
            return
        extra = {"track_id": track_id, "job_id": str(started.job.id)}
        log.info("%s attempt %d started", stage.value, attempt, extra=extra)
        try:
            call = prepare(runtime, conn, started)
        except BaseException as error:
            _failed(runtime, conn, stage, started.job, attempt, error, extra)
            raise
    writer = ProgressWriter(runtime.pool, started.job, context.should_abort)
    limit_s = stage.time_limit_s(runtime.settings)
    try:
        result = runtime.engine_processes.run(
            call, writer, context.should_abort,
            limit_s=limit_s, limit_message=time_limit_message(stage, limit_s),
        )  # fmt: skip
        with runtime.pool.connection() as conn:
            _finish(runtime, conn, writer.job, call, result, finish)
    except (JobAbortedError, exceptions.JobAborted) as error:
        with runtime.pool.connection() as conn:
            _aborted(conn, context, writer.job, error, requeue_args, extra)
        raise exceptions.JobAborted(describe(error)) from None
    except BaseException as error:
        with runtime.pool.connection() as conn:
            _failed(runtime, conn, stage, writer.job, attempt, error, extra)
        raise
    log.info("%s completed", stage.value, extra=extra)


def expand_in_engine_process(
    context: JobContext, source: str, requeue_args: dict[str, Any]
) -> list[TrackMetadata]:
    """Expand `source` (a playlist, an album, a folder...) in an engine child process, under the
    download stage's time limit: a cancel (`procrastinate` abort) or the limit kills the child,
    as for a stage. Interrupted by a worker shutdown, the import goes back to the queue with
    the attempts it had made, instead of being lost."""
    runtime = get_runtime()
    stage = Stage.DOWNLOAD  # an import runs on the download queue, with its attempts and limit
    limit_s = stage.time_limit_s(runtime.settings)
    try:
        tracks: list[TrackMetadata] = runtime.engine_processes.run(
            EngineCall("expand", (source,)), _no_progress, context.should_abort,
            limit_s=limit_s, limit_message=time_limit_message(stage, limit_s),
        )  # fmt: skip
    except (JobAbortedError, exceptions.JobAborted) as error:
        if context.abort_reason() == AbortReason.SHUTDOWN:
            with runtime.pool.connection() as conn, conn.transaction():
                again = queue.defer(conn, IMPORT_TASK, stage.queue, requeue_args)
                if again is not None:
                    queue.carry_attempts(conn, again, context.job.attempts)
            log.warning("import of %s interrupted by shutdown; queued again as job %s",
                        mask_text(source), again)  # fmt: skip
        else:
            log.warning("import of %s aborted: %s", mask_text(source), describe(error))
        raise exceptions.JobAborted(describe(error)) from None
    return tracks


def _no_progress(percent: float) -> None:
    pass


def _failed(
    runtime: Runtime, conn: Connection, stage: Stage, job: Job, attempt: int,
    error: BaseException, extra: dict[str, str],
) -> None:  # fmt: skip
    """Record a failed attempt: the row fails now (bad input, attempts used up) or keeps its
    status and records the attempt (Procrastinate retries it)."""
    message = describe(error)
    if isinstance(error, PermanentError):
        log.warning("%s failed: %s", stage.value, message, extra=extra)
        workflow.fail_job(conn, job, message)
    elif attempt >= stage.attempts(runtime.settings) or not isinstance(error, Exception):
        log.error("%s failed after %d attempts: %s", stage.value, attempt, message, extra=extra)
        suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
        workflow.fail_job(conn, job, message + suffix)
    else:
        log.warning("%s attempt %d failed, will retry: %s", stage.value, attempt, message,
                    extra=extra)  # fmt: skip
        _record_attempt(conn, job, attempt, message)


def _finish(
    runtime: Runtime,
    conn: Connection,
    job: Job,
    call: EngineCall,
    result: Any,
    finish: Callable[[Runtime, Connection, Job, EngineCall, Any], object],
) -> None:
    try:
        finish(runtime, conn, job, call, result)
    except StaleRowError:
        job = jobs.reload(conn, job)
        if is_terminal(job.status):
            raise JobAbortedError(f"job {job.id} was ended elsewhere while finishing") from None
        finish(runtime, conn, job, call, result)


def _record_attempt(conn: Connection, job: Job, attempt: int, message: str) -> None:
    """Record a failed attempt, unless the row ended meanwhile (a cancel wins)."""
    try:
        workflow.record_failed_attempt(conn, job, attempt, message)
    except StaleRowError:
        job = jobs.reload(conn, job)
        if not is_terminal(job.status):
            workflow.record_failed_attempt(conn, job, attempt, message)


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
