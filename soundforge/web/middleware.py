"""ASGI middleware that adds headers to every HTTP answer as it starts: the security headers
(CSP without inline script, frame denial, nosniff, referrer policy) and `Server-Timing`."""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
    ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
)


class _OnResponseStart:
    """Calls `add_headers` on each HTTP answer's headers, with the request's start time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def add_headers(self, headers: MutableHeaders, started: float) -> None:
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.add_headers(MutableHeaders(scope=message), started)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class SecurityHeaders(_OnResponseStart):
    def add_headers(self, headers: MutableHeaders, started: float) -> None:
        for name, value in SECURITY_HEADERS:
            headers.setdefault(name, value)


class ServerTiming(_OnResponseStart):
    """`Server-Timing: app;dur=<ms>`: time to the answer's start (handler and database), for
    benchmarks and browser dev tools."""

    def add_headers(self, headers: MutableHeaders, started: float) -> None:
        headers.append("server-timing", f"app;dur={(time.perf_counter() - started) * 1000:.2f}")
