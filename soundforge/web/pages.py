"""The HTML pages: Tracks, Track, Queues, Live, Add and sign-in. Each handler gathers data with
the same calls as the API (api.py) and renders a template; a form write goes through the same
write guard and library call as its API twin, then redirects (POST/redirect/GET)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from soundforge import music
from soundforge.separation.registry import MODEL_NAMES
from soundforge.web import api
from soundforge.web.bodies import read_form
from soundforge.web.context import WebContext, job_action_of, path_uuid, track_query
from soundforge.web.pictures import analysis_pictures
from soundforge.web.security import (
    CSRF_FIELD,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    WriteDeniedError,
    check_same_origin,
)


def render(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
    ctx = api.context(request)
    session = ctx.guard.session_of(request)
    html = ctx.templates.get_template(template).render(
        request_path=request.url.path,
        read_only=ctx.guard.read_only,
        signed_in=session is not None,
        csrf_token=ctx.guard.csrf_token(session) if session else "",
        csrf_field=CSRF_FIELD,
        **values,
    )
    return HTMLResponse(html, status_code=status_code, headers={"cache-control": "no-store"})


def tracks_page(request: Request) -> Response:
    ctx = api.context(request)
    wanted = track_query(request, ctx.settings.web_page_size)
    with ctx.connection() as conn:
        page = music.track_page(conn, wanted)
    filters = {name: request.query_params.get(name, "")
               for name in ("q", "tempo_min", "tempo_max", "key")}  # fmt: skip
    page_number = wanted.offset // wanted.limit + 1

    def page_link(number: int) -> str:
        return "/?" + urlencode({**{k: v for k, v in filters.items() if v}, "page": number})

    return render(request, "tracks.html", rows=page.rows, filters=filters,
                  page_number=page_number,
                  newer=page_link(page_number - 1) if page_number > 1 else None,
                  older=page_link(page_number + 1) if page.has_more else None)  # fmt: skip


def track_page(request: Request) -> Response:
    ctx = api.context(request)
    detail = api.track_detail(ctx, path_uuid(request, "track_id", "track id"))
    features = detail["analysis"]["features"] if detail["analysis"] else None
    return render(request, "track.html", detail=detail, pictures=analysis_pictures(features))


def queues_page(request: Request) -> Response:
    ctx = api.context(request)
    with ctx.connection() as conn:
        overview = api.queue_overview(conn)
    return render(request, "queues.html", overview=overview)


def live_page(request: Request) -> Response:
    return render(request, "live.html")


def add_page(request: Request) -> Response:
    ctx = api.context(request)
    return render(request, "add.html", models=MODEL_NAMES, default_model=ctx.settings.demucs_model,
                  error=None, source="")  # fmt: skip


async def _form(request: Request) -> tuple[WebContext, dict[str, Any]]:
    ctx = api.context(request)
    data = await read_form(request)
    ctx.guard.check(request, form_csrf=data.get(CSRF_FIELD))
    return ctx, data


async def add_submit(request: Request) -> Response:
    ctx, data = await _form(request)
    imported = await asyncio.to_thread(api.add_source, ctx, data)
    target = f"/tracks/{imported[0].track.id}" if len(imported) == 1 else "/"
    return RedirectResponse(target, status_code=303)


async def job_action_submit(request: Request) -> Response:
    ctx, _ = await _form(request)
    job_id = path_uuid(request, "job_id", "job id")
    action = api.cancel_job if job_action_of(request) == "cancel" else api.retry_job
    done = await asyncio.to_thread(action, ctx, job_id)
    return RedirectResponse(f"/tracks/{done['track_id']}", status_code=303)


async def delete_submit(request: Request) -> Response:
    ctx, _ = await _form(request)
    track_id = path_uuid(request, "track_id", "track id")
    await asyncio.to_thread(api.delete_track, ctx, track_id)
    return RedirectResponse("/", status_code=303)


def login_page(request: Request) -> Response:
    return render(request, "login.html", error=None)


async def login_submit(request: Request) -> Response:
    ctx = api.context(request)
    if not ctx.guard.limiter.allow(f"login:{request.client.host if request.client else ''}"):
        raise WriteDeniedError(429, "too many sign-in attempts; wait a minute")
    check_same_origin(request)  # no signing a browser in from another site
    offered = (await read_form(request)).get("token")
    if ctx.guard.read_only:
        raise WriteDeniedError(403, "this dashboard is read-only: SOUNDFORGE_WEB_TOKEN is not set")
    if not isinstance(offered, str) or not ctx.guard.token_matches(offered):
        return render(request, "login.html", status_code=403, error="wrong token")
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, ctx.guard.new_session(), max_age=SESSION_MAX_AGE_S,
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")  # fmt: skip
    return response


async def logout_submit(request: Request) -> Response:
    ctx, _ = await _form(request)
    session = ctx.guard.session_of(request)
    if session is not None:  # None: signed in with the bearer token instead
        ctx.guard.end_session(session)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response
