"""`soundforge run`: the supervisor. It starts `soundforge worker` processes per queue group
(download: I/O-bound, many jobs at once; processing and analysis: CPU-bound, one job per
process, model loaded once), restarts a worker that dies or stops on its own (e.g. when its
database connection dies) with exponential backoff, and at once one that recycled itself after
`recycle_after_jobs`; when a worker dies (a crash, SIGKILL, the OOM killer) it puts the jobs
that worker was running back in the queue at once (or fails them when out of attempts), drains
on SIGTERM/SIGINT within `shutdown_grace_s`, and speaks
sd_notify to systemd: `READY=1` once every worker reported ready, `STATUS=` one-line summaries,
`WATCHDOG=1` while its loop runs, `STOPPING=1` when it drains.

Workers talk back over the same protocol on a socket of the supervisor's own (their
`NOTIFY_SOCKET`): ready (with their Procrastinate worker id), job started, job finished (see
`soundforge.worker_hooks`); a message counts only when the kernel says (SO_PASSCRED) it came
from the worker process it names. Time limits and cancels are the workers' own business: their
engines run in child processes they kill (`soundforge.engine_process`), so the supervisor needs
no job-aware kill. A worker
gets SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so even a killed supervisor leaves
no worker behind and every interrupted job goes back to the queue.

Written by hand rather than with a process manager library: what matters here (the drain,
the rescue of a dead worker's jobs, the sd_notify relay) is specific to Procrastinate workers,
and the process handling itself is a loop over `subprocess.Popen` of about a hundred lines.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

from soundforge import maintenance, worker_hooks
from soundforge.db import connect
from soundforge.engine_batching import jobs_together
from soundforge.errors import ConfigError
from soundforge.preflight import check_service_start
from soundforge.queue import GROUP_NAMES, MAINTENANCE_QUEUE
from soundforge.sd_notify import (
    NOTIFY_SOCKET,
    SENDER_PID,
    WATCHDOG_PID,
    WATCHDOG_USEC,
    Notifier,
    NotifyReceiver,
    watchdog_interval_s,
)
from soundforge.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 0.2
STOP_MARGIN_S = 15.0  # after the grace: time for requeueing interrupted jobs and unregistering
STATUS_REFRESH_S = 30.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerGroup:
    """Processes that serve the same queues with the same concurrency."""

    name: str
    queues: tuple[str, ...]
    processes: int
    concurrency: int


def host_queues(settings: Settings) -> tuple[str, ...]:
    """The queues this host serves (`SOUNDFORGE_QUEUES`, `soundforge run --queues`)."""
    queues = tuple(name.strip() for name in settings.queues.split(",") if name.strip())
    unknown = sorted(set(queues) - {*GROUP_NAMES, MAINTENANCE_QUEUE})
    if unknown or not queues:
        raise ConfigError(
            f"SOUNDFORGE_QUEUES={settings.queues}: choose from "
            f"{', '.join((*GROUP_NAMES, MAINTENANCE_QUEUE))}"
        )
    return queues


def worker_groups(settings: Settings) -> list[WorkerGroup]:
    """The groups this host runs: those of its queues, with the processes the settings ask
    for; the maintenance queue, when the host serves it, joins `maintenance_group` (or the
    first group that runs here)."""
    queues = host_queues(settings)
    groups = []
    for name, processes, concurrency in (
        ("download", settings.download_processes, settings.download_concurrency),
        # A GPU worker takes as many separations at once as its engine runs together.
        ("processing", settings.processing_processes,
         max(settings.processing_concurrency, jobs_together(settings))),
        ("analysis", settings.analysis_processes, settings.analysis_concurrency),
    ):
        groups.append(WorkerGroup(name, (name,), processes if name in queues else 0,
                                  concurrency))  # fmt: skip
    running = [group for group in groups if group.processes]
    if not running:
        raise ConfigError(
            f"no worker processes for the queues {','.join(queues)}; set "
            "SOUNDFORGE_DOWNLOAD_PROCESSES, SOUNDFORGE_PROCESSING_PROCESSES or "
            "SOUNDFORGE_ANALYSIS_PROCESSES to 1 or more for a queue this host serves"
        )
    if MAINTENANCE_QUEUE in queues:
        host = next((g for g in running if g.name == settings.maintenance_group), running[0])
        groups[groups.index(host)] = WorkerGroup(
            host.name, (*host.queues, MAINTENANCE_QUEUE), host.processes, host.concurrency
        )
    return groups


@dataclass
class RunningJob:
    procrastinate_job_id: int
    task_name: str
    started_at: float


@dataclass
class WorkerProcess:
    """One worker slot: its current process (if any) and its history."""

    group: WorkerGroup
    index: int
    process: subprocess.Popen[bytes] | None = None
    ready: bool = False
    recycling: bool = False
    started_at: float = 0.0
    next_start_at: float = 0.0
    failures: int = 0
    restarts: int = 0
    recycles: int = 0
    jobs_done: int = 0
    jobs: dict[int, RunningJob] = field(default_factory=dict)
    queue_worker_id: int | None = None  # its row in procrastinate_workers

    @property
    def name(self) -> str:
        return f"{self.group.name}-{self.index}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the supervisor goes away (Linux)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed supervisor
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def default_worker_command(group: WorkerGroup, name: str) -> list[str]:
    return [
        sys.executable, "-m", "soundforge.cli.main", "worker",
        "--queues", ",".join(group.queues), "--concurrency", str(group.concurrency),
        "--name", name,
    ]  # fmt: skip


class Supervisor:
    """Runs the worker processes until asked to stop; `run()` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        worker_command: Callable[[WorkerGroup, str], Sequence[str]] = default_worker_command,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        # systemd reads at once; a manager that stopped reading must not stall the loop
        self.notifier = notifier or Notifier.from_environ(self.environ, send_timeout_s=0.0)
        self.worker_command = worker_command
        self.clock = clock
        self.groups = worker_groups(settings)
        self.workers = [
            WorkerProcess(group, index) for group in self.groups for index in range(group.processes)
        ]
        self.receiver: NotifyReceiver | None = None
        self.stop_requested = 0
        self.stop_deadline: float | None = None
        self.announced_ready = False
        self._ready_logged = False
        self.unclean_stop = False
        self._last_status = ""
        self._last_status_at = 0.0
        self._watchdog_s = watchdog_interval_s(self.environ)
        self._last_watchdog_at = float("-inf")

    # -- start ------------------------------------------------------------------------------

    def preflight(self) -> None:
        """Fail early, in one clear line: bad thresholds, no database, an old or missing schema,
        storage this user cannot write."""
        maintenance.check_rescue_threshold(self.settings)
        check_service_start(self.settings)

    def run(self) -> int:
        self.preflight()
        self.receiver = NotifyReceiver()
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}  # fmt: skip
        try:
            log.info("starting %d worker process(es)", len(self.workers))
            self._publish_status(force=True)
            while not self._finished():
                self._tick()
            return self._exit_code()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.receiver.close()
            self.notifier.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested += 1

    # -- the loop ---------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        if self.stop_requested and self.stop_deadline is None:
            self._begin_stop(now)
        elif self.stop_requested > 1 or (self.stop_deadline and now > self.stop_deadline):
            self._kill_remaining()
        if not self.stop_requested:
            self._start_due(now)
        self._wait_for_messages(TICK_S)
        self._reap(self.clock())
        self._maybe_announce_ready()
        self._publish_status()
        self._feed_watchdog(self.clock())

    def _start_due(self, now: float) -> None:
        for worker in self.workers:
            if worker.process is None and now >= worker.next_start_at:
                self._start(worker, now)

    def _start(self, worker: WorkerProcess, now: float) -> None:
        assert self.receiver is not None
        env = {k: v for k, v in self.environ.items() if k not in (WATCHDOG_USEC, WATCHDOG_PID)}
        env[NOTIFY_SOCKET] = self.receiver.address
        command = list(self.worker_command(worker.group, worker.name))
        worker.process = subprocess.Popen(
            command,
            env=env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - one thread here; it only calls prctl
        )
        worker.ready = False
        worker.recycling = False
        worker.started_at = now
        worker.jobs.clear()
        worker.queue_worker_id = None
        log.info("started worker %s (pid %d): queues %s, concurrency %d", worker.name,
                 worker.process.pid, ",".join(worker.group.queues),
                 worker.group.concurrency)  # fmt: skip

    def _wait_for_messages(self, timeout_s: float) -> None:
        assert self.receiver is not None
        try:
            readable, _, _ = select.select([self.receiver], [], [], timeout_s)
        except InterruptedError:  # a signal; the next tick handles it
            return
        if readable:
            for message in self.receiver.drain():
                self._handle_message(message)

    def _handle_message(self, message: dict[str, str]) -> None:
        assert self.receiver is not None
        # Who sent it, as the kernel says; MAINPID in the body only where no credentials exist
        sender = SENDER_PID if self.receiver.passes_credentials else "MAINPID"
        worker = self._worker_by_pid(message.get(sender))
        if worker is None:
            return
        if worker_hooks.WORKER_ID in message and message[worker_hooks.WORKER_ID].isdigit():
            worker.queue_worker_id = int(message[worker_hooks.WORKER_ID])
        if message.get("READY") == "1" and not worker.ready:
            worker.ready = True
            worker.failures = 0
            log.info("worker %s (pid %s) is ready", worker.name, worker.pid)
        if worker_hooks.JOB_STARTED in message:
            job_id = int(message[worker_hooks.JOB_STARTED])
            worker.jobs[job_id] = RunningJob(job_id, message.get(worker_hooks.TASK, "?"),
                                             self.clock())  # fmt: skip
        if worker_hooks.RECYCLING in message:
            worker.recycling = True
        if worker_hooks.JOB_FINISHED in message:
            worker.jobs.pop(int(message[worker_hooks.JOB_FINISHED]), None)
            worker.jobs_done += 1

    def _worker_by_pid(self, pid_text: str | None) -> WorkerProcess | None:
        if not pid_text or not pid_text.isdigit():
            return None
        return next((w for w in self.workers if w.pid == int(pid_text)), None)

    def _reap(self, now: float) -> None:
        for worker in self.workers:
            if worker.process is None:
                continue
            code = worker.process.poll()
            if code is None:
                continue
            worker.process = None
            worker.ready = False
            self._rescue_jobs_of(worker, code)
            worker.jobs.clear()
            if self.stop_requested:
                log.info("worker %s stopped (exit code %d)", worker.name, code)
                continue
            if code == 0 and worker.recycling:  # it recycled itself: a fresh one at once
                worker.recycles += 1
                worker.next_start_at = now
                log.info("worker %s recycled; starting a fresh one", worker.name)
                continue
            delay = min(
                self.settings.restart_backoff_max_s,
                self.settings.restart_backoff_s * 2**worker.failures,
            )
            worker.failures += 1
            worker.restarts += 1
            worker.next_start_at = now + delay
            how = "stopped on its own" if code == 0 else f"died (exit code {code})"
            log.warning("worker %s %s; restarting in %.1f s", worker.name, how, delay)

    # -- a dead worker's jobs ----------------------------------------------------------------

    def _rescue_jobs_of(self, worker: WorkerProcess, code: int) -> None:
        """Put back (or fail) the queue jobs a worker that just ended was still running: the
        ones it reported and any its Procrastinate worker row still holds."""
        if not worker.jobs and worker.queue_worker_id is None:
            return
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        reason = f"the worker running this job died ({how})"
        try:
            with connect(self.settings.database_url, autocommit=True) as conn:
                report = maintenance.rescue_dead_worker(
                    conn, self.settings, worker.queue_worker_id, list(worker.jobs), reason
                )
        except Exception as error:  # the periodic rescue will get them later
            log.error("could not rescue the jobs of worker %s now: %s", worker.name, error)
            return
        if report.jobs:
            log.warning("worker %s %s: %d job(s) put back, %d failed", worker.name, how,
                        report.retried, report.failed)  # fmt: skip

    # -- stopping ---------------------------------------------------------------------------

    def _begin_stop(self, now: float) -> None:
        self.stop_deadline = now + self.settings.shutdown_grace_s + STOP_MARGIN_S
        running = sum(len(w.jobs) for w in self.workers)
        log.info("stopping: draining %d running job(s) within %.0f s",
                 running, self.settings.shutdown_grace_s)  # fmt: skip
        self.notifier.stopping(self._status_line())
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                worker.process.send_signal(signal.SIGTERM)

    def _kill_remaining(self) -> None:
        for worker in self.workers:
            if worker.alive:
                assert worker.process is not None
                log.error("worker %s did not stop in time; killing it (its jobs will be "
                          "rescued)", worker.name)  # fmt: skip
                worker.process.kill()
                self.unclean_stop = True

    def _finished(self) -> bool:
        return (
            bool(self.stop_requested)
            and self.stop_deadline is not None
            and not any(worker.process is not None for worker in self.workers)
        )

    def _exit_code(self) -> int:
        if self.unclean_stop:
            log.error("stopped, but some workers had to be killed")
            return 1
        log.info("stopped cleanly")
        return 0

    # -- sd_notify --------------------------------------------------------------------------

    def _maybe_announce_ready(self) -> None:
        """READY=1 once every worker is ready; sent again on the next tick when the send was
        dropped (the manager's queue was full)."""
        if self.announced_ready or self.stop_requested:
            return
        if all(worker.ready for worker in self.workers):
            if not self._ready_logged:
                self._ready_logged = True
                log.info("all %d worker process(es) ready", len(self.workers))
            sent = self.notifier.ready(self._status_line())
            self.announced_ready = sent or not self.notifier.enabled

    def _status_line(self) -> str:
        up = sum(1 for w in self.workers if w.ready)
        groups = ", ".join(
            f"{g.name} {sum(1 for w in self.workers if w.group is g and w.ready)}/{g.processes}"
            for g in self.groups
            if g.processes
        )
        running = sum(len(w.jobs) for w in self.workers)
        done = sum(w.jobs_done for w in self.workers)
        restarts = sum(w.restarts for w in self.workers)
        recycles = sum(w.recycles for w in self.workers)
        state = "stopping" if self.stop_requested else "running"
        return (f"{state}: workers {up}/{len(self.workers)} ready ({groups}); jobs running "
                f"{running}, done {done}; restarts {restarts}, recycled {recycles}")  # fmt: skip

    def _publish_status(self, *, force: bool = False) -> None:
        line = self._status_line()
        now = self.clock()
        if force or line != self._last_status or now - self._last_status_at > STATUS_REFRESH_S:
            self._last_status, self._last_status_at = line, now
            self.notifier.status(line)

    def _feed_watchdog(self, now: float) -> None:
        if self._watchdog_s is not None and now - self._last_watchdog_at >= self._watchdog_s:
            self._last_watchdog_at = now
            self.notifier.watchdog()
