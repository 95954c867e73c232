"""Row models for the six tables, one dataclass each, built from dict rows (`Model.from_row`).

Field names and types follow the schema (`schema/001_music_tables.sql` plus the job
bookkeeping columns of 002). Stage names tie each job table to its queue and task.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Self

from soundforge.status import Status

if TYPE_CHECKING:
    from soundforge.settings import Settings


class StemType(StrEnum):
    VOCALS = "vocals"
    DRUMS = "drums"
    BASS = "bass"
    OTHER = "other"
    GUITAR = "guitar"  # htdemucs_6s
    PIANO = "piano"  # htdemucs_6s


class Stage(StrEnum):
    """A pipeline stage and every fact about it: its job table, queue, task name, and the
    settings that bound its attempts (`SOUNDFORGE_<STAGE>_ATTEMPTS`) and the run time of one
    attempt (`SOUNDFORGE_<STAGE>_TIME_LIMIT_S`)."""

    DOWNLOAD = "download"
    SEPARATE = "separate"
    ANALYZE = "analyze"

    @property
    def table(self) -> str:
        return _STAGE_TABLES[self]

    @property
    def queue(self) -> str:
        return _STAGE_QUEUES[self]

    @property
    def task_name(self) -> str:
        return f"soundforge.{self.value}"

    @property
    def active_status(self) -> Status:
        return Status.DOWNLOADING if self is Stage.DOWNLOAD else Status.PROCESSING

    def attempts(self, settings: Settings) -> int:
        return int(getattr(settings, f"{self.value}_attempts"))

    def time_limit_s(self, settings: Settings) -> float:
        return float(getattr(settings, f"{self.value}_time_limit_s"))

    @property
    def time_limit_variable(self) -> str:
        return f"SOUNDFORGE_{self.value.upper()}_TIME_LIMIT_S"

    @classmethod
    def for_task(cls, task_name: str) -> Stage | None:
        """The stage whose attempts bound a task (`soundforge.import` counts as a download:
        it runs on the download queue); None for the maintenance tasks."""
        return _TASK_STAGES.get(task_name)

    @classmethod
    def for_queue(cls, queue: str) -> Stage | None:
        return next((stage for stage in cls if stage.queue == queue), None)


_STAGE_TABLES = {
    Stage.DOWNLOAD: "download_jobs",
    Stage.SEPARATE: "processing_jobs",
    Stage.ANALYZE: "analysis_jobs",
}
_STAGE_QUEUES = {
    Stage.DOWNLOAD: "download",
    Stage.SEPARATE: "processing",
    Stage.ANALYZE: "analysis",
}
IMPORT_TASK = "soundforge.import"
_TASK_STAGES = {stage.task_name: stage for stage in Stage} | {IMPORT_TASK: Stage.DOWNLOAD}


class _Row:
    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Self:
        names = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in row.items() if key in names})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: uuids and datetimes as strings."""
        return {
            key: json_value(value)
            for key, value in dataclasses.asdict(self).items()  # type: ignore[call-overload]
        }


def json_value(value: Any) -> Any:
    """A uuid or (UTC, naive) datetime as the string a JSON consumer expects."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat() + "Z"
    return value


@dataclass(frozen=True)
class Track(_Row):
    id: uuid.UUID
    title: str
    inserted_at: datetime
    updated_at: datetime
    spotify_id: str | None = None
    spotify_url: str | None = None
    artist: str | None = None
    album: str | None = None
    album_art_url: str | None = None
    duration: int | None = None


@dataclass(frozen=True)
class _JobRow(_Row):
    id: uuid.UUID
    track_id: uuid.UUID
    status: Status
    progress: int | None
    error: str | None
    lock_version: int
    procrastinate_job_id: int | None
    attempts: int
    inserted_at: datetime
    updated_at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))


@dataclass(frozen=True)
class DownloadJob(_JobRow):
    output_path: str | None = None
    file_size: int | None = None
    source: str | None = None


@dataclass(frozen=True)
class ProcessingJob(_JobRow):
    model: str | None = "htdemucs"
    output_path: str | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class AnalysisJob(_JobRow):
    results: dict[str, Any] | None = None


Job = DownloadJob | ProcessingJob | AnalysisJob

JOB_MODELS: dict[Stage, type[DownloadJob] | type[ProcessingJob] | type[AnalysisJob]] = {
    Stage.DOWNLOAD: DownloadJob,
    Stage.SEPARATE: ProcessingJob,
    Stage.ANALYZE: AnalysisJob,
}


@dataclass(frozen=True)
class Stem(_Row):
    id: uuid.UUID
    processing_job_id: uuid.UUID
    track_id: uuid.UUID
    stem_type: str
    inserted_at: datetime
    updated_at: datetime
    file_path: str | None = None
    file_size: int | None = None


ANALYSIS_RESULT_COLUMNS = ("tempo", "key", "energy", "spectral_centroid", "spectral_rolloff",
                           "zero_crossing_rate")  # fmt: skip
"""The scalar columns of `analysis_results` (everything else goes into `features`)."""


@dataclass(frozen=True)
class AnalysisResult(_Row):
    id: uuid.UUID
    track_id: uuid.UUID
    analysis_job_id: uuid.UUID
    inserted_at: datetime
    updated_at: datetime
    tempo: float | None = None
    key: str | None = None
    energy: float | None = None
    spectral_centroid: float | None = None
    spectral_rolloff: float | None = None
    zero_crossing_rate: float | None = None
    features: dict[str, Any] | None = None
