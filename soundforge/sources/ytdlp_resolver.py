"""The yt-dlp resolver: find a Spotify track's audio by searching "artist - title"
(`resolver_search_template`, default YouTube's first five results), pick the candidate whose
duration is closest to Spotify's, refuse it when more than `duration_tolerance_s` off, and
download its best audio stream as-is (no re-encoding).

Every transfer stays in this process, where the policy proxy and the size limit see it: yt-dlp
may use only its own HTTP, HLS and DASH downloaders, and never ffmpeg (as a downloader, where an
HLS stream it cannot read natively would go, or as a fix-up afterwards: an HLS download stays an
MPEG-TS file, which our decoder reads). A stream only an external program could fetch (RTMP,
SAMPLE-AES or live HLS) fails permanently with `StreamNotFetchableError`.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yt_dlp
from yt_dlp.downloader import get_suitable_downloader
from yt_dlp.downloader.dash import DashSegmentsFD
from yt_dlp.downloader.hls import HlsFD
from yt_dlp.downloader.http import HttpFD
from yt_dlp.networking.exceptions import NoSupportingHandlers
from yt_dlp.utils import DownloadError as YtDlpDownloadError

from soundforge.redact import mask_text, mask_url
from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import (
    DownloadTooLargeError,
    NoMatchError,
    ResolverError,
    SourceNotFoundError,
    StreamNotFetchableError,
)
from soundforge.sources.http_download import ByteProgress
from soundforge.sources.model import TrackMetadata
from soundforge.sources.policy_proxy import PolicyProxy

logger = logging.getLogger(__name__)

IN_PROCESS_DOWNLOADERS = (HttpFD, HlsFD, DashSegmentsFD)
"""yt-dlp's downloaders that fetch through its own networking (so through the policy proxy) and
report their bytes to the progress hook; any other would run rtmpdump, ffmpeg or the like."""
NO_FFMPEG = "/dev/null/no-ffmpeg"  # `ffmpeg_location` for yt-dlp: a path that cannot exist


@dataclass(frozen=True)
class Candidate:
    """One search result: what yt-dlp listed, with its duration when known."""

    title: str
    duration_s: float | None
    entry: Mapping[str, Any]


class _YtDlpLogger:
    """Routes yt-dlp's messages into `logging` instead of stdout."""

    def debug(self, message: str) -> None:
        logger.debug("yt-dlp: %s", message)

    def info(self, message: str) -> None:
        logger.debug("yt-dlp: %s", message)

    def warning(self, message: str) -> None:
        logger.info("yt-dlp: %s", message)

    def error(self, message: str) -> None:
        logger.warning("yt-dlp: %s", message)


class _TooLargeError(Exception):
    """Raised from the progress hook to stop a download over the size limit."""


class _ExternalDownloaderError(Exception):
    """Raised before a transfer that yt-dlp would hand to an external program."""


class _InProcessYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]  # yt_dlp is untyped
    """A YoutubeDL that refuses, before it starts, any transfer its own downloaders would not
    make (an RTMP stream for rtmpdump, a live one for ffmpeg)."""

    def dl(self, name: str, info: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        downloader = get_suitable_downloader(info, self.params, to_stdout=name == "-")
        if downloader not in IN_PROCESS_DOWNLOADERS:
            raise _ExternalDownloaderError(str(info.get("protocol") or "?"))
        return super().dl(name, info, *args, **kwargs)


def search_query(metadata: TrackMetadata) -> str:
    return f"{metadata.artist} - {metadata.title}" if metadata.artist else metadata.title


def search_target(config: SourceConfig, query: str) -> str:
    """The template with `{query}` filled in (URL-quoted when the template is an http URL)."""
    template = config.resolver_search_template
    if template.startswith(("http://", "https://")):
        query = urllib.parse.quote(query, safe="")
    return template.replace("{query}", query)


def pick_candidate(
    candidates: list[Candidate], duration_s: float | None, tolerance_s: float, query: str
) -> Candidate:
    """The candidate closest in duration; the first one when Spotify gave no duration."""
    if not candidates:
        raise NoMatchError(f"no search results for {query!r}")
    if duration_s is None:
        return candidates[0]
    timed = [c for c in candidates if c.duration_s is not None]
    if not timed:
        raise NoMatchError(f"no search result for {query!r} states its duration")
    best = min(timed, key=lambda c: abs(float(c.duration_s or 0) - duration_s))
    off_by = abs(float(best.duration_s or 0) - duration_s)
    if off_by > tolerance_s:
        raise NoMatchError(
            f"no search result for {query!r} lasts {duration_s:g} s within {tolerance_s:g} s "
            f"(closest: {best.title!r}, {best.duration_s:g} s)"
        )
    return best


def _base_options(config: SourceConfig) -> dict[str, Any]:
    return {
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _YtDlpLogger(),
        "cachedir": False,
        "socket_timeout": config.read_timeout_s,
        "noplaylist": True,
        "retries": config.resume_attempts,
        "continuedl": True,
        # Every transfer in this process, through the policy proxy: no external downloader
        # (which would do its own networking), no live streams, and no ffmpeg at all.
        "external_downloader": {"default": "native"},
        "match_filter": yt_dlp.utils.match_filter_func("!is_live"),
        "ffmpeg_location": NO_FFMPEG,
        "fixup": "never",
    }


def _run(
    config: SourceConfig, options: dict[str, Any], what: str,
    call: Callable[[yt_dlp.YoutubeDL], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    """Run `call` on a YoutubeDL whose every connection goes through a `PolicyProxy`; maps
    yt-dlp's failures to the engine's errors (a policy refusal first: it is permanent)."""
    with PolicyProxy(config.destinations, connect_timeout_s=config.connect_timeout_s,
                     idle_timeout_s=config.read_timeout_s) as proxy:  # fmt: skip
        ydl_options = {**_base_options(config), **options, "proxy": proxy.url}
        with _InProcessYoutubeDL(ydl_options) as ydl:
            try:
                return call(ydl)
            except (_TooLargeError, _ExternalDownloaderError, NoSupportingHandlers) as error:
                raise _map_error(error, what) from None  # yt-dlp re-raised them as they were
            except YtDlpDownloadError as error:
                proxy.raise_if_refused()
                raise _map_error(error, what) from None


def search(config: SourceConfig, query: str) -> list[Candidate]:
    """Run the search without downloading; every listed entry becomes a candidate."""
    target = search_target(config, query)
    options = {"extract_flat": "in_playlist", "noplaylist": False}
    info = _run(config, options, f"search {query!r}",
                lambda ydl: ydl.extract_info(target, download=False))  # fmt: skip
    entries = info.get("entries") if info.get("_type") == "playlist" else [info]
    candidates = []
    for entry in entries or []:
        if not entry:
            continue
        duration = entry.get("duration")
        candidates.append(Candidate(
            title=str(entry.get("title") or entry.get("url") or "?"),
            duration_s=float(duration) if isinstance(duration, int | float) else None,
            entry=entry,
        ))  # fmt: skip
    logger.debug("search %r: %d candidates", query, len(candidates))
    return candidates


def download(
    metadata: TrackMetadata,
    staging_prefix: Path,
    config: SourceConfig,
    progress: ByteProgress | None = None,
) -> Path:
    """Search, pick and download; returns the downloaded file (named `staging_prefix` plus
    the stream's extension, in the same folder). Partial files share that prefix."""
    query = search_query(metadata)
    candidate = pick_candidate(
        search(config, query), metadata.duration, config.duration_tolerance_s, query
    )
    logger.info("resolved %r to %r (%s s)", query, candidate.title, candidate.duration_s)
    return download_entry(candidate.entry, staging_prefix, config, progress)


def download_entry(
    entry: Mapping[str, Any],
    staging_prefix: Path,
    config: SourceConfig,
    progress: ByteProgress | None = None,
) -> Path:
    """Download one search entry's best audio to `staging_prefix.<ext>`."""
    options = {
        "format": "bestaudio/best",
        "outtmpl": f"{staging_prefix}.%(ext)s",
        "max_filesize": config.max_download_bytes,
        "progress_hooks": [_progress_hook(config, progress)],
        "overwrites": True,
    }
    what = str(entry.get("title") or mask_url(str(entry.get("url"))))
    result = _run(config, options, what,
                  lambda ydl: ydl.process_ie_result(dict(entry), download=True))  # fmt: skip
    downloads = result.get("requested_downloads") or []
    path = Path(downloads[0]["filepath"]) if downloads and downloads[0].get("filepath") else None
    if path is None or not path.is_file():
        raise DownloadTooLargeError(
            f"{result.get('title')!r}: nothing downloaded; larger than the download limit of "
            f"{config.max_download_bytes} bytes (SOUNDFORGE_MAX_DOWNLOAD_BYTES)?"
        )
    return path


def _progress_hook(
    config: SourceConfig, progress: ByteProgress | None
) -> Callable[[dict[str, Any]], None]:
    def hook(status: dict[str, Any]) -> None:
        done = int(status.get("downloaded_bytes") or 0)
        if done > config.max_download_bytes:
            raise _TooLargeError(config.max_download_bytes)
        total = status.get("total_bytes") or status.get("total_bytes_estimate")
        if progress is not None and status.get("status") in ("downloading", "finished"):
            progress(done, int(total) if total else None)

    return hook


def _too_large(what: str, error: _TooLargeError) -> DownloadTooLargeError:
    return DownloadTooLargeError(
        f"{what}: exceeds the download limit of {error.args[0]} bytes "
        "(SOUNDFORGE_MAX_DOWNLOAD_BYTES)"
    )


def _not_fetchable(what: str, why: str) -> StreamNotFetchableError:
    return StreamNotFetchableError(
        f"{what}: {why}; refused: only yt-dlp's own HTTP, HLS and DASH transfers go through the "
        "destination policy and the download limit"
    )


def _map_error(error: Exception, what: str) -> Exception:
    """The engine's error for one of yt-dlp's: a hook's or `dl`'s own exception and a URL scheme
    yt-dlp has no client for (`NoSupportingHandlers`), raised as they are or as the cause of a
    `DownloadError`, then what a `DownloadError`'s message says."""
    cause = error
    if isinstance(error, YtDlpDownloadError) and error.exc_info:
        cause = error.exc_info[1]
    if isinstance(cause, _TooLargeError):
        return _too_large(what, cause)
    if isinstance(cause, _ExternalDownloaderError):
        return _not_fetchable(what, f"its {cause.args[0]} stream needs an external downloader")
    if isinstance(cause, NoSupportingHandlers):
        return _not_fetchable(what, mask_text(str(cause)))
    message = mask_text(str(error).removeprefix("ERROR: "))
    if "ffmpeg" in message.lower():  # yt-dlp wanted ffmpeg (an HLS stream it cannot read itself)
        return _not_fetchable(what, "this HLS stream (encrypted or live) needs ffmpeg to download")
    if "HTTP Error 404" in message or "HTTP Error 410" in message or "Unsupported URL" in message:
        return SourceNotFoundError(f"{what}: {message}")
    return ResolverError(f"yt-dlp failed for {what}: {message}")
