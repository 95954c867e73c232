"""The pipeline tasks: import (source -> tracks + download jobs), download, separate, analyze.
JSON arguments are what `procrastinate defer` takes; a stage given only `track_id` creates
its own row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procrastinate import JobContext

from soundforge import music, workflow
from soundforge.engines import AnalysisOutcome
from soundforge.models import DownloadJob, Job, Stage
from soundforge.runtime import Runtime, get_runtime
from soundforge.stage_runner import Connection, ProgressWriter, StageRetryStrategy, run_stage
from tasks.blueprint import blueprint


def _options(stems: bool, analysis: bool, model: str) -> workflow.PipelineOptions:
    return workflow.PipelineOptions(stems=stems, analysis=analysis, model=model)


@blueprint.task(
    name="soundforge.import", queue="download", pass_context=True,
    retry=StageRetryStrategy(Stage.DOWNLOAD),
)  # fmt: skip
def import_source(
    context: JobContext,
    source: str,
    stems: bool = True,
    analysis: bool = True,
    model: str = "htdemucs",
    force: bool = False,
) -> list[str]:
    """Expand a source into tracks and give each a queued download; returns the track ids."""
    runtime = get_runtime()
    tracks = runtime.engines.expand(source)
    with runtime.pool.connection() as conn:
        imported = [
            workflow.import_track(conn, metadata, _options(stems, analysis, model), force=force)
            for metadata in tracks
        ]
    return [str(item.track.id) for item in imported]


@blueprint.task(
    name="soundforge.download", queue="download", pass_context=True,
    retry=StageRetryStrategy(Stage.DOWNLOAD),
)  # fmt: skip
def download(
    context: JobContext,
    track_id: str,
    job_id: str | None = None,
    stems: bool = True,
    analysis: bool = True,
    model: str = "htdemucs",
    force: bool = False,
) -> None:
    options = _options(stems, analysis, model)

    def work(
        runtime: Runtime, conn: Connection, started: workflow.StartedStage,
        progress: ProgressWriter,
    ) -> Any:  # fmt: skip
        job = started.job
        assert isinstance(job, DownloadJob)
        metadata = workflow.download_metadata(conn, music.require_track(conn, job.track_id), job)
        return runtime.engines.fetch(metadata, runtime.storage, job.track_id, progress)

    def finish(runtime: Runtime, conn: Connection, job: Job, stored: Any) -> object:
        return workflow.complete_download(conn, job, stored, options)

    run_stage(
        context, Stage.DOWNLOAD, track_id=track_id, job_id=job_id, force=force,
        work=work, finish=finish, requeue_args=options.as_args(),
    )  # fmt: skip


@blueprint.task(
    name="soundforge.separate", queue="processing", pass_context=True,
    retry=StageRetryStrategy(Stage.SEPARATE),
)  # fmt: skip
def separate(
    context: JobContext,
    track_id: str,
    job_id: str | None = None,
    model: str = "htdemucs",
    force: bool = False,
) -> None:
    def work(
        runtime: Runtime, conn: Connection, started: workflow.StartedStage,
        progress: ProgressWriter,
    ) -> dict[str, Path]:  # fmt: skip
        job = started.job
        job_model = getattr(job, "model", None) or model
        out_dir = workflow.stems_dir(runtime.storage, job)
        with runtime.storage.local_file(workflow.downloaded_audio(conn, started)) as audio:
            stems = runtime.engines.separate(audio, out_dir, job_model, progress,
                                             progress.should_abort)  # fmt: skip
        runtime.storage.publish(stems.values())
        return stems

    def finish(runtime: Runtime, conn: Connection, job: Job, stems: dict[str, Path]) -> object:
        return workflow.complete_separation(conn, job, runtime.storage, stems)

    run_stage(
        context, Stage.SEPARATE, track_id=track_id, job_id=job_id, force=force, model=model,
        work=work, finish=finish, requeue_args={"model": model},
    )  # fmt: skip


@blueprint.task(
    name="soundforge.analyze", queue="analysis", pass_context=True,
    retry=StageRetryStrategy(Stage.ANALYZE),
)  # fmt: skip
def analyze(
    context: JobContext, track_id: str, job_id: str | None = None, force: bool = False
) -> None:
    def work(
        runtime: Runtime, conn: Connection, started: workflow.StartedStage,
        progress: ProgressWriter,
    ) -> tuple[AnalysisOutcome, str]:  # fmt: skip
        audio_key = workflow.downloaded_audio(conn, started)
        with runtime.storage.local_file(audio_key) as audio:
            return runtime.engines.analyze(audio, progress), audio_key

    def finish(
        runtime: Runtime, conn: Connection, job: Job, result: tuple[AnalysisOutcome, str]
    ) -> object:
        outcome, audio_relpath = result
        return workflow.complete_analysis(conn, job, outcome, audio_relpath)

    run_stage(
        context, Stage.ANALYZE, track_id=track_id, job_id=job_id, force=force,
        work=work, finish=finish, requeue_args={},
    )  # fmt: skip


