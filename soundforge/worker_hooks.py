"""The worker process's side of supervision, as a Procrastinate worker middleware: tell the
supervisor (over `NOTIFY_SOCKET`, the sd_notify protocol) when the worker has registered and each
job starts and ends, keep the worker's heartbeat fresh while a job runs (Procrastinate stops it
when the worker starts draining, which would make a draining worker look dead to the rescuer),
and stop the worker after `recycle_after_jobs` jobs so the supervisor starts a fresh process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from procrastinate import App, JobContext
from procrastinate.worker import Worker

from soundforge.queries import all_queries
from soundforge.sd_notify import Notifier
from soundforge.settings import Settings

log = logging.getLogger(__name__)

# Fields of the messages a worker sends its supervisor (besides READY=1 and MAINPID).
JOB_STARTED = "X_SOUNDFORGE_JOB_STARTED"
JOB_FINISHED = "X_SOUNDFORGE_JOB_FINISHED"
TASK = "X_SOUNDFORGE_TASK"
JOBS_DONE = "X_SOUNDFORGE_JOBS_DONE"
RECYCLING = "X_SOUNDFORGE_RECYCLING"
WORKER_ID = "X_SOUNDFORGE_WORKER_ID"  # its row in procrastinate_workers, sent with READY=1


class WorkerHooks:
    """A Procrastinate worker middleware (async, wraps every job on the event loop)."""

    def __init__(self, settings: Settings, notifier: Notifier | None = None,
                 name: str | None = None, queues: list[str] | None = None) -> None:  # fmt: skip
        self.settings = settings
        self.notifier = notifier or Notifier.from_environ()
        self.name = name
        self.queues = queues
        self.jobs_done = 0
        self.recycling = False

    def attach(self, app: App) -> None:
        """Send `READY=1` once the worker has registered itself in the database (Procrastinate
        has no start hook, so its `register_worker` call is wrapped on this app's manager)."""
        manager = app.job_manager
        register = manager.register_worker

        async def register_and_notify() -> int:
            worker_id = await register()
            if self.name is not None and self.queues is not None:
                await _record_queues(app, worker_id, self.name, self.queues)
            self.notifier.send(READY=1, MAINPID=_pid(), **{WORKER_ID: worker_id})
            log.info("worker registered as %d", worker_id)
            return worker_id

        manager.register_worker = register_and_notify  # type: ignore[method-assign]

    async def __call__(
        self, call_next: Callable[[], Awaitable[Any]], context: JobContext, worker: Worker
    ) -> Any:
        job_id = context.job.id
        self.notifier.send(**{JOB_STARTED: job_id, TASK: context.job.task_name},
                           MAINPID=_pid())  # fmt: skip
        heartbeat = asyncio.create_task(self._keep_heartbeat(worker), name="job heartbeat")
        try:
            return await call_next()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self.jobs_done += 1
            self.notifier.send(**{JOB_FINISHED: job_id, JOBS_DONE: self.jobs_done},
                               MAINPID=_pid())  # fmt: skip
            self._maybe_recycle(worker)

    async def _keep_heartbeat(self, worker: Worker) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            if worker.worker_id is None:
                return
            try:
                await worker.app.job_manager.update_heartbeat(worker.worker_id)
            except Exception as error:  # the database may be restarting; the next try may work
                log.warning("could not update the worker heartbeat: %s", error)

    def _maybe_recycle(self, worker: Worker) -> None:
        limit = self.settings.recycle_after_jobs
        if not limit or self.recycling or self.jobs_done < limit:
            return
        self.recycling = True
        log.info("recycling this worker after %d jobs", self.jobs_done)
        self.notifier.send(**{RECYCLING: self.jobs_done}, MAINPID=_pid())
        worker.stop()  # type: ignore[no-untyped-call]  # procrastinate leaves it unannotated


def _pid() -> int:
    return os.getpid()


async def _record_queues(app: App, worker_id: int, name: str, queues: list[str]) -> None:
    """Say which queues this worker serves (the dashboard's Queues page and health read it)."""
    try:
        await app.connector.execute_query_async(
            all_queries()["record_worker_queues"].text,
            worker_id=worker_id, name=name, queues=queues, pid=_pid(),
            hostname=socket.gethostname(),
        )  # fmt: skip
    except Exception as error:  # an older schema without the table: serve anyway
        log.warning("could not record the worker's queues: %s", error)


def worker_options(settings: Settings, hooks: WorkerHooks) -> dict[str, Any]:
    """Keyword arguments for `App.run_worker` that wire in the hooks and the timing settings:
    heartbeats every `heartbeat_interval_s`, dead workers' rows pruned only after
    `stalled_after_s` (as their jobs are rescued), queues polled every `poll_interval_s`."""
    return {
        "worker_middleware": [hooks],
        "update_heartbeat_interval": settings.heartbeat_interval_s,
        "stalled_worker_timeout": settings.stalled_after_s,
        "fetch_job_polling_interval": settings.poll_interval_s,
        "abort_job_polling_interval": min(settings.poll_interval_s, 5.0),
    }
