"""The pipeline tasks: import (source -> tracks + download jobs), download, separate, analyze.
JSON arguments are what `procrastinate defer` takes; a stage given only `track_id` creates
its own row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procrastinate import JobContext

from soundforge import workflow
from soundforge.engine_process import EngineCall
from soundforge.engines import AnalysisOutcome
from soundforge.models import IMPORT_TASK, DownloadJob, Job, Stage
from soundforge.runtime import Runtime, get_runtime
from soundforge.stage_runner import (
    Connection,
    StageRetryStrategy,
    expand_in_engine_process,
    run_stage,
)
from soundforge.tasks.blueprint import task


def _options(stems: bool, analysis: bool, model: str) -> workflow.PipelineOptions:
    return workflow.PipelineOptions(stems=stems, analysis=analysis, model=model)


@task(
    name=IMPORT_TASK, queue=Stage.DOWNLOAD.queue, pass_context=True,
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
    """Expand a source into tracks (in an engine child process, which a cancel or the download
    time limit kills) and give each a queued download; returns the track ids."""
    runtime = get_runtime()
    requeue_args = {"source": source, **_options(stems, analysis, model).as_args(), "force": force}
    tracks = expand_in_engine_process(context, source, requeue_args)
    with runtime.pool.connection() as conn:
        imported = [
            workflow.import_track(conn, metadata, _options(stems, analysis, model), force=force)
            for metadata in tracks
        ]
    return [str(item.track.id) for item in imported]


@task(
    name=Stage.DOWNLOAD.task_name, queue=Stage.DOWNLOAD.queue, pass_context=True,
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

    def prepare(runtime: Runtime, conn: Connection, started: workflow.StartedStage) -> EngineCall:
        job = started.job
        assert isinstance(job, DownloadJob)
        metadata = workflow.download_metadata(conn, started)
        return EngineCall("fetch", (metadata, runtime.storage, job.track_id))

    def finish(runtime: Runtime, conn: Connection, job: Job, call: EngineCall,
               stored: Any) -> object:  # fmt: skip
        return workflow.complete_download(conn, job, stored, options)

    run_stage(
        context, Stage.DOWNLOAD, track_id=track_id, job_id=job_id, force=force,
        prepare=prepare, finish=finish, requeue_args=options.as_args(),
    )  # fmt: skip


@task(
    name=Stage.SEPARATE.task_name, queue=Stage.SEPARATE.queue, pass_context=True,
    retry=StageRetryStrategy(Stage.SEPARATE),
)  # fmt: skip
def separate(
    context: JobContext,
    track_id: str,
    job_id: str | None = None,
    model: str = "htdemucs",
    force: bool = False,
) -> None:
    def prepare(runtime: Runtime, conn: Connection, started: workflow.StartedStage) -> EngineCall:
        job = started.job
        job_model = getattr(job, "model", None) or model
        audio = runtime.storage.local_path(workflow.downloaded_audio(conn, started))
        return EngineCall("separate", (audio, workflow.stems_dir(runtime.storage, job), job_model))

    def finish(runtime: Runtime, conn: Connection, job: Job, call: EngineCall,
               stems: dict[str, Path]) -> object:  # fmt: skip
        runtime.storage.publish(stems.values())  # object storage: uploaded before recorded
        return workflow.complete_separation(conn, job, runtime.storage, stems)

    run_stage(
        context, Stage.SEPARATE, track_id=track_id, job_id=job_id, force=force, model=model,
        prepare=prepare, finish=finish, requeue_args={"model": model},
    )  # fmt: skip


@task(
    name=Stage.ANALYZE.task_name, queue=Stage.ANALYZE.queue, pass_context=True,
    retry=StageRetryStrategy(Stage.ANALYZE),
)  # fmt: skip
def analyze(
    context: JobContext, track_id: str, job_id: str | None = None, force: bool = False
) -> None:
    def prepare(runtime: Runtime, conn: Connection, started: workflow.StartedStage) -> EngineCall:
        audio = runtime.storage.local_path(workflow.downloaded_audio(conn, started))
        return EngineCall("analyze", (audio,))

    def finish(runtime: Runtime, conn: Connection, job: Job, call: EngineCall,
               outcome: AnalysisOutcome) -> object:  # fmt: skip
        [audio] = call.args
        return workflow.complete_analysis(conn, job, outcome, runtime.storage.relative(audio))

    run_stage(
        context, Stage.ANALYZE, track_id=track_id, job_id=job_id, force=force,
        prepare=prepare, finish=finish, requeue_args={},
    )  # fmt: skip
