"""The per-process context a worker runs with: settings (read once), the tasks' connection pool,
the file store and the engine child processes every engine call runs in (expanding a source
too; see `soundforge.engine_process`). Procrastinate calls module-level task functions, so the
tasks reach it through `get_runtime()`; the worker command, the supervisor and tests install
one explicitly with `set_runtime()`, and a bare `procrastinate worker` gets one built from the
environment on first use.

Pools: a worker process holds two, not one, and this is deliberate. Procrastinate's worker only
runs on an async connector (`PsycopgConnector`, an `AsyncConnectionPool` on the worker's event
loop: LISTEN, fetching, finishing and aborting queue jobs), while the tasks are sync functions
run in worker threads that borrow one connection per statement from `Runtime.pool` (a sync
`ConnectionPool`). An async pool cannot lend a connection to a thread without blocking on the
loop that owns it, and the sync connector Procrastinate offers cannot run a worker, so sharing
would mean routing every task statement through the event loop. Both are bounded by their own
setting, whatever the worker's concurrency: the queue pool (`soundforge-queue` in
`pg_stat_activity`) by `queue_pool_max_size`, plus Procrastinate's `LISTEN` connection, which it
opens outside its pool; this one (`soundforge-tasks`) by `db_pool_max_size`. One worker process
opens at most their sum plus one."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from soundforge.db import create_pool
from soundforge.engine_process import DEFAULT_FACTORY, EngineProcesses
from soundforge.file_store import FileStore, open_storage
from soundforge.settings import Settings, load_settings

TASKS_APPLICATION_NAME = "soundforge-tasks"


@dataclass
class Runtime:
    settings: Settings
    engine_factory: str = DEFAULT_FACTORY
    storage: FileStore = field(init=False)
    _pool: ConnectionPool[Any] | None = field(default=None, init=False, repr=False)
    _processes: EngineProcesses | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage = open_storage(self.settings)

    @property
    def pool(self) -> ConnectionPool[Any]:
        """The tasks' pool: every statement borrows a connection and gives it back, so a job
        waits its turn rather than open more than `db_pool_max_size`."""
        with self._lock:
            if self._pool is None:
                self._pool = create_pool(
                    self.settings.database_url,
                    min_size=self.settings.db_pool_min_size,
                    max_size=self.settings.db_pool_max_size,
                    application_name=TASKS_APPLICATION_NAME,
                )
            return self._pool

    @property
    def engine_processes(self) -> EngineProcesses:
        """The warm child processes the stage engines run in."""
        with self._lock:
            if self._processes is None:
                self._processes = EngineProcesses(self.settings, self.engine_factory)
            return self._processes

    def retry_delay_s(self, attempts_made: int) -> int:
        """Exponential backoff before the next attempt (attempts_made >= 1)."""
        base = self.settings.retry_exponential_base
        return round(self.settings.retry_wait_s * base ** (attempts_made - 1))

    def close(self) -> None:
        with self._lock:
            processes, self._processes = self._processes, None
            pool, self._pool = self._pool, None
        if processes is not None:
            processes.close()
        if pool is not None:
            pool.close()


_current: Runtime | None = None
_current_lock = threading.Lock()


def build_runtime(settings: Settings | None = None, engine_factory: str | None = None) -> Runtime:
    return Runtime(settings=settings or load_settings(),
                   engine_factory=engine_factory or DEFAULT_FACTORY)  # fmt: skip


def get_runtime() -> Runtime:
    global _current  # noqa: PLW0603 - the one process-wide context, see the module docstring
    with _current_lock:
        if _current is None:
            _current = build_runtime()
        return _current


def set_runtime(runtime: Runtime | None) -> Runtime | None:
    """Install `runtime` for this process; returns the previous one (closed by the caller)."""
    global _current
    with _current_lock:
        previous, _current = _current, runtime
        return previous
