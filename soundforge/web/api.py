"""The JSON API (`/api/...`), `/metrics` and `/healthz`: each handler maps a request to the same
library calls the CLI makes (music, workflow, operations) and answers JSON; errors are JSON too,
with a one-line `error` and the right status code (see app.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse

from soundforge import music, operations, workflow
from soundforge.cli.common import track_listing
from soundforge.keys import camelot
from soundforge.models import json_value
from soundforge.separation.registry import MODEL_NAMES, stem_names
from soundforge.web.bodies import read_json
from soundforge.web.context import (
    BadRequestError,
    WebContext,
    job_action_of,
    path_uuid,
    track_query,
)
from soundforge.web.events import next_message
from soundforge.web.files import StoredFileMissingError, media_type, stored_file, zip_stream
from soundforge.web.metrics import render_metrics

SSE_KEEPALIVE_S = 15.0
MAX_SSE_CLIENTS = 2000


class JSON(JSONResponse):
    """JSON with uuids and datetimes as strings, never NaN."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=json_value, allow_nan=False,
                          separators=(",", ":")).encode()  # fmt: skip


def context(request: Request) -> WebContext:
    found: WebContext = request.app.state.context
    return found


def track_detail(ctx: WebContext, track_id: uuid.UUID) -> dict[str, Any]:
    """A track, its pipeline row, its newest analysis, the stems of its newest separation and
    every job row it had: what the Track page and GET /api/tracks/{id} show."""
    with ctx.connection() as conn:
        track = music.require_track(conn, track_id)
        [row] = music.track_page(conn, music.TrackQuery(track_ids=(track_id,), limit=1)).rows
        result = music.get_analysis_result_for_track(conn, track_id)
        stems = music.list_stems_for_track(conn, track_id)
        history = music.track_jobs(conn, track_id)
    newest_run = stems[0].processing_job_id if stems else None
    analysis = None
    if result is not None:
        analysis = {**result.to_dict(), "key_camelot": camelot(result.key),
                    "key_confidence": (result.features or {}).get("key_confidence")}  # fmt: skip
    return {
        "track": track.to_dict(),
        "pipeline": track_listing(row),
        "analysis": analysis,
        "stems": [{**stem.to_dict(), "url": f"/api/stems/{stem.id}"}
                  for stem in stems if stem.processing_job_id == newest_run],
        "jobs": history,
    }


def list_tracks(request: Request) -> Response:
    ctx = context(request)
    wanted = track_query(request, ctx.settings.web_page_size)
    with ctx.connection() as conn:
        page = music.track_page(conn, wanted)
    return JSON({"tracks": [track_listing(row) for row in page.rows], "has_more": page.has_more,
                 "offset": page.offset, "limit": page.limit})  # fmt: skip


def get_track(request: Request) -> Response:
    ctx = context(request)
    return JSON(track_detail(ctx, path_uuid(request, "track_id", "track id")))


def pipeline_options(ctx: WebContext, data: dict[str, Any]) -> workflow.PipelineOptions:
    model = str(data.get("model") or ctx.settings.demucs_model)
    return workflow.PipelineOptions(  # an unknown model: UnknownModelError, 400
        stems=_flag(data, "stems", True), analysis=_flag(data, "analysis", True), model=model
    )


def _flag(data: dict[str, Any], name: str, default: bool) -> bool:
    value = data.get(name, default)
    if isinstance(value, bool):
        return value
    return str(value).lower() in ("1", "true", "on", "yes")


def add_source(ctx: WebContext, data: dict[str, Any]) -> list[workflow.ImportedTrack]:
    """Import one source as `soundforge add` does (same expansion, input policy and import)."""
    source = data.get("source") or ""
    if not isinstance(source, str):
        raise BadRequestError("source must be a string: a file path, an http(s) URL or a "
                              "Spotify link")  # fmt: skip
    source = source.strip()
    if not source:
        raise BadRequestError("give a source: a file path, an http(s) URL or a Spotify link")
    options = pipeline_options(ctx, data)
    with ctx.connection() as conn:
        return workflow.import_sources(conn, ctx.engines, [source], options,
                                       force=_flag(data, "force", False))  # fmt: skip


async def create_track(request: Request) -> Response:
    ctx = context(request)
    ctx.guard.check(request)
    data = await read_json(request)
    imported = await asyncio.to_thread(add_source, ctx, data)
    return JSON([{"track_id": item.track.id, "title": item.track.title,
                  "download_job_id": item.download_job.id, "queued": item.new_download}
                 for item in imported], status_code=201)  # fmt: skip


def cancel_job(ctx: WebContext, job_id: uuid.UUID) -> dict[str, Any]:
    with ctx.connection() as conn:
        job = workflow.cancel_job(conn, job_id)
    return {"job_id": job.id, "track_id": job.track_id, "status": job.status}


def retry_job(ctx: WebContext, job_id: uuid.UUID) -> dict[str, Any]:
    options = workflow.PipelineOptions(model=ctx.settings.demucs_model)
    with ctx.connection() as conn:
        job = workflow.retry_job(conn, job_id, options)
    return {"job_id": job.id, "track_id": job.track_id, "status": job.status}


def delete_track(ctx: WebContext, track_id: uuid.UUID) -> dict[str, Any]:
    with ctx.connection() as conn:
        deleted, removed = music.delete_track_with_files(conn, ctx.storage, track_id)
    if not deleted:
        raise music.TrackNotFoundError(f"no track with id {track_id}")
    return {"deleted": True, "track_id": track_id, "files_removed": len(removed)}


async def job_action(request: Request) -> Response:
    ctx = context(request)
    ctx.guard.check(request)
    job_id = path_uuid(request, "job_id", "job id")
    action = cancel_job if job_action_of(request) == "cancel" else retry_job
    return JSON(await asyncio.to_thread(action, ctx, job_id))


async def remove_track(request: Request) -> Response:
    ctx = context(request)
    ctx.guard.check(request)
    track_id = path_uuid(request, "track_id", "track id")
    return JSON(await asyncio.to_thread(delete_track, ctx, track_id))


def stem_file(request: Request) -> Response:
    """One stem's audio (Range requests give 206); `?download=1` saves it under a clear name."""
    ctx = context(request)
    stem_id = path_uuid(request, "stem_id", "stem id")
    with ctx.connection() as conn:
        stem = music.get_stem(conn, stem_id)
    if stem is None:
        raise music.TrackNotFoundError(f"no stem with id {stem_id}")
    try:
        path = stored_file(ctx.storage, stem.file_path)
    except StoredFileMissingError:
        raise music.TrackNotFoundError(f"stem {stem_id} has no stored file") from None
    filename = None
    if request.query_params.get("download"):
        filename = f"{stem.track_id}-{stem.stem_type}{path.suffix}"
    return FileResponse(path, media_type=media_type(path), filename=filename)


def stems_zip(request: Request) -> Response:
    ctx = context(request)
    detail = track_detail(ctx, path_uuid(request, "track_id", "track id"))
    members = []
    for stem in detail["stems"]:
        try:
            path = stored_file(ctx.storage, stem["file_path"])
        except StoredFileMissingError:
            continue
        members.append((f"{stem['stem_type']}{path.suffix}", path))
    if not members:
        raise music.TrackNotFoundError("this track has no stored stems yet")
    name = f"{detail['track']['id']}-stems.zip"
    return StreamingResponse(zip_stream(members), media_type="application/zip",
                             headers={"content-disposition": f'attachment; filename="{name}"'})


def analysis_json(request: Request) -> Response:
    ctx = context(request)
    track_id = path_uuid(request, "track_id", "track id")
    with ctx.connection() as conn:
        music.require_track(conn, track_id)
        result = music.get_analysis_result_for_track(conn, track_id)
    if result is None:
        raise music.TrackNotFoundError(f"track {track_id} has no analysis yet")
    body = {**result.to_dict(), "key_camelot": camelot(result.key)}
    return JSON(body, headers={
        "content-disposition": f'attachment; filename="{track_id}-analysis.json"'})


def models(request: Request) -> Response:
    """The separation models, their stems and whether their weights are here (the same check
    as `soundforge models list`; the first call may import torch to find its cache folder)."""
    from soundforge.separation import weights

    repo = context(request).settings.demucs_repo
    return JSON({
        "folder": str(weights.weights_dir(repo)),
        "default": context(request).settings.demucs_model,
        "models": [{"name": name, "stems": list(stem_names(name)),
                    "present": weights.model_present(name, repo),
                    "missing": [file.name for file in weights.missing_files(name, repo)]}
                   for name in MODEL_NAMES],
    })  # fmt: skip


def queues(request: Request) -> Response:
    ctx = context(request)
    with ctx.connection() as conn:
        overview = queue_overview(conn)
    return JSON(overview)


def queue_overview(conn: Any) -> dict[str, Any]:
    """The Queues page's data (and GET /api/queues)."""
    return {
        "queues": [stats.__dict__ for stats in operations.queue_stats(conn)],
        "done_last_hour": operations.done_in_last_hour(conn),
        "failures": operations.recent_failures(conn),
        "stalled": operations.stalled_rows(conn),
        "workers": operations.workers(conn),
    }


async def events(request: Request) -> Response:
    """Server-Sent Events: every progress event of the process' one LISTEN connection."""
    ctx = context(request)
    broadcaster = ctx.broadcaster
    if broadcaster.subscriber_count >= MAX_SSE_CLIENTS:
        return JSON({"error": "too many live clients; try again later"}, status_code=503)

    async def stream() -> Any:
        async with broadcaster.subscribe() as subscriber:
            yield "retry: 2000\n: connected\n\n"
            while True:
                message = await next_message(subscriber, SSE_KEEPALIVE_S)
                if message is None:
                    if await request.is_disconnected():
                        return
                    yield ": keep-alive\n\n"
                    continue
                yield f"data: {message}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


def metrics(request: Request) -> Response:
    ctx = context(request)
    body, content_type = render_metrics(ctx)
    return Response(body, media_type=content_type)


def healthz(request: Request) -> Response:
    ctx = context(request)
    report = operations.health_of(ctx.settings.database_url, ctx.settings.heartbeat_interval_s)
    status = 200 if report.health is operations.Health.HEALTHY else 503
    return JSON(report.to_dict(), status_code=status, headers={"cache-control": "no-store"})
