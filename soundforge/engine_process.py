"""Engine calls (expanding a source, download, separation, analysis and the ffmpeg they start)
run in child processes the worker owns, so that a cancel or a time limit holds whatever the
engine is doing.

Each child is a fresh interpreter (`python -m soundforge.engine_process`) in a process group
of its own, built once from the settings and an engines factory (`module:function`, default
`soundforge.engines:default_engines`) and kept warm: the demucs model and numba's compiled
code stay loaded across jobs. A task borrows one child per engine call (one child per worker
slot at most) and waits on it, relaying its progress; when the job is aborted (cancel, worker
shutdown) or runs past its time limit, the whole process group is killed with SIGKILL, so no
cooperation is needed and no ffmpeg outlives it. A fresh child takes the next job. A child is
recycled after `engine_recycle_after_jobs` calls or once its memory passes
`engine_max_rss_mb`. A child whose worker dies (even by SIGKILL) kills its own group.

Starting a child is the one real cost (an interpreter, the settings, the engines' imports: about
half a second of CPU for a download child here; the call itself is a ~0.1 ms round trip), so
it is kept off the jobs' path: a child worn out by its job count serves on while its successor
starts in the background and ends once that one is ready, and a job takes a child that is
ready over one still starting.

Why a fresh interpreter and not `fork`: a worker has threads (event loop, pool, other jobs),
and torch's OpenMP runtime hangs in a child forked after it ran (measured here); the engines
are therefore named by an importable factory rather than passed as objects.

The wire between a worker and its child is a socket pair carrying pickled tuples:
`(name, args)` requests one way; `("ready", None)`, `("progress", percent)`,
`("result", value)` and `("error", exception)` the other.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from soundforge.errors import (
    JobAbortedError,
    PermanentError,
    ProgressCallback,
    SoundForgeError,
    StageTimeLimitError,
    TransientError,
)
from soundforge.models import Stage
from soundforge.redact import install_log_redaction

if TYPE_CHECKING:
    from soundforge.engine_batching import SharedEngines
    from soundforge.engines import Engines
    from soundforge.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_FACTORY = "soundforge.engines:default_engines"
POLL_S = 0.1  # how often a waiting task checks for an abort or its time limit
PARENT_CHECK_S = 0.5  # how often a child checks that its worker is still there
CLOSE_WAIT_S = 2.0


@dataclass(frozen=True)
class EngineCall:
    """One engine call to run in a child: `name` is `expand`, `fetch`, `separate` or
    `analyze`, `args` its arguments before the progress callback (picklable)."""

    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ChildSetup:
    """What a child is built from; `parent_pid` is its worker (set by `spawn_child`)."""

    settings: Settings
    factory: str
    warm_stages: tuple[Stage, ...]
    parent_pid: int


class EngineDiedError(TransientError):
    """The child running an engine died on its own (crash, out-of-memory kill)."""


def load_factory(factory: str) -> Callable[[Settings], Engines]:
    module_name, _, attribute = factory.partition(":")
    function: Callable[[Settings], Engines] = getattr(
        importlib.import_module(module_name), attribute
    )
    return function


def spawn_child(
    module: str, setup: ChildSetup, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Connection]:
    """Start `python -m module FD` in a process group of its own (one kill ends all of it),
    send it `setup` (with this process as its parent) and return it with this end of its
    socket. The worker's systemd variables stay out of its environment."""
    parent_end, child_end = socket.socketpair()
    child_env = {k: v for k, v in os.environ.items()
                 if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}  # fmt: skip
    child_env["PYTHONPATH"] = os.pathsep.join(path for path in sys.path if path)
    child_env.update(env or {})
    with child_end:
        process = subprocess.Popen(
            [sys.executable, "-m", module, str(child_end.fileno())],
            pass_fds=[child_end.fileno()], env=child_env, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    conn = Connection(parent_end.detach())
    conn.send(ChildSetup(setup.settings, setup.factory, setup.warm_stages, os.getpid()))
    return process, conn


def died_error(process: subprocess.Popen[bytes], what: str) -> EngineDiedError:
    """The error for calls of a child that died on its own (reaped here)."""
    code = process.wait()
    how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    hint = " (out of memory?)" if code == -signal.SIGKILL else ""
    return EngineDiedError(f"{what} died ({how}){hint}")


def kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL a child's whole process group (ffmpeg and all) and reap the child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def close_child(process: subprocess.Popen[bytes], conn: Connection) -> None:
    """Ask a child to exit (end of its input), then kill what is left of its group."""
    conn.close()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(CLOSE_WAIT_S)
    kill_group(process)


class EngineChild:
    """One child process and the worker's end of its socket."""

    def __init__(self, setup: ChildSetup) -> None:
        self.process, self.conn = spawn_child("soundforge.engine_process", setup)
        self.ready = False
        self.calls = 0
        self.succeeding = False  # its successor is starting
        self.replaced = False  # its successor is ready: it ends when next idle

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll_ready(self) -> bool:
        """Whether the child has started (reading its "ready" if it is waiting), at once."""
        if not self.ready:
            try:
                if self.conn.poll(0):
                    kind, _ = self.conn.recv()  # before any request it sends nothing else
                    self.ready = kind == "ready"
            except (EOFError, OSError):
                return False
        return self.ready

    def wait_ready(self, stop: Callable[[], bool]) -> bool:
        """Block until the child has started (True) or died, or `stop()` (False). Only for a
        child no job can borrow yet: it reads the child's socket."""
        while not stop():
            if self.poll_ready():
                return True
            if self.process.poll() is not None:
                return False
            self.conn.poll(POLL_S)
        return False

    def call(
        self,
        call: EngineCall,
        progress: ProgressCallback,
        should_abort: Callable[[], bool],
        limit_s: float | None,
        limit_message: str,
    ) -> Any:
        """Run `call` in the child; raises what the engine raised, `JobAbortedError` when
        `should_abort()` turns true, `StageTimeLimitError` past `limit_s` (counted from the
        moment the child is ready). The caller kills the child on anything but an engine
        error (`EngineError` wraps those)."""
        self.conn.send((call.name, call.args))
        started: float | None = time.monotonic() if self.ready else None
        while True:
            if self.conn.poll(POLL_S):
                try:
                    kind, value = self.conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                if kind == "ready":
                    self.ready, started = True, time.monotonic()
                elif kind == "progress":
                    progress(value)
                elif kind == "result":
                    self.calls += 1
                    return value
                else:
                    self.calls += 1
                    raise EngineError(value)
            elif self.process.poll() is not None:
                raise self._died()
            if should_abort():
                raise JobAbortedError(f"{call.name} aborted")
            if limit_s is not None and started is not None and (
                time.monotonic() - started > limit_s
            ):
                raise StageTimeLimitError(limit_message)

    def _died(self) -> EngineDiedError:
        return died_error(self.process, "the engine process")

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm") as statm:
                pages = int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            return 0.0
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def kill(self) -> None:
        """SIGKILL the child's whole process group (ffmpeg and all) and reap the child."""
        kill_group(self.process)
        self.conn.close()

    def close(self) -> None:
        close_child(self.process, self.conn)


class EngineError(Exception):
    """Carries the exception an engine raised in the child (the child is still healthy)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class EngineProcesses:
    """The worker's warm children: `run` borrows one per engine call (starting one when none
    is idle), returns it afterwards, and kills it when the call was stopped. Separations go
    to the shared children of `soundforge.engine_batching` instead when more than one may run
    together (a GPU host; `SOUNDFORGE_SEPARATION_JOBS_TOGETHER`)."""

    def __init__(
        self,
        settings: Settings,
        factory: str = DEFAULT_FACTORY,
        *,
        warm_stages: Iterable[Stage] = (),
    ) -> None:
        self.setup = ChildSetup(settings, factory, tuple(warm_stages), os.getpid())
        self.max_calls = settings.engine_recycle_after_jobs
        self.max_rss_mb = settings.engine_max_rss_mb
        self.keep_warm = 0
        from soundforge.engine_batching import jobs_together

        self.together = jobs_together(settings)
        self._shared: SharedEngines | None = None
        self._idle: list[EngineChild] = []
        self._busy: set[EngineChild] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self, count: int, warm_stages: Iterable[Stage] | None = None) -> None:
        """Start `count` children now (warming up `warm_stages`) and keep that many ready."""
        with self._lock:
            if warm_stages is not None:
                self.setup = ChildSetup(self.setup.settings, self.setup.factory,
                                    tuple(warm_stages), os.getpid())  # fmt: skip
            if self.together > 1 and Stage.SEPARATE in self.setup.warm_stages:
                # The model lives in the shared children only (one per GPU), warm from now.
                self._shared_engines().start()
                others = tuple(s for s in self.setup.warm_stages if s is not Stage.SEPARATE)
                self.setup = ChildSetup(self.setup.settings, self.setup.factory, others,
                                    os.getpid())  # fmt: skip
                count = count if others else 0
            self.keep_warm = count
            while len(self._idle) + len(self._busy) < count:
                self._idle.append(EngineChild(self.setup))

    def run(
        self,
        call: EngineCall,
        progress: ProgressCallback,
        should_abort: Callable[[], bool],
        *,
        limit_s: float | None = None,
        limit_message: str = "time limit exceeded",
    ) -> Any:
        if call.name == "separate" and self.together > 1:
            with self._lock:
                shared = self._shared_engines()
            try:
                return shared.call(call, progress, should_abort, limit_s, limit_message)
            except EngineError as error:
                raise error.error from None
        child = self._checkout()
        try:
            result = child.call(call, progress, should_abort, limit_s, limit_message)
        except EngineError as error:
            self._checkin(child)
            raise error.error from None
        except BaseException:
            log.info("stopping engine process %d (%s)", child.pid, call.name)
            self._kill(child)
            raise
        self._checkin(child)
        return result

    def pids(self, *, busy_only: bool = False) -> list[int]:
        """The children alive now, or only those running an engine call (tests, status)."""
        with self._lock:
            children = list(self._busy) if busy_only else [*self._idle, *self._busy]
            shared = self._shared.pids(busy_only=busy_only) if self._shared else []
            return [child.pid for child in children] + shared

    def _shared_engines(self) -> SharedEngines:
        """The shared separation children (call with `_lock` held)."""
        from soundforge.engine_batching import SharedEngines, gpu_count

        if self._closed:
            raise TransientError("the worker is stopping; engine processes are closed")
        if self._shared is None:
            setup = ChildSetup(self.setup.settings, self.setup.factory, (Stage.SEPARATE,),
                           os.getpid())  # fmt: skip
            self._shared = SharedEngines(setup, gpu_count())
        return self._shared

    def _checkout(self) -> EngineChild:
        """The most recently used ready child (its caches are warmest) that is not worn out,
        else a worn one, else one still starting, else a new one."""
        with self._lock:
            if self._closed:
                raise TransientError("the worker is stopping; engine processes are closed")
            dead = [child for child in self._idle if child.process.poll() is not None]
            idle = [child for child in self._idle if child not in dead]
            ready = [child for child in idle if child.poll_ready()]
            fresh = [child for child in ready if not child.succeeding] or ready
            child = fresh[-1] if fresh else idle[-1] if idle else EngineChild(self.setup)
            self._idle = [other for other in idle if other is not child]
            self._busy.add(child)
        for gone in dead:
            gone.close()
        return child

    def _checkin(self, child: EngineChild) -> None:
        """Back to the idle children; or, worn out: past its memory limit, retired now; past
        its job count, it serves on while its successor starts, and ends once that is ready
        (one process more for a few seconds, and no job waits for a start)."""
        over_memory = self.max_rss_mb and child.rss_mb() > self.max_rss_mb
        with self._lock:
            self._busy.discard(child)
            keep = not (self._closed or over_memory or child.replaced)
            worn = keep and bool(self.max_calls) and child.calls >= self.max_calls \
                and not child.succeeding  # fmt: skip
            if keep:
                self._idle.append(child)
                child.succeeding = child.succeeding or worn
        if not keep:
            log.info("recycling engine process %d after %d call(s)", child.pid, child.calls)
            self._in_background(self._retire, child)
        elif worn:
            log.info("engine process %d did %d call(s): starting its successor", child.pid,
                     child.calls)  # fmt: skip
            self._in_background(self._succeed, child)

    def _in_background(self, work: Callable[[EngineChild], None], child: EngineChild) -> None:
        threading.Thread(target=work, args=(child,), daemon=True,
                         name=f"engine {child.pid} recycle").start()  # fmt: skip

    def _retire(self, child: EngineChild) -> None:
        """End a worn child (gracefully: it may hold a model's memory), then replace it."""
        child.close()
        self._replenish()

    def _succeed(self, worn: EngineChild) -> None:
        """Start `worn`'s successor; once it is ready it joins the idle children and `worn`
        ends (now if idle, else when its job ends)."""
        successor = EngineChild(self.setup)
        ready = successor.wait_ready(lambda: self._closed)
        with self._lock:
            present = worn in self._idle or worn in self._busy
            surplus = not present and len(self._idle) + len(self._busy) >= self.keep_warm
            join = ready and not self._closed and not surplus
            worn.succeeding = False  # another try at its next check-in, if this one failed
            worn.replaced = join
            idle_now = join and worn in self._idle
            if join:
                self._idle.append(successor)
            if idle_now:
                self._idle.remove(worn)
        if not join:
            successor.close()
        if idle_now:  # else it is busy, and ends at its check-in
            log.info("recycling engine process %d after %d call(s)", worn.pid, worn.calls)
            worn.close()

    def _kill(self, child: EngineChild) -> None:
        with self._lock:
            self._busy.discard(child)
        child.kill()
        self._replenish()

    def _replenish(self) -> None:
        with self._lock:  # a fresh one warms up now, before the next job asks
            if not self._closed and len(self._idle) + len(self._busy) < self.keep_warm:
                self._idle.append(EngineChild(self.setup))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            shared, self._shared = self._shared, None
        for child in idle:
            child.close()
        if shared is not None:
            shared.close()


# -- the child's side ------------------------------------------------------------------------


def _never() -> bool:
    return False


def _call(engines: Engines, name: str, args: tuple[Any, ...], progress: ProgressCallback) -> Any:
    engine: Callable[..., Any] | None = getattr(engines, name, None)
    if name not in ("expand", "fetch", "separate", "analyze") or engine is None:
        raise PermanentError(f"unknown engine call {name!r}")
    if name == "expand":  # no progress to report: a source is expanded in one go
        return engine(*args)
    if name == "separate":  # the worker stops it by killing this process: no abort check
        return engine(*args, progress, _never)
    return engine(*args, progress)


def portable_error(error: BaseException) -> BaseException:
    """`error` if it survives pickling, else a SoundForge error with the same text."""
    try:
        restored = pickle.loads(pickle.dumps(error))
        if isinstance(restored, BaseException):
            return restored
    except Exception:
        pass
    text = str(error) if isinstance(error, SoundForgeError) else f"{type(error).__name__}: {error}"
    return PermanentError(text) if isinstance(error, PermanentError) else TransientError(text)


def watch_parent(parent_pid: int) -> None:
    """Kill this process group when the worker goes away (its socket end may stay open in
    nothing else, but an engine busy for an hour would not notice)."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent_pid:
                os.killpg(os.getpgid(0), signal.SIGKILL)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


class _ProgressSender:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.last = -1

    def __call__(self, percent: float) -> None:
        whole = int(percent)
        if whole > self.last:  # the worker throttles the row writes; this spares the wire
            self.last = whole
            self.conn.send(("progress", float(percent)))


def child_main(fd: int) -> int:
    conn = Connection(fd)
    try:
        return _serve(conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        return 0  # the worker closed its end (it stopped, or closed a child still starting)


def start_engines(conn: Connection, tag: str) -> tuple[ChildSetup, Engines]:
    """A child's start: read its setup, watch its worker, log as it does (masked), build the
    engines and warm them up."""
    setup: ChildSetup = conn.recv()
    watch_parent(setup.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides; a kill ends this
    logging.basicConfig(level=setup.settings.log_level.upper(),
                        format=f"%(asctime)s %(levelname)s %(name)s[{tag}]: %(message)s")
    install_log_redaction()  # the engines log the URLs they fetch: masked, as in the worker
    engines = load_factory(setup.factory)(setup.settings)
    engines.warm_up(setup.warm_stages)
    return setup, engines


def _serve(conn: Connection) -> int:
    _, engines = start_engines(conn, "engine")
    conn.send(("ready", None))
    while True:
        try:
            name, args = conn.recv()
        except (EOFError, OSError):
            return 0
        try:
            result = _call(engines, name, args, _ProgressSender(conn))
        except Exception as error:
            log.debug("engine %s failed", name, exc_info=True)
            conn.send(("error", portable_error(error)))
        else:
            conn.send(("result", result))


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
