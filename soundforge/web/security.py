"""What stands between the network and a write: the write token (`SOUNDFORGE_WEB_TOKEN`,
compared in constant time; without it the dashboard is read-only), a session cookie for
browsers with a CSRF token bound to it, a same-origin check, and a per-client rate limit.

A browser signs in once with the token; its cookie (HttpOnly, SameSite=Strict) holds a session:
when it was issued, a random id, and an HMAC of both keyed by the token (never the token). It
lasts `SESSION_MAX_AGE_S`, and signing out ends it on the server too: its id is remembered as
revoked until it would have expired (in this process's memory, so a restart forgets it; a new
token ends every session). Every browser write also carries the session's CSRF token (an HMAC
of its id, in a form field or the `X-CSRF-Token` header) and must come from this origin. API
clients send `Authorization: Bearer <token>` instead, which a cross-site page cannot add.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "soundforge_session"
SESSION_MAX_AGE_S = 12 * 3600  # a sign-in lasts a working day
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
class WriteDeniedError(Exception):
    """A write that may not happen: `status` 403 (no or wrong credentials, cross-site) or 429."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RevokedSessions:
    """Ids of sessions signed out before they expired, each kept until it would have."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def revoke(self, session_id: str, expires_at: float) -> None:
        with self._lock:
            now = self._clock()
            self._until = {key: until for key, until in self._until.items() if until > now}
            self._until[session_id] = expires_at

    def __contains__(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._until


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its session's id and when it was issued (epoch seconds)."""

    id: str
    issued_at: int

    @property
    def expires_at(self) -> int:
        return self.issued_at + SESSION_MAX_AGE_S


@dataclass(frozen=True)
class WriteGuard:
    """Decides whether a request may write."""

    token: str | None
    limiter: RateLimiter
    revoked: RevokedSessions = field(default_factory=RevokedSessions)
    clock: Callable[[], float] = time.time

    @property
    def read_only(self) -> bool:
        return not self.token

    def _mac(self, purpose: str) -> str:
        assert self.token
        return hmac.new(self.token.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def new_session(self) -> str:
        """A new session's cookie value: `<issued>.<id>.<HMAC of both>`."""
        issued, session_id = str(int(self.clock())), secrets.token_hex(16)
        return f"{issued}.{session_id}.{self._session_mac(issued, session_id)}"

    def session_of(self, request: Request) -> Session | None:
        """The request's session when its cookie is signed with the token, not expired (nor
        issued in the future) and not signed out."""
        issued, _, rest = request.cookies.get(SESSION_COOKIE, "").partition(".")
        session_id, _, mac = rest.partition(".")
        if not self.token or not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
            return None
        if not same_secret(mac, self._session_mac(issued, session_id)):
            return None
        session = Session(session_id, int(issued))
        now = self.clock()
        if not session.issued_at - 60 <= now < session.expires_at or session.id in self.revoked:
            return None
        return session

    def _session_mac(self, issued: str, session_id: str) -> str:
        """What a session cookie is signed with: an HMAC of its issue time and id."""
        return self._mac(f"session:{issued}:{session_id}")

    def end_session(self, session: Session) -> None:
        self.revoked.revoke(session.id, session.expires_at)

    def csrf_token(self, session: Session) -> str:
        return self._mac(f"csrf:{session.id}")

    def token_matches(self, offered: str) -> bool:
        return bool(self.token) and same_secret(offered, self.token or "")

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
        session = self.session_of(request)
        if session is None:
            raise WriteDeniedError(403, "a write needs the token: sign in, or send "
                              "'Authorization: Bearer <SOUNDFORGE_WEB_TOKEN>'")  # fmt: skip
        check_same_origin(request)
        offered = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if not same_secret(offered, self.csrf_token(session)):
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
