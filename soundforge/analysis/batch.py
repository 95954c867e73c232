"""Many files at once: expand folders into audio files, analyse them over N processes and yield
each file's report or its error in the order given, as soon as it is ready. Pure: no database.

Worker processes are forked from the caller, so they start with its imports already loaded
(nothing is imported or compiled again per file); a failing file yields its error and the rest
go on.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from soundforge.analysis.engine import analyze
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
    """Outcomes in the order of `paths`; `jobs` processes (1: in this process)."""
    if jobs <= 1 or len(paths) <= 1:
        for path in paths:
            outcome = analyze_one(path, limits)
            if on_done is not None:
                on_done(outcome)
            yield outcome
        return
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(jobs, len(paths)), mp_context=context) as pool:
        for outcome in pool.map(partial(analyze_one, limits=limits), paths):
            if on_done is not None:
                on_done(outcome)
            yield outcome
