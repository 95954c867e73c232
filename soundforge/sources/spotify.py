"""Spotify Web API metadata with client credentials: track, album and playlist listings mapped
to `TrackMetadata`.

Written on httpx rather than spotipy (2.26), which was weighed first: spotipy takes the API base
only as a mutable `prefix` attribute and the token URL only as a class attribute; it has no
"401 -> fetch a new token once"; it sleeps through any `Retry-After` inside urllib3 (an hour-long
one blocks a worker thread; we want a long one to become a queue retry) with no injectable clock
or sleep; its token cache defaults to a `.cache` file in the working folder and uses the wall
clock; and its debug log prints the Basic-auth header that carries the client secret. The
behaviours we need fit in this one small module, on the same HTTP stack as the downloads.
"""

from __future__ import annotations

import functools
import logging
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import httpx

from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import (
    ExpansionTooLargeError,
    SourceNotFoundError,
    SpotifyAuthError,
    SpotifyCredentialsMissingError,
    SpotifyUnavailableError,
)
from soundforge.sources.model import SpotifySource, TrackMetadata
from soundforge.sources.pinned_http import policy_client

logger = logging.getLogger(__name__)

JSON = dict[str, Any]
NO_CREDENTIALS = (
    "Spotify links need Spotify API credentials, and none are configured: set "
    "SOUNDFORGE_SPOTIFY_CLIENT_ID and SOUNDFORGE_SPOTIFY_CLIENT_SECRET "
    "(https://developer.spotify.com/dashboard), or give a local file or an http(s) URL"
)
TOKEN_EXPIRY_MARGIN_S = 30.0
ALBUM_PAGE = 50
PLAYLIST_PAGE = 100


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float  # on config.clock


class SpotifyClient:
    """A thread-safe Spotify Web API client: one per process is enough (see `spotify_client`);
    it caches its token until shortly before it expires."""

    def __init__(self, config: SourceConfig, *, http: httpx.Client | None = None) -> None:
        if not config.has_spotify_credentials:
            raise SpotifyCredentialsMissingError(NO_CREDENTIALS)
        self._config = config
        self._api_url = config.spotify_api_url.rstrip("/")
        self._http = http or policy_client(
            config.destinations,
            timeout=httpx.Timeout(config.read_timeout_s, connect=config.connect_timeout_s),
            headers={"Accept": "application/json"},
        )
        self._token: _Token | None = None
        self._token_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    # -- public ------------------------------------------------------------------------------

    def track(self, track_id: str) -> TrackMetadata:
        """One track, `GET /tracks/{id}`; a deleted or unknown id raises `SourceNotFoundError`."""
        return track_metadata(self.get(f"/tracks/{track_id}", what=f"track {track_id}"))

    def album_tracks(self, album_id: str) -> list[TrackMetadata]:
        """Every track of an album, in order (the album's own name and art on each)."""
        album = self.get(f"/albums/{album_id}", what=f"album {album_id}")
        tracks = []
        for item in self._pages(album.get("tracks") or {}, f"album {album_id}"):
            if item.get("id"):
                tracks.append(track_metadata({**item, "album": album}))
        return tracks

    def playlist_tracks(self, playlist_id: str) -> list[TrackMetadata]:
        """Every track of a playlist, in order; removed tracks, local files and podcast episodes
        are skipped."""
        what = f"playlist {playlist_id}"
        first = self.get(
            f"/playlists/{playlist_id}/tracks",
            params={"limit": PLAYLIST_PAGE, "additional_types": "track"},
            what=what,
        )
        tracks = []
        for item in self._pages(first, what):
            track = item.get("track")
            if not track or item.get("is_local") or track.get("type", "track") != "track":
                continue
            if track.get("id"):
                tracks.append(track_metadata(track))
        return tracks

    def expand(self, source: SpotifySource) -> list[TrackMetadata]:
        if source.kind == "track":
            return [self.track(source.spotify_id)]
        if source.kind == "album":
            return self.album_tracks(source.spotify_id)
        return self.playlist_tracks(source.spotify_id)

    # -- requests ----------------------------------------------------------------------------

    def get(self, path_or_url: str, *, params: Mapping[str, Any] | None = None,
            what: str = "resource") -> JSON:  # fmt: skip
        """GET an API path (or a `next` URL of the same API) as JSON: refreshes the token once
        on 401, waits out `429` for `Retry-After` seconds (bounded), maps errors."""
        url = self._api_url + path_or_url if path_or_url.startswith("/") else path_or_url
        self._check_same_api(url)
        refreshed = False
        rate_limited = 0
        while True:
            token = self._access_token()
            try:
                response = self._http.get(
                    url, params=params, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TransportError as error:
                raise _unreachable(self._api_url, error) from None
            status = response.status_code
            if status == 200:
                return cast(JSON, response.json())
            if status == 401 and not refreshed:
                logger.info("Spotify answered 401 for %s: fetching a new token", what)
                self._invalidate(token)
                refreshed = True
                continue
            if status == 429 and rate_limited < self._config.spotify_rate_limit_retries:
                rate_limited += 1
                wait_s = _retry_after_s(response)
                if wait_s > self._config.spotify_max_retry_after_s:
                    raise SpotifyUnavailableError(
                        f"Spotify rate limit: asked to wait {wait_s:g} s; retry later"
                    )
                logger.warning("Spotify rate limit on %s: waiting %g s", what, wait_s)
                self._config.sleep(wait_s)
                continue
            raise _status_error(status, what, _error_message(response))

    def _pages(self, page: JSON, what: str) -> Iterator[JSON]:
        """The items of a paged answer, following its `next` links: at most
        `max_expanded_tracks` items over at most as many pages, never one page twice (an
        endless or looping `next` would otherwise keep an import busy until its time limit)."""
        limit = self._config.max_expanded_tracks
        items_read = 0
        pages_read: set[str] = set()
        while True:
            items = page.get("items") or []
            items_read += len(items)
            if items_read > limit:
                raise ExpansionTooLargeError(
                    f"Spotify {what} holds more than {limit} tracks "
                    "(SOUNDFORGE_MAX_EXPANDED_TRACKS); import it in parts or raise the limit"
                )
            yield from items
            next_url = page.get("next")
            if not next_url:
                return
            if next_url in pages_read or len(pages_read) >= limit:
                raise ExpansionTooLargeError(
                    f"Spotify's pages of {what} never end (a next link repeats or the pages "
                    f"run past {limit})"
                )
            pages_read.add(next_url)
            page = self.get(next_url, what=what)

    def _check_same_api(self, url: str) -> None:
        # A `next` link elsewhere would receive our bearer token.
        api = urllib.parse.urlsplit(self._api_url)
        target = urllib.parse.urlsplit(url)
        if (target.scheme, target.netloc) != (api.scheme, api.netloc):
            raise SpotifyUnavailableError(f"Spotify API pointed to another host: {url}")

    # -- token -------------------------------------------------------------------------------

    def _access_token(self) -> str:
        with self._token_lock:
            now = self._config.clock()
            if self._token is not None and now < self._token.expires_at:
                return self._token.value
            self._token = self._request_token(now)
            return self._token.value

    def _invalidate(self, token: str) -> None:
        with self._token_lock:
            if self._token is not None and self._token.value == token:
                self._token = None

    def _request_token(self, now: float) -> _Token:
        config = self._config
        try:
            response = self._http.post(
                config.spotify_auth_url,
                data={"grant_type": "client_credentials"},
                auth=(config.spotify_client_id or "", config.spotify_client_secret or ""),
            )
        except httpx.TransportError as error:
            raise _unreachable(config.spotify_auth_url, error) from None
        if response.status_code in (400, 401, 403):
            raise SpotifyAuthError(
                "Spotify refused the client credentials (SOUNDFORGE_SPOTIFY_CLIENT_ID / "
                f"SOUNDFORGE_SPOTIFY_CLIENT_SECRET): {_error_message(response)}"
            )
        if response.status_code != 200:
            raise SpotifyUnavailableError(
                f"Spotify token endpoint answered HTTP {response.status_code}; retry later"
            )
        body = response.json()
        expires_in = float(body.get("expires_in", 3600))
        margin = min(TOKEN_EXPIRY_MARGIN_S, expires_in / 2)
        logger.debug("new Spotify token, valid %g s", expires_in)
        return _Token(value=str(body["access_token"]), expires_at=now + expires_in - margin)


@functools.lru_cache(maxsize=8)
def spotify_client(config: SourceConfig) -> SpotifyClient:
    """The process-wide client for this configuration, so its token is shared and cached."""
    return SpotifyClient(config)


def track_metadata(track: Mapping[str, Any]) -> TrackMetadata:
    """Map a Spotify track object (full, or simplified with `album` filled in) to a row."""
    album = track.get("album") or {}
    spotify_id = str(track["id"])
    spotify_url = (track.get("external_urls") or {}).get("spotify") or (
        f"https://open.spotify.com/track/{spotify_id}"
    )
    duration_ms = track.get("duration_ms")
    artists = ", ".join(a["name"] for a in track.get("artists") or [] if a.get("name"))
    return TrackMetadata(
        title=str(track.get("name") or spotify_id),
        artist=artists or None,
        album=album.get("name") or None,
        album_art_url=largest_image_url(album.get("images") or []),
        duration=round(duration_ms / 1000) if isinstance(duration_ms, int | float) else None,
        spotify_id=spotify_id,
        spotify_url=spotify_url,
        origin=f"spotify:track:{spotify_id}",
    )


def largest_image_url(images: list[Mapping[str, Any]]) -> str | None:
    """The URL of the image with the most pixels (unknown sizes count as 0)."""
    if not images:
        return None
    best = max(images, key=lambda image: (image.get("width") or 0) * (image.get("height") or 0))
    url = best.get("url")
    return str(url) if url else None


def _retry_after_s(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return 1.0


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:  # not Spotify's JSON: say nothing of what came back
        return f"HTTP {response.status_code}, not a Spotify API answer"
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or error)
    description = body.get("error_description") if isinstance(body, dict) else None
    return str(description or error or body)


def _status_error(status: int, what: str, message: str) -> Exception:
    if status == 404:
        return SourceNotFoundError(f"Spotify {what} not found (deleted or a wrong id): {message}")
    if status == 401:
        return SpotifyAuthError(f"Spotify refused a fresh token for {what}: {message}")
    if status == 400:
        return SourceNotFoundError(f"Spotify rejected {what} as invalid: {message}")
    if status == 403:
        return SpotifyAuthError(f"Spotify forbids access to {what}: {message}")
    return SpotifyUnavailableError(f"Spotify answered HTTP {status} for {what}: {message}")


def _unreachable(url: str, error: Exception) -> SpotifyUnavailableError:
    return SpotifyUnavailableError(
        f"cannot reach the Spotify API at {url}: no network connection or the service is down "
        f"({type(error).__name__}: {error or 'no detail'}); retry later"
    )
