"""Request bodies read with a bound: the JSON API's object and the pages' forms. A body larger
than its limit, declared or streamed, is refused (413) before it is held, and a form is only
`application/x-www-form-urlencoded` (the pages send nothing else; a multipart upload is refused
with 415 instead of being spooled to disk), so no request, signed in or not, can make the server
hold or write more than a limit's worth."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

from soundforge.web.context import BadRequestError

MAX_JSON_BODY_BYTES = 1 << 20  # a source is at most 8192 characters; 1 MiB holds any request
MAX_FORM_BODY_BYTES = 64 << 10  # a form holds a source, a model, a few flags and a token
FORM_TYPE = "application/x-www-form-urlencoded"


async def read_json(request: Request) -> dict[str, Any]:
    """The request's JSON object, at most `MAX_JSON_BODY_BYTES`."""
    body = await _bounded_body(request, MAX_JSON_BODY_BYTES)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can parse
        raise BadRequestError("the body must be a JSON object") from None
    if not isinstance(data, dict):
        raise BadRequestError("the body must be a JSON object")
    return data


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a url-encoded form, at most `MAX_FORM_BODY_BYTES` (a repeated field: its
    last value); an empty body without a type is an empty form."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", FORM_TYPE):
        raise HTTPException(415, f"a form must be sent as {FORM_TYPE}")
    body = await _bounded_body(request, MAX_FORM_BODY_BYTES)
    if body and not content_type:
        raise HTTPException(415, f"a form must be sent as {FORM_TYPE}")
    try:
        fields = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                                        max_num_fields=100)  # fmt: skip
    except (UnicodeDecodeError, ValueError):
        raise BadRequestError("the form is not valid url-encoded UTF-8") from None
    return dict(fields)


async def _bounded_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the body is larger than {limit} bytes")
