"""The seam between the pipeline and the engines: what a stage task calls to expand a source,
fetch audio, separate stems and analyze, built once per process from the settings.

The heavy engines are imported on first use, so the core install (queue, CLI) needs neither
torch nor librosa. Tests and benchmarks may build an `Engines` with other callables (a fault
injected into one stage, a no-op to measure the queue alone).
"""

from __future__ import annotations

import functools
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from soundforge.errors import AbortCheck, ProgressCallback
from soundforge.models import Stage

if TYPE_CHECKING:
    from soundforge.file_store import FileStore
    from soundforge.separation import Separator
    from soundforge.separation.weights import FileProgress
    from soundforge.settings import Settings
    from soundforge.sources import StoredAudio, TrackMetadata

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class AnalysisOutcome:
    """What the analyze stage stores: the six `analysis_results` columns and every feature."""

    columns: dict[str, Any]
    features: dict[str, Any]


ExpandFn = Callable[[str], "list[TrackMetadata]"]
FetchFn = Callable[["TrackMetadata", "FileStore", uuid.UUID, ProgressCallback], "StoredAudio"]
SeparateFn = Callable[[Path, Path, str, ProgressCallback, AbortCheck], dict[str, Path]]
AnalyzeFn = Callable[[Path, ProgressCallback], AnalysisOutcome]


@dataclass(frozen=True)
class SeparationJob:
    """One separation of several run together (`Engines.separate_job`)."""

    audio: Path
    out_dir: Path
    model: str
    progress: ProgressCallback
    should_abort: AbortCheck


SeparateJoinedFn = Callable[[SeparationJob], dict[str, Path]]


@dataclass(frozen=True)
class Engines:
    expand: ExpandFn
    fetch: FetchFn
    separate: SeparateFn
    analyze: AnalyzeFn
    warm_up: Callable[[Iterable[Stage]], None] = field(default=lambda stages: None)
    together: SeparateJoinedFn | None = None
    """One separation in the batch stream shared by every thread calling this at once (a job
    arriving while others run joins them), with its own progress and abort; None runs each
    through `separate`, one at a time."""
    _alone: threading.Lock = field(default_factory=threading.Lock, init=False, compare=False,
                                   repr=False)

    def separate_job(self, job: SeparationJob) -> dict[str, Path]:
        """`job`'s stems, beside the other jobs of other threads (see `together`)."""
        if self.together is not None:
            return self.together(job)
        with self._alone:
            return self.separate(job.audio, job.out_dir, job.model, job.progress,
                                 job.should_abort)  # fmt: skip


def with_fetched_weights(
    settings: Settings, model: str, load: Callable[[], T],
    fetch: Callable[[str], object] | None = None,
) -> T:  # fmt: skip
    """`load()`; when the model's weights are missing and SOUNDFORGE_FETCH_MODELS allows it,
    fetch them from the weight host (once; `fetch` may show progress) and load again."""
    from soundforge.separation import ModelNotFoundError

    try:
        return load()
    except ModelNotFoundError:
        if not settings.fetch_models:
            raise
    log.info("weights for %s are missing; fetching them from %s", model, settings.models_url)
    (fetch or (lambda name: fetch_weights(settings, name)))(model)
    return load()


def fetch_weights(
    settings: Settings, model: str, progress: FileProgress | None = None
) -> list[Path]:
    """Fetch what `model` is missing from SOUNDFORGE_MODELS_URL into the loader's folder,
    through the destination policy of SOUNDFORGE_ALLOWED_NETWORKS."""
    from soundforge.separation.weights import fetch_model
    from soundforge.source_policy import DestinationPolicy

    return fetch_model(model, repo=settings.demucs_repo, base_url=settings.models_url,
                       policy=DestinationPolicy.allowing(settings.allowed_networks),
                       progress=progress)  # fmt: skip


def default_engines(settings: Settings) -> Engines:
    from soundforge.audio_limits import AudioLimits

    limits = AudioLimits.from_settings(settings)
    separators: dict[str, Separator] = {}
    separators_lock = threading.Lock()

    @functools.cache
    def source_config() -> Any:
        """Built once (on first use: the core install has no `sources` extra)."""
        from soundforge.sources import SourceConfig

        return SourceConfig.from_settings(settings)

    def expand(source_text: str) -> list[TrackMetadata]:
        from soundforge.sources import expand_source, parse_source

        return expand_source(parse_source(source_text), source_config())

    def fetch(
        metadata: TrackMetadata, storage: FileStore, track_id: uuid.UUID, progress: ProgressCallback
    ) -> StoredAudio:
        from soundforge.sources import fetch_audio

        return fetch_audio(metadata, storage, track_id, source_config(), progress)

    def separator(model: str) -> Separator:
        from soundforge.separation import Separator

        def build() -> Separator:
            return Separator(
                model,
                repo=settings.demucs_repo,
                device=settings.device,
                precision=settings.precision,
                shifts=settings.shifts,
                overlap=settings.overlap,
                stem_format=settings.stem_format,
                torch_threads=settings.torch_threads,
                batch_size=settings.separation_batch,
                songs_together=settings.separation_jobs_together,
                limits=limits,
            )

        with separators_lock:
            if model not in separators:
                separators[model] = with_fetched_weights(settings, model, build)
            return separators[model]

    def separate(
        audio: Path, out_dir: Path, model: str, progress: ProgressCallback, abort: AbortCheck
    ) -> dict[str, Path]:
        return separator(model).separate(audio, out_dir, progress=progress, should_abort=abort)

    def together(job: SeparationJob) -> dict[str, Path]:
        from soundforge.separation.separator import SeparationRequest

        return separator(job.model).separate_joined(  # one stream per model
            SeparationRequest(job.audio, job.out_dir, job.progress, job.should_abort))

    def analyze(audio: Path, progress: ProgressCallback) -> AnalysisOutcome:
        from soundforge.analysis import analyze as analyze_file

        report = analyze_file(audio, progress=progress, limits=limits)
        return AnalysisOutcome(columns=report.result_columns(), features=report.to_dict())

    def warm_up(stages: Iterable[Stage]) -> None:
        """Pay start-up costs (imports, filter banks, the model) at worker start, not in a job."""
        wanted = set(stages)
        if Stage.ANALYZE in wanted:
            try:
                from soundforge.analysis import warm_up as warm_analysis

                warm_analysis()
            except ImportError as error:
                log.warning("analysis engine unavailable (%s); install soundforge[analysis]", error)
        if Stage.SEPARATE in wanted:
            try:
                separator(settings.demucs_model)
            except Exception as error:
                log.warning("separation model %s not loaded at start: %s",
                            settings.demucs_model, error)  # fmt: skip

    return Engines(expand=expand, fetch=fetch, separate=separate, analyze=analyze,
                   warm_up=warm_up, together=together)  # fmt: skip
