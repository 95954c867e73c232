"""What every handler of one server process shares: the settings, a connection pool, the
storage, the engines (to expand a source), the write guard, the progress broadcaster and the
templates; plus the helpers that turn a request into library arguments."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jinja2
import psycopg
from psycopg_pool import ConnectionPool
from starlette.exceptions import HTTPException
from starlette.requests import Request

from soundforge import music
from soundforge.engines import Engines
from soundforge.errors import PermanentError
from soundforge.file_store import FileStore
from soundforge.keys import both_notations, camelot
from soundforge.settings import Settings
from soundforge.web.events import ProgressBroadcaster
from soundforge.web.security import WriteGuard

MAX_WHOLE_DIGITS = 12  # a page number or offset beyond any real library
STAGE_LABELS = {"download": "download", "separate": "stems", "analyze": "analysis"}


class BadRequestError(PermanentError):
    """A request parameter that cannot be used (400)."""


@dataclass
class WebContext:
    settings: Settings
    storage: FileStore
    engines: Engines
    guard: WriteGuard
    broadcaster: ProgressBroadcaster
    templates: jinja2.Environment
    pool: ConnectionPool[Any] | None = None

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        assert self.pool is not None, "the app has not started"
        with self.pool.connection() as conn:
            yield conn


def build_templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("soundforge.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["camelot"] = camelot
    environment.filters["both_notations"] = both_notations
    environment.filters["mmss"] = mmss
    environment.globals["STAGE_LABELS"] = STAGE_LABELS
    return environment


def mmss(seconds: float | int | None) -> str:
    if seconds is None:
        return "-"
    whole = round(float(seconds))
    return f"{whole // 60}:{whole % 60:02d}"


def _number(params: Any, name: str) -> float | None:
    text = (params.get(name) or "").strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise BadRequestError(f"{name} must be a number, not {_shown(text)}") from None


def _whole(params: Any, name: str, default: int) -> int:
    """A whole-number parameter: ASCII digits only (`str.isdigit` also takes '²' and other
    scripts' digits, which `int` then refuses), at most `MAX_WHOLE_DIGITS` of them."""
    text = (params.get(name) or "").strip()
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > MAX_WHOLE_DIGITS:
        raise BadRequestError(
            f"{name} must be a whole number (at most {MAX_WHOLE_DIGITS} digits), not "
            f"{_shown(text)}"
        )
    return int(text)


def _shown(text: str) -> str:
    """A parameter quoted in an error, cut short: an answer never echoes a huge input."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


def track_query(request: Request, page_size: int) -> music.TrackQuery:
    """The track list a request asks for: `q` (search), `tempo_min`/`tempo_max` (BPM), `key`
    ("A minor", "Am", "8A"), `limit`/`offset` or `page` (from 1)."""
    params = request.query_params
    limit = min(_whole(params, "limit", page_size), music.MAX_PAGE)
    page = _whole(params, "page", 0)
    offset = (page - 1) * limit if page >= 1 else _whole(params, "offset", 0)
    return music.TrackQuery(
        search=params.get("q") or params.get("search") or None,
        tempo_min=_number(params, "tempo_min"),
        tempo_max=_number(params, "tempo_max"),
        key=params.get("key") or None,
        limit=max(limit, 1),
        offset=offset,
    )


def path_uuid(request: Request, name: str, what: str) -> uuid.UUID:
    return music.parse_uuid(str(request.path_params[name]), what)


JOB_ACTIONS = ("cancel", "retry")


def job_action_of(request: Request) -> str:
    """`cancel` or `retry` from the path; anything else is not a route (404)."""
    action = str(request.path_params["action"])
    if action not in JOB_ACTIONS:
        raise HTTPException(404, f"no such job action {action!r}; use cancel or retry")
    return action
