"""A real Procrastinate worker running in this test process (in a thread with its own event
loop), on the test database, with a `Runtime` the test chooses: the real engines, or the
scripted ones of `tests.support.engines` (faults injected), named by their factory: the engines
run in child processes, which build them by name."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from soundforge.app import build_app
from soundforge.runtime import Runtime, build_runtime, set_runtime
from soundforge.settings import Settings, load_settings
from tests.support.loopback_http import LOOPBACK_NETWORKS

ALL_QUEUES = ("download", "processing", "analysis", "maintenance")


def settings_for(database_url: str, storage_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "storage_path": storage_path,
        "retry_wait_s": 0.0,
        "shifts": 0,
        "allowed_networks": LOOPBACK_NETWORKS,  # the tests' loopback servers
        "import_roots": str(storage_path.parent),  # the test's own folder
    }
    values.update(overrides)
    return load_settings(**values)


@contextlib.contextmanager
def installed_runtime(settings: Settings, engine_factory: str | None = None) -> Iterator[Runtime]:
    runtime = build_runtime(settings, engine_factory)
    previous = set_runtime(runtime)
    try:
        yield runtime
    finally:
        set_runtime(previous)
        runtime.close()


@contextlib.contextmanager
def running_worker(
    settings: Settings,
    engine_factory: str | None = None,
    queues: Sequence[str] = ALL_QUEUES,
    concurrency: int = 2,
) -> Iterator[Runtime]:
    """Run a worker until the block ends; yields the runtime its tasks use."""
    with installed_runtime(settings, engine_factory) as runtime:
        app = build_app(settings)
        ready = threading.Event()
        failures: list[BaseException] = []
        holder: dict[str, Any] = {}

        async def main() -> None:
            holder["loop"] = asyncio.get_running_loop()
            holder["stop"] = asyncio.Event()
            async with app.open_async():
                worker = asyncio.create_task(
                    app.run_worker_async(
                        queues=list(queues), concurrency=concurrency, wait=True,
                        install_signal_handlers=False, fetch_job_polling_interval=0.2,
                        abort_job_polling_interval=0.2, shutdown_graceful_timeout=5,
                    )
                )
                ready.set()
                await holder["stop"].wait()
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as error:  # reported to the test below
                failures.append(error)
                ready.set()

        thread = threading.Thread(target=run, name="test-worker", daemon=True)
        thread.start()
        ready.wait(30)
        try:
            yield runtime
        finally:
            if "loop" in holder:
                holder["loop"].call_soon_threadsafe(holder["stop"].set)
            thread.join(30)
        if failures:
            raise failures[0]


def wait_for(
    condition: Callable[[], Any], *, timeout_s: float = 60.0, interval_s: float = 0.1,
    message: str = "condition",
) -> Any:  # fmt: skip
    """Poll until `condition()` is truthy; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval_s)
