"""What stands between the network and a write: the write token (`SOUNDFORGE_WEB_TOKEN`,
compared in constant time; without it the dashboard is read-only), a session cookie for
browsers with a CSRF token bound to it, a same-origin check, and a per-client rate limit.

A browser signs in once with the token; its cookie holds an HMAC of the token (never the token),
is HttpOnly and SameSite=Strict. Every browser write also carries the CSRF token (a second HMAC,
in a form field or the `X-CSRF-Token` header) and must come from this origin. API clients send
`Authorization: Bearer <token>` instead, which a cross-site page cannot add.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "soundforge_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
class WriteDeniedError(Exception):
    """A write that may not happen: `status` 403 (no or wrong credentials, cross-site) or 429."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class WriteGuard:
    """Decides whether a request may write."""

    token: str | None
    limiter: RateLimiter

    @property
    def read_only(self) -> bool:
        return not self.token

    def _mac(self, purpose: str) -> str:
        assert self.token
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def session_value(self) -> str:
        return self._mac("session")

    def csrf_token(self) -> str:
        return self._mac("csrf")

    def token_matches(self, offered: str) -> bool:
        return bool(self.token) and same_secret(offered, self.token or "")

    def signed_in(self, request: Request) -> bool:
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(self.token) and same_secret(cookie, self.session_value())

    def check(self, request: Request, form_csrf: str | None = None) -> None:
        """Raise `WriteDeniedError` unless `request` may write (counts against the rate limit)."""
        if not self.limiter.allow(client_key(request)):
            raise WriteDeniedError(429, "too many writes from this client; wait a minute")
        if self.read_only:
            raise WriteDeniedError(
                403, "this dashboard is read-only: SOUNDFORGE_WEB_TOKEN is not set"
            )
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            if self.token_matches(authorization[7:].strip()):
                return
            raise WriteDeniedError(403, "wrong token")
        if not self.signed_in(request):
            raise WriteDeniedError(403, "a write needs the token: sign in, or send "
                              "'Authorization: Bearer <SOUNDFORGE_WEB_TOKEN>'")  # fmt: skip
        check_same_origin(request)
        offered = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if not same_secret(offered, self.csrf_token()):
            raise WriteDeniedError(403, "missing or wrong CSRF token; reload the page")


def same_secret(offered: str, expected: str) -> bool:
    """Constant-time comparison of what a client sent with a secret. Compared as UTF-8 bytes:
    `hmac.compare_digest` raises on a str with non-ASCII characters, which a client chooses
    (a crafted cookie would otherwise be a 500 on every page)."""
    return hmac.compare_digest(
        offered.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape")
    )


def check_same_origin(request: Request) -> None:
    """A browser write must come from a page of this server (Origin, else Referer)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source:
        raise WriteDeniedError(403, "cross-site request refused (no Origin or Referer)")
    parts = urlsplit(source)
    if parts.netloc != request.headers.get("host", "") or parts.scheme != request.url.scheme:
        raise WriteDeniedError(403, "cross-site request refused")


def client_key(request: Request) -> str:
    return request.client.host if request.client else "unknown"


class RateLimiter:
    """At most `limit` events per client in any `window_s` (a sliding log per client)."""

    def __init__(self, limit: int, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            if len(self._events) > 10_000:  # bounded: forget quiet clients
                self._events = {k: v for k, v in self._events.items()
                                if v and v[-1] > now - self.window_s}  # fmt: skip
            events = self._events.setdefault(key, deque())
            while events and events[0] <= now - self.window_s:
                events.popleft()
            if len(events) >= self.limit:
                return False
            events.append(now)
            return True
