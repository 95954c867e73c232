"""The ASGI app: routes, startup (pool, LISTEN broadcaster) and shutdown, and one error mapping
for every handler: a user-caused error is a one-line message with the right status, JSON under
`/api/` and an HTML page elsewhere; a traceback never reaches a client."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

import psycopg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from soundforge import music
from soundforge.db import create_pool
from soundforge.engines import Engines, default_engines
from soundforge.errors import (
    DatabaseUnavailableError,
    InvalidIdError,
    PermanentError,
    SoundForgeError,
    TransientError,
)
from soundforge.file_store import open_storage
from soundforge.jobs import JobNotFoundError
from soundforge.settings import Settings
from soundforge.web import api, pages
from soundforge.web.context import WebContext, build_templates
from soundforge.web.events import ProgressBroadcaster
from soundforge.web.middleware import SecurityHeaders, ServerTiming
from soundforge.web.security import RateLimiter, WriteDeniedError, WriteGuard

log = logging.getLogger(__name__)
UNMIGRATED = "the database has no (or an older) SoundForge schema: run `soundforge migrate`"


def routes() -> list[Route | Mount]:
    static = StaticFiles(directory=str(resources.files("soundforge.web") / "static"))
    return [
        Route("/", pages.tracks_page),
        Route("/tracks/{track_id}", pages.track_page),
        Route("/tracks/{track_id}/delete", pages.delete_submit, methods=["POST"]),
        Route("/jobs/{job_id}/{action:str}", pages.job_action_submit, methods=["POST"]),
        Route("/queues", pages.queues_page),
        Route("/live", pages.live_page),
        Route("/add", pages.add_page),
        Route("/add", pages.add_submit, methods=["POST"]),
        Route("/login", pages.login_page),
        Route("/login", pages.login_submit, methods=["POST"]),
        Route("/logout", pages.logout_submit, methods=["POST"]),
        Route("/api/tracks", api.list_tracks),
        Route("/api/tracks", api.create_track, methods=["POST"]),
        Route("/api/tracks/{track_id}", api.get_track),
        Route("/api/tracks/{track_id}", api.remove_track, methods=["DELETE"]),
        Route("/api/tracks/{track_id}/stems.zip", api.stems_zip),
        Route("/api/tracks/{track_id}/analysis.json", api.analysis_json),
        Route("/api/stems/{stem_id}", api.stem_file),
        Route("/api/jobs/{job_id}/{action:str}", api.job_action, methods=["POST"]),
        Route("/api/events", api.events),
        Route("/api/models", api.models),
        Route("/api/queues", api.queues),
        Route("/metrics", api.metrics),
        Route("/healthz", api.healthz),
        Mount("/static", static, name="static"),
    ]


def _status_of(error: Exception) -> int:
    if isinstance(error, WriteDeniedError):
        return error.status
    if isinstance(error, music.TrackNotFoundError | JobNotFoundError | InvalidIdError):
        return 404
    if isinstance(error, DatabaseUnavailableError | TransientError):
        return 503
    if isinstance(error, PermanentError):
        return 400 if "only a failed job" not in str(error) else 409
    return 500


async def handle_error(request: Request, error: Exception) -> Response:
    if isinstance(error, HTTPException):
        status, message = error.status_code, str(error.detail)
    elif isinstance(error, psycopg.errors.UndefinedTable | psycopg.errors.UndefinedColumn):
        status, message = 503, UNMIGRATED
    else:
        status = _status_of(error)
        message = str(error) if isinstance(error, SoundForgeError | WriteDeniedError) else (
            "internal error; see the server log")
        if status == 500:
            log.exception("unhandled error on %s", request.url.path, exc_info=error)
    if request.url.path.startswith(("/api/", "/metrics", "/healthz")):
        return api.JSON({"error": message, "status": status}, status_code=status)
    return pages.render(request, "error.html", status_code=status, status=status,
                        message=message)  # fmt: skip


def build_app(settings: Settings, engines: Engines | None = None) -> Starlette:
    """The dashboard for `settings`; the pool and the LISTEN thread start with the app."""
    token = settings.web_token.get_secret_value() if settings.web_token else None
    ctx = WebContext(
        settings=settings,
        storage=open_storage(settings),
        engines=engines or default_engines(settings),
        guard=WriteGuard(token or None, RateLimiter(settings.web_writes_per_minute)),
        broadcaster=ProgressBroadcaster(settings.database_url),
        templates=build_templates(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ctx.pool = create_pool(settings.database_url, min_size=1,
                               max_size=settings.db_pool_max_size)  # fmt: skip
        ctx.broadcaster.start()
        try:
            yield
        finally:
            ctx.broadcaster.close()
            ctx.pool.close()

    # `Exception` (a bug) is answered and then logged with its traceback; the others are
    # expected and answered alone.
    handlers: dict[Any, Any] = {
        error: handle_error
        for error in (Exception, HTTPException, SoundForgeError, WriteDeniedError,
                      psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn)
    }  # fmt: skip
    middleware = [Middleware(ServerTiming), Middleware(SecurityHeaders)]
    app = Starlette(routes=routes(), middleware=middleware, exception_handlers=handlers,
                    lifespan=lifespan)  # fmt: skip
    app.state.context = ctx
    return app
