"""The sources engine's configuration: one frozen value the caller builds once from the settings
(`SourceConfig.from_settings`) and passes in; nothing in this package reads the environment."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.source_policy import DestinationPolicy, ImportRoots

if TYPE_CHECKING:
    from soundforge.settings import Settings

Resolver = Literal["yt-dlp", "spotdl"]


@dataclass(frozen=True)
class SourceConfig:
    """Every knob the sources engine uses. `sleep` and `clock` are injectable for tests."""

    spotify_client_id: str | None = None
    spotify_client_secret: str | None = field(default=None, repr=False)
    spotify_api_url: str = "https://api.spotify.com/v1"
    spotify_auth_url: str = "https://accounts.spotify.com/api/token"
    resolver: Resolver = "yt-dlp"
    resolver_search_template: str = "ytsearch5:{query}"
    max_download_bytes: int = 500 * 1024 * 1024
    max_import_bytes: int = 2 * 1024**3
    """The largest local file imported (hard-linked or copied into the storage root)."""
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0
    max_redirects: int = 5
    duration_tolerance_s: float = 5.0
    max_expanded_tracks: int = 10_000
    """How many tracks one album or playlist may expand into (and pages read for it)."""
    resume_attempts: int = 3
    """How often an http download is resumed (Range) after a dropped connection or a stall."""
    spotify_rate_limit_retries: int = 3
    """How many `429` answers in a row are waited out before giving up (transient)."""
    spotify_max_retry_after_s: float = 60.0
    """A longer `Retry-After` is not slept through: the job is retried later by the queue."""
    spotdl_timeout_s: float = 900.0
    """How long one `spotdl download` may run."""
    audio_limits: AudioLimits = DEFAULT_LIMITS
    """What a fetched file may ask a decoder for (rate, channels, duration, decoded size)."""
    destinations: DestinationPolicy = field(default_factory=DestinationPolicy)
    """Where downloads, resolvers and the Spotify client may connect (one policy for all)."""
    import_roots: ImportRoots = field(default_factory=ImportRoots)
    """The folders local sources may come from; the default allows none."""
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> SourceConfig:
        return cls(
            spotify_client_id=settings.spotify_client_id,
            spotify_client_secret=settings.spotify_client_secret,
            spotify_api_url=settings.spotify_api_url,
            spotify_auth_url=settings.spotify_auth_url,
            resolver=settings.resolver,
            resolver_search_template=settings.resolver_search_template,
            max_download_bytes=settings.max_download_bytes,
            max_import_bytes=settings.max_import_bytes,
            connect_timeout_s=settings.connect_timeout_s,
            read_timeout_s=settings.read_timeout_s,
            max_redirects=settings.max_redirects,
            duration_tolerance_s=settings.duration_tolerance_s,
            max_expanded_tracks=settings.max_expanded_tracks,
            audio_limits=AudioLimits.from_settings(settings),
            destinations=DestinationPolicy.allowing(settings.allowed_networks),
            import_roots=ImportRoots(settings.import_root_paths),
        )

    @property
    def has_spotify_credentials(self) -> bool:
        return bool(self.spotify_client_id and self.spotify_client_secret)
