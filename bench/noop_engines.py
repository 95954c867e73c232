"""The no-op engines bench/queue.py measures the queue with, in a module of their own: an engine
child process imports its factory's module, and this one imports no more than a production
child does (the engines and the sources), so a child starts here as it would in a worker."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from pathlib import Path
from typing import Any

from soundforge.engines import AnalysisOutcome, Engines, default_engines
from soundforge.file_store import FileStore
from soundforge.settings import Settings
from soundforge.sources import StoredAudio, TrackMetadata

STARTS_FILE = "SOUNDFORGE_BENCH_STARTS"
AUDIO_RELPATH = "SOUNDFORGE_BENCH_AUDIO"


def noop_engines(settings: Settings) -> Engines:
    """The engines factory the engine child processes build: the real ones with fetch,
    separate and analyze replaced by no-ops. A fetch appends its start time (perf_counter is
    CLOCK_MONOTONIC: comparable across processes) to the file the bench reads."""
    real = default_engines(settings)
    audio_relpath = os.environ[AUDIO_RELPATH]
    starts = open(os.environ[STARTS_FILE], "a", buffering=1)  # noqa: SIM115 - the child's life

    def fetch(metadata: TrackMetadata, storage: FileStore, track_id: uuid.UUID,
              progress: Any) -> StoredAudio:  # fmt: skip
        starts.write(f"{track_id} {time.perf_counter()}\n")
        return StoredAudio(relative_path=audio_relpath, file_size=2048, ext="wav",
                           duration_s=1.0)  # fmt: skip

    def separate(audio: Path, out_dir: Path, model: str, progress: Any,
                 abort: Any) -> dict[str, Path]:  # fmt: skip
        return {}

    def analyze(audio: Path, progress: Any) -> AnalysisOutcome:
        return AnalysisOutcome(columns={"tempo": 120.0}, features={})

    return dataclasses.replace(real, fetch=fetch, separate=separate, analyze=analyze)
