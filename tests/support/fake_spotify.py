"""A Spotify Web API stand-in on a loopback socket: the client-credentials token endpoint and
`GET /v1/tracks/{id}`, `/v1/albums/{id}` (+ `/tracks`), `/v1/playlists/{id}/tracks`, returning
the documented JSON shapes with `next` paging links. Tests register tracks, albums and
playlists, inject failures (429 with Retry-After, 5xx), revoke tokens (401) and count calls.

    with FakeSpotify() as spotify:
        track = spotify.add_track("Song", ["Artist"], duration_ms=3000)
        config = spotify.source_config(resolver_search_template=...)
"""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import secrets
import threading
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from soundforge.sources.config import SourceConfig
from tests.support.loopback_http import LOOPBACK_POLICY, LoopbackServer

JSON = dict[str, Any]
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def spotify_id(number: int) -> str:
    """A deterministic, valid 22-character base-62 id."""
    digits = []
    for _ in range(22):
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits))


@dataclass(frozen=True)
class InjectedFailure:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: JSON | None = None


@dataclass
class FakeSpotify:
    """The stand-in; `with FakeSpotify() as spotify` starts it on a free loopback port."""

    client_id: str = "test-client-id"
    client_secret: str = "test-client-secret"
    token_lifetime_s: int = 3600
    tracks: dict[str, JSON] = field(default_factory=dict)
    albums: dict[str, JSON] = field(default_factory=dict)
    playlists: dict[str, list[JSON]] = field(default_factory=dict)
    token_requests: int = 0
    looping_pages: bool = False
    """Every page's `next` link names that page again (a broken or hostile API)."""
    api_requests: list[str] = field(default_factory=list)
    _valid_tokens: set[str] = field(default_factory=set)
    _failures: deque[InjectedFailure] = field(default_factory=deque)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: LoopbackServer = field(default_factory=LoopbackServer)

    def __enter__(self) -> FakeSpotify:
        self._server.__enter__()
        self._server.add("/api/token", self._token)
        self._server.add_prefix("/v1/", self._api)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.__exit__(*exc_info)

    # -- what tests use ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._server.base_url

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def auth_url(self) -> str:
        return self.base_url + "/api/token"

    def source_config(self, **overrides: Any) -> SourceConfig:
        """A `SourceConfig` pointing at this stand-in with its credentials."""
        values: dict[str, Any] = {
            "spotify_client_id": self.client_id,
            "spotify_client_secret": self.client_secret,
            "spotify_api_url": self.api_url,
            "spotify_auth_url": self.auth_url,
            "connect_timeout_s": 2.0,
            "read_timeout_s": 5.0,
            "destinations": LOOPBACK_POLICY,
        }
        values.update(overrides)
        return SourceConfig(**values)

    def new_id(self) -> str:
        with self._lock:
            return spotify_id(next(self._ids) * 7919)

    def add_track(
        self,
        name: str,
        artists: list[str],
        *,
        duration_ms: int = 180_000,
        album: str = "An Album",
        album_id: str | None = None,
        images: list[JSON] | None = None,
        track_id: str | None = None,
    ) -> JSON:
        """Register a track (full track object, as `GET /tracks/{id}` returns it)."""
        track_id = track_id or self.new_id()
        album_id = album_id or self.new_id()
        if images is None:
            images = [
                {"url": f"https://i.scdn.co/image/{album_id}-300", "width": 300, "height": 300},
                {"url": f"https://i.scdn.co/image/{album_id}-640", "width": 640, "height": 640},
                {"url": f"https://i.scdn.co/image/{album_id}-64", "width": 64, "height": 64},
            ]
        track = {
            "id": track_id,
            "type": "track",
            "uri": f"spotify:track:{track_id}",
            "href": f"{self.api_url}/tracks/{track_id}",
            "name": name,
            "duration_ms": duration_ms,
            "explicit": False,
            "is_local": False,
            "disc_number": 1,
            "track_number": 1,
            "popularity": 50,
            "external_urls": {"spotify": f"https://open.spotify.com/track/{track_id}"},
            "artists": [
                {"id": self.new_id(), "name": artist, "type": "artist"} for artist in artists
            ],
            "album": {
                "id": album_id,
                "type": "album",
                "album_type": "album",
                "name": album,
                "images": images,
                "release_date": "2024-01-01",
            },
        }
        with self._lock:
            self.tracks[track_id] = track
        return track

    def add_album(self, name: str, tracks: list[JSON], album_id: str | None = None) -> str:
        album_id = album_id or self.new_id()
        images = tracks[0]["album"]["images"] if tracks else []
        with self._lock:
            self.albums[album_id] = {"id": album_id, "name": name, "images": images,
                                     "type": "album", "tracks": tracks}  # fmt: skip
        return album_id

    def add_playlist(self, tracks: list[JSON | None], playlist_id: str | None = None) -> str:
        """A playlist; a None entry is a removed track (`"track": null`)."""
        playlist_id = playlist_id or self.new_id()
        items = [{"added_at": "2024-01-01T00:00:00Z", "is_local": False, "track": track}
                 for track in tracks]  # fmt: skip
        with self._lock:
            self.playlists[playlist_id] = items
        return playlist_id

    def delete_track(self, track_id: str) -> None:
        with self._lock:
            self.tracks.pop(track_id, None)

    def fail_next(self, status: int, *, retry_after: float | None = None, times: int = 1) -> None:
        """The next `times` API requests answer `status` (with `Retry-After` when given)."""
        headers = (("Retry-After", f"{retry_after:g}"),) if retry_after is not None else ()
        with self._lock:
            for _ in range(times):
                self._failures.append(InjectedFailure(status, headers))

    def revoke_tokens(self) -> None:
        """Every token issued so far now gets 401 (as an expired one does)."""
        with self._lock:
            self._valid_tokens.clear()

    # -- handlers ----------------------------------------------------------------------------

    def _token(self, request: http.server.BaseHTTPRequestHandler) -> None:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            _send_json(request, 400, {"error": "invalid_client",
                                      "error_description": "Invalid client"})  # fmt: skip
            return
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.token_requests += 1
            self._valid_tokens.add(token)
        _send_json(request, 200, {"access_token": token, "token_type": "Bearer",
                                  "expires_in": self.token_lifetime_s})  # fmt: skip

    def _api(self, request: http.server.BaseHTTPRequestHandler) -> None:
        parts = urllib.parse.urlsplit(request.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(parts.query).items()}
        with self._lock:
            self.api_requests.append(request.path)
            failure = self._failures.popleft() if self._failures else None
            authorized = request.headers.get("Authorization", "").removeprefix("Bearer ") in (
                self._valid_tokens
            )
        if failure is not None:
            body = failure.body or {"error": {"status": failure.status, "message": "injected"}}
            _send_json(request, failure.status, body, failure.headers)
            return
        if not authorized:
            _send_json(request, 401, _error(401, "The access token expired"))
            return
        status, body = self._route(parts.path.removeprefix("/v1").strip("/").split("/"), query)
        _send_json(request, status, body)

    def _route(self, segments: list[str], query: dict[str, str]) -> tuple[int, JSON]:
        offset = int(query.get("offset", 0))
        with self._lock:
            match segments:
                case ["tracks", track_id] if track_id in self.tracks:
                    return 200, self.tracks[track_id]
                case ["albums", album_id] if album_id in self.albums:
                    album = self.albums[album_id]
                    page = self._page(f"albums/{album_id}/tracks", _simplified(album), 0, 50)
                    return 200, {**{k: v for k, v in album.items() if k != "tracks"},
                                 "tracks": page}  # fmt: skip
                case ["albums", album_id, "tracks"] if album_id in self.albums:
                    limit = int(query.get("limit", 20))
                    items = _simplified(self.albums[album_id])
                    return 200, self._page(f"albums/{album_id}/tracks", items, offset, limit)
                case ["playlists", playlist_id, "tracks"] if playlist_id in self.playlists:
                    limit = int(query.get("limit", 100))
                    items = self.playlists[playlist_id]
                    return 200, self._page(f"playlists/{playlist_id}/tracks", items, offset, limit)
                case ["tracks" | "albums" | "playlists", bad_id, *_] if len(bad_id) != 22:
                    return 400, _error(400, "Invalid base62 id")
        return 404, _error(404, "Resource not found")

    def _page(self, path: str, items: list[JSON], offset: int, limit: int) -> JSON:
        href = f"{self.api_url}/{path}"
        end = offset + limit
        following = offset if self.looping_pages else end
        return {
            "href": f"{href}?offset={offset}&limit={limit}",
            "items": items[offset:end],
            "limit": limit,
            "offset": offset,
            "total": len(items),
            "next": f"{href}?offset={following}&limit={limit}" if end < len(items) else None,
            "previous": f"{href}?offset={max(0, offset - limit)}&limit={limit}" if offset else None,
        }


def _simplified(album: JSON) -> list[JSON]:
    """Album listings hold simplified track objects: no `album`, no `popularity`."""
    return [
        {k: v for k, v in track.items() if k not in ("album", "popularity")}
        for track in album["tracks"]
    ]


def _error(status: int, message: str) -> JSON:
    return {"error": {"status": status, "message": message}}


def _send_json(
    request: http.server.BaseHTTPRequestHandler,
    status: int,
    body: JSON,
    headers: tuple[tuple[str, str], ...] = (),
) -> None:
    payload = json.dumps(body).encode()
    request.send_response(status)
    for name, value in headers:
        request.send_header(name, value)
    request.send_header("Content-Type", "application/json; charset=utf-8")
    request.send_header("Content-Length", str(len(payload)))
    request.end_headers()
    request.wfile.write(payload)
