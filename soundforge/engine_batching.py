"""Separations that share one engine process and its batches: on a GPU host, one child per GPU
keeps the model loaded and runs up to `jobs_together` separations at once, their segments in the
same model calls (continuous batching, `Separator.separate_joined`).

A worker's separation slots all send their calls to the same child over one socket, each call
tagged with an id: `("call", id, name, args)` and `("cancel", id)` one way; `("ready", None,
None)`, `("started", id, None)`, `("progress", id, percent)`, `("result", id, value)` and
`("error", id, exception)` the other. The child starts each call on a thread of its own as it
arrives (while fewer than `jobs_together` run; a further call waits for one of them to end):
the call decodes its song and joins the batch stream of the songs under way at its next model
batch, and leaves it when its own stems are done, whatever the others still have to run.

Cancel and time limit stay per job: the slot sends `cancel` and returns at once; the child drops
that song at its next segment (its temporaries removed) and the others go on. A time limit counts
from the moment the child starts the call. Killing the child would stop every job in it,
so it is killed only when a stopped call it runs has not left it after `DROP_GRACE_S` (the
engine is stuck and would hold the GPU forever), or when it dies on its own; then every call in
it fails with `EngineDiedError`, retried like any transient error. A call waiting for the
child (`jobs_together` others still running) is limited by the same time limit, counted from
when it was sent.
Out of memory halves the batch inside the separator and retries (see
`soundforge.separation.streaming`), whatever songs share it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundforge.engine_process import (
    POLL_S,
    ChildSetup,
    EngineDiedError,
    EngineError,
    close_child,
    died_error,
    kill_group,
    portable_error,
    spawn_child,
    start_engines,
)
from soundforge.errors import (
    JobAbortedError,
    ProgressCallback,
    StageTimeLimitError,
    TransientError,
)

if TYPE_CHECKING:
    from soundforge.engine_process import EngineCall
    from soundforge.engines import Engines
    from soundforge.settings import Settings

log = logging.getLogger(__name__)

DROP_GRACE_S = 30.0  # how long a running call stopped by the worker may take to leave its batch
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


def gpu_count() -> int:
    """GPUs the NVIDIA driver shows (without importing torch into the worker)."""
    try:
        return sum(1 for _ in NVIDIA_GPUS.iterdir())
    except OSError:
        return 0


def jobs_together(settings: Settings) -> int:
    """How many separations one engine process runs together: the setting, or (0) 4 when the
    device is (or `auto` finds) a CUDA GPU, else 1 (each separation in a child of its own)."""
    if settings.separation_jobs_together:
        return settings.separation_jobs_together
    if settings.device == "cuda" or (settings.device == "auto" and gpu_count() > 0):
        return 4
    return 1


class SharedEngineChild:
    """The worker's end of one shared child: `call` may run on several slots' threads at once."""

    def __init__(self, setup: ChildSetup, env: dict[str, str] | None = None,
                 drop_grace_s: float = DROP_GRACE_S) -> None:  # fmt: skip
        self.process, self.conn = spawn_child("soundforge.engine_batching", setup, env)
        self.drop_grace_s = drop_grace_s
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._calls: dict[int, queue.Queue[tuple[str, Any]]] = {}
        self._started: set[int] = set()  # calls the child is running (in its batch)
        self._dropping: set[int] = set()  # calls stopped here that the child has not ended
        self._ids = itertools.count(1)
        self.dead: EngineDiedError | None = None
        self.busy = 0
        self._reader = threading.Thread(target=self._read, name="shared-engine", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self.conn.send(message)

    def _read(self) -> None:
        while True:
            try:
                kind, call_id, value = self.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                waiting = self._calls.get(call_id)
                watch = self._track(kind, call_id)
            if watch:
                self._watch_drop(call_id)
            if waiting is not None:
                waiting.put((kind, value))
        dead = died_error(self.process, "the shared engine process")
        with self._lock:
            self.dead = dead
            for waiting in self._calls.values():
                waiting.put(("died", None))

    def _track(self, kind: str, call_id: int) -> bool:
        """Follow which calls the child runs (call with `_lock` held); True when a call
        stopped here has just started there (its drop is to be watched from now)."""
        if kind == "started":
            self._started.add(call_id)
            return call_id in self._dropping
        if kind in ("result", "error"):
            self._started.discard(call_id)
            self._dropping.discard(call_id)
        return False

    def _stop(self, call_id: int) -> None:
        """Tell the child to drop a call stopped here (cancel, time limit); watch that it does
        once it runs the call."""
        with self._lock:
            self._dropping.add(call_id)
            running = call_id in self._started
        with contextlib.suppress(OSError):
            self._send(("cancel", call_id, None))
        if running:
            self._watch_drop(call_id)

    def _watch_drop(self, call_id: int) -> None:
        """Kill the child when the running call `call_id`, stopped here, is still in it after
        `drop_grace_s`: an engine that no longer reaches its abort checks is stuck, and only a
        kill frees the GPU (its other calls fail as `EngineDiedError` and are retried)."""

        def check() -> None:
            with self._lock:
                stuck = call_id in self._dropping and self.dead is None
            if stuck:
                log.warning("shared engine process %d did not drop a stopped call within "
                            "%g s: killing it", self.pid, self.drop_grace_s)  # fmt: skip
                kill_group(self.process)

        timer = threading.Timer(self.drop_grace_s, check)
        timer.daemon = True
        timer.start()

    def call(
        self,
        call: EngineCall,
        progress: ProgressCallback,
        should_abort: Callable[[], bool],
        limit_s: float | None,
        limit_message: str,
    ) -> Any:
        """Run `call` in the shared child beside the others; raises what the engine raised
        (`EngineError`), `JobAbortedError` or `StageTimeLimitError` (having told the child to
        drop the call), `EngineDiedError` when the child died."""
        inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        with self._lock:
            if self.dead is not None:
                raise self.dead
            call_id = next(self._ids)
            self._calls[call_id] = inbox
            self.busy += 1
        started = time.monotonic()  # until the child starts the call: the wait is limited too
        try:
            self._send(("call", call_id, call.name, call.args))
            while True:
                try:
                    kind, value = inbox.get(timeout=POLL_S)
                except queue.Empty:
                    kind, value = "", None
                if kind == "started":
                    started = time.monotonic()
                elif kind == "progress":
                    progress(value)
                elif kind == "result":
                    return value
                elif kind == "error":
                    raise EngineError(value)
                elif kind == "died":
                    assert self.dead is not None
                    raise self.dead
                if should_abort():
                    raise JobAbortedError(f"{call.name} aborted")
                if limit_s is not None and time.monotonic() - started > limit_s:
                    raise StageTimeLimitError(limit_message)
        except (JobAbortedError, StageTimeLimitError):
            self._stop(call_id)
            raise
        finally:
            with self._lock:
                del self._calls[call_id]
                self.busy -= 1

    def close(self) -> None:
        close_child(self.process, self.conn)


class SharedEngines:
    """One `SharedEngineChild` per GPU (each seeing only its own, `CUDA_VISIBLE_DEVICES`), or one
    without a GPU (tests); a call goes to the least busy child, a dead child is replaced."""

    def __init__(self, setup: ChildSetup, gpus: int) -> None:
        self.setup = setup
        self.envs = [{"CUDA_VISIBLE_DEVICES": str(index)} for index in range(gpus)] or [{}]
        self._children: list[SharedEngineChild | None] = [None] * len(self.envs)
        self._lock = threading.Lock()
        self._closed = False

    def call(self, call: EngineCall, progress: ProgressCallback,
             should_abort: Callable[[], bool], limit_s: float | None, limit_message: str) -> Any:
        return self._pick().call(call, progress, should_abort, limit_s, limit_message)

    def _pick(self) -> SharedEngineChild:
        with self._lock:
            if self._closed:
                raise TransientError("the worker is stopping; engine processes are closed")
            self._replace_dead()
            children = [child for child in self._children if child is not None]
            return min(children, key=lambda child: child.busy)

    def start(self) -> None:
        """Start every child now (each loads the model while the worker registers)."""
        with self._lock:
            self._replace_dead()

    def _replace_dead(self) -> None:
        for index, child in enumerate(self._children):
            if child is None or child.dead is not None:
                if child is not None:
                    child.close()
                self._children[index] = SharedEngineChild(self.setup, self.envs[index])

    def pids(self, *, busy_only: bool = False) -> list[int]:
        with self._lock:
            return [child.pid for child in self._children
                    if child is not None and (child.busy or not busy_only)]  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            children, self._children = self._children, [None] * len(self.envs)
        for child in children:
            if child is not None:
                child.close()


# -- the child's side ------------------------------------------------------------------------


class _Calls:
    """The child's inbox: calls waiting to start, and the ids cancelled so far. When the
    worker's end closes, every call counts as cancelled (its separation stops at its next
    segment and removes its temporaries)."""

    def __init__(self) -> None:
        self.waiting: queue.Queue[tuple[int, str, tuple[Any, ...]] | None] = queue.Queue()
        self.cancelled: set[int] = set()
        self.closed = False

    def receive(self, conn: Connection) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                self.closed = True
                self.waiting.put(None)
                return
            if message[0] == "call":
                _, call_id, name, args = message
                self.waiting.put((call_id, name, args))
            elif message[0] == "cancel":
                self.cancelled.add(message[1])

    def stopped(self, call_id: int) -> bool:
        return self.closed or call_id in self.cancelled


def _run_call(engines: Engines, send: Callable[[tuple[Any, ...]], None], calls: _Calls,
              call_id: int, args: tuple[Any, ...]) -> None:  # fmt: skip
    """One separation on its own thread, joining the stream of those under way."""
    from soundforge.engines import SeparationJob

    last = [-1]

    def progress(percent: float) -> None:
        if int(percent) > last[0]:
            last[0] = int(percent)
            send(("progress", call_id, float(percent)))

    audio, out_dir, model = args
    job = SeparationJob(audio, out_dir, model, progress, lambda: calls.stopped(call_id))
    try:
        stems = engines.separate_job(job)
    except Exception as error:  # this job's (an abort, its audio) or the model's
        log.debug("separation %d failed", call_id, exc_info=True)
        with contextlib.suppress(OSError):
            send(("error", call_id, portable_error(error)))
        return
    with contextlib.suppress(OSError):
        send(("result", call_id, stems))


def shared_child_main(fd: int) -> int:
    conn = Connection(fd)
    setup, engines = start_engines(conn, "gpu engine")
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    send(("ready", None, None))
    calls = _Calls()
    threading.Thread(target=calls.receive, args=(conn,), name="calls", daemon=True).start()
    slots = threading.Semaphore(jobs_together(setup.settings))
    running: list[threading.Thread] = []

    def run(call_id: int, args: tuple[Any, ...]) -> None:
        try:
            _run_call(engines, send, calls, call_id, args)
        finally:
            slots.release()

    while (item := calls.waiting.get()) is not None:
        call_id, name, args = item
        if name != "separate":
            send(("error", call_id, portable_error(ValueError(f"{name} is not a batched engine"))))
            continue
        slots.acquire()  # at most `jobs_together` calls under way; the next waits for a slot
        if calls.stopped(call_id):  # stopped while it waited: never started
            slots.release()
            with contextlib.suppress(OSError):
                send(("error", call_id, JobAbortedError("separation stopped before it started")))
            continue
        with contextlib.suppress(OSError):
            send(("started", call_id, None))
        thread = threading.Thread(target=run, args=(call_id, args), name=f"call-{call_id}",
                                  daemon=True)  # fmt: skip
        thread.start()
        running = [*[t for t in running if t.is_alive()], thread]
    for thread in running:  # the worker has gone: each call stops at its next segment
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(shared_child_main(int(sys.argv[1])))
