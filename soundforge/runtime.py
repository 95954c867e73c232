"""The per-process context a worker runs with: settings (read once), a connection pool, the
file store and the engines. Procrastinate calls module-level task functions, so the tasks
reach it through `get_runtime()`; the worker command, the supervisor and tests install one
explicitly with `set_runtime()`, and a bare `procrastinate worker` gets one built from the
environment on first use."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from psycopg_pool import ConnectionPool

from soundforge.db import create_pool
from soundforge.engines import Engines, default_engines
from soundforge.file_store import FileStore, open_storage
from soundforge.models import Stage
from soundforge.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    engines: Engines
    storage: FileStore = field(init=False)
    _pool: ConnectionPool[Any] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        self.storage = open_storage(self.settings)

    @property
    def pool(self) -> ConnectionPool[Any]:
        with self._lock:
            if self._pool is None:
                max_size = max(
                    self.settings.db_pool_max_size,
                    self.settings.download_concurrency + 2,
                )
                self._pool = create_pool(
                    self.settings.database_url,
                    min_size=self.settings.db_pool_min_size,
                    max_size=max_size,
                )
            return self._pool

    def attempts_for(self, stage: Stage) -> int:
        return {
            Stage.DOWNLOAD: self.settings.download_attempts,
            Stage.SEPARATE: self.settings.separate_attempts,
            Stage.ANALYZE: self.settings.analyze_attempts,
        }[stage]

    def retry_delay_s(self, attempts_made: int) -> int:
        """Exponential backoff before the next attempt (attempts_made >= 1)."""
        base = self.settings.retry_exponential_base
        return round(self.settings.retry_wait_s * base ** (attempts_made - 1))

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None


_current: Runtime | None = None
_current_lock = threading.Lock()


def build_runtime(settings: Settings | None = None, engines: Engines | None = None) -> Runtime:
    settings = settings or load_settings()
    return Runtime(settings=settings, engines=engines or default_engines(settings))


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
