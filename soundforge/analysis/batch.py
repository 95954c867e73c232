"""Many files at once: expand folders into audio files, analyse them over N processes and yield
each file's report or its error in the order given, as soon as it is ready. Pure: no database.

With N > 1 the calling process analyses too, beside N - 1 children forked from it: the caller
would otherwise only wait, and on N cores one process per core is all that runs at full speed.
The children are forked once the first-call costs every process would pay (numpy's lazy
`numpy.ma` import, threadpoolctl's library search) are paid, so they start with everything
loaded and nothing is imported or compiled again per file. Each process takes the next file
from a shared counter when it is free (one file at a time: a long file does not hold up a run
of short ones behind it), and a child sends each outcome back through its own pipe. A failing
file yields its error and the rest go on; a child that dies (killed, out of memory) costs the
file it held an error line, not the run.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from soundforge.analysis.engine import analyze, prepare_process
from soundforge.analysis.report import AnalysisReport
from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.errors import SoundForgeError

AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".mp4", ".webm", ".aif",
     ".aiff"}
)  # fmt: skip


@dataclass(frozen=True)
class FileOutcome:
    """One file's result: a report, or the one-line reason it has none."""

    path: Path
    report: AnalysisReport | None
    error: str | None = None


def expand(paths: Iterable[Path]) -> list[Path]:
    """Files as given; folders replaced by the audio files under them (by suffix, sorted)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = (child for child in path.rglob("*") if child.is_file())
            files.extend(sorted(child for child in found if child.suffix.lower() in AUDIO_SUFFIXES))
        else:
            files.append(path)
    return files


def analyze_one(path: Path, limits: AudioLimits = DEFAULT_LIMITS) -> FileOutcome:
    """`analyze(path)` with a user-caused error (unreadable, corrupt, missing, over the limits)
    as the outcome."""
    try:
        return FileOutcome(path, analyze(path, limits=limits))
    except SoundForgeError as error:
        return FileOutcome(path, None, str(error))


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)  # fmt: skip


def analyze_many(
    paths: list[Path],
    jobs: int,
    limits: AudioLimits = DEFAULT_LIMITS,
    on_done: Callable[[FileOutcome], None] | None = None,
) -> Iterator[FileOutcome]:
    """Outcomes in the order of `paths`; `jobs` processes (1: in this process alone)."""
    processes = min(jobs, len(paths))
    outcomes = (_in_parallel(paths, processes, limits) if processes > 1
                else (analyze_one(path, limits) for path in paths))  # fmt: skip
    for outcome in outcomes:
        if on_done is not None:
            on_done(outcome)
        yield outcome


class WorkerError(RuntimeError):
    """An analysis raised something other than a user-caused error in a child process (a bug);
    carries the child's traceback."""


class _Counter:
    """The index of the next file no process has taken, shared by the forked processes."""

    def __init__(self, context: Any) -> None:
        self._value = context.RawValue("q", 0)
        self._lock = context.Lock()

    def take(self, total: int) -> int | None:
        with self._lock:
            index = int(self._value.value)
            if index >= total:
                return None
            self._value.value = index + 1
            return index


def _child(paths: list[Path], limits: AudioLimits, counter: _Counter, sender: Connection) -> None:
    """A forked worker: take files until none are left, send (index, outcome or traceback).
    Ctrl-C is the parent's to handle (it ends the children): no traceback from each child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while (index := counter.take(len(paths))) is not None:
        try:
            message: tuple[int, FileOutcome | str] = (index, analyze_one(paths[index], limits))
        except Exception:  # a bug: the parent raises it with this traceback
            message = (index, traceback.format_exc())
        sender.send(message)
    sender.close()


def _in_parallel(paths: list[Path], processes: int, limits: AudioLimits) -> Iterator[FileOutcome]:
    prepare_process()  # paid here once, not again in every child
    context = multiprocessing.get_context("fork")
    counter = _Counter(context)
    children: dict[Connection, Any] = {}
    try:
        for _ in range(processes - 1):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(paths, limits, counter, sender),
                                    daemon=True, name="soundforge-analyze")  # fmt: skip
            child.start()
            sender.close()
            children[receiver] = child
        yield from _collect(paths, limits, counter, children)
    finally:
        for child in children.values():
            if child.is_alive():
                child.terminate()
            child.join()


def _collect(paths: list[Path], limits: AudioLimits, counter: _Counter,
             children: dict[Connection, Any]) -> Iterator[FileOutcome]:  # fmt: skip
    """Analyse files here while there are any, take in the children's outcomes between them,
    and yield every outcome as soon as all before it are out."""
    ready: dict[int, FileOutcome | str] = {}
    listening = dict(children)
    next_out = 0
    working = True
    while next_out < len(paths):
        if next_out in ready:
            yield _outcome(ready.pop(next_out), paths[next_out])
            next_out += 1
            continue
        if working and (index := counter.take(len(paths))) is not None:
            ready[index] = analyze_one(paths[index], limits)
            _receive(listening, ready, timeout=0.0)
            continue
        working = False
        if listening:
            _receive(listening, ready, timeout=None)
            continue
        # Every child has ended and this file never came back: its process died holding it.
        ready[next_out] = FileOutcome(paths[next_out], None,
                                      f"the analysis process {_ending(children)}")  # fmt: skip


def _receive(listening: dict[Connection, Any], ready: dict[int, FileOutcome | str],
             timeout: float | None) -> None:  # fmt: skip
    """Take every message that has arrived (waiting up to `timeout` for the first); a child
    whose pipe ends has finished, or died."""
    for receiver in wait(list(listening), timeout):
        assert isinstance(receiver, Connection)
        try:
            index, message = receiver.recv()
        except EOFError:
            listening.pop(receiver).join()
            continue
        ready[index] = message


def _ending(children: dict[Connection, Any]) -> str:
    """How the children that ended abnormally ended: "was killed by signal 9", "exited with
    code 1"."""
    codes = sorted({child.exitcode for child in children.values() if child.exitcode})
    signals = [f"signal {-code}" for code in codes if code < 0]
    if signals:
        return "was killed by " + " and ".join(signals)
    return "exited with code " + " and ".join(map(str, codes)) if codes else "ended early"


def _outcome(message: FileOutcome | str, path: Path) -> FileOutcome:
    if isinstance(message, str):
        raise WorkerError(f"analysing {path} failed in a worker process:\n{message}")
    return message
