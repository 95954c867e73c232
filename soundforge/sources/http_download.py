"""Streamed http(s) downloads with httpx: connect/read timeouts, a bounded number of redirects,
a maximum size, progress in bytes, and resumption with `Range` after a dropped connection or a
stall. The first bytes are sniffed so an HTML page is refused before it is downloaded whole."""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

import httpx

from soundforge.errors import DestinationRefusedError
from soundforge.redact import mask_text, mask_url
from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import (
    DownloadError,
    DownloadNetworkError,
    DownloadTooLargeError,
    NotAudioError,
    SourceNotFoundError,
)
from soundforge.sources.pinned_http import policy_client
from soundforge.sources.validate import SNIFF_BYTES, describe_non_audio, sniff_extension

logger = logging.getLogger(__name__)

ByteProgress = Callable[[int, int | None], None]
"""Called with (bytes written so far, total bytes or None when the server does not say)."""

USER_AGENT = "SoundForge/0.1 (+https://github.com/soundforge)"
CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _DroppedError(Exception):
    """The body stopped before its end; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def build_client(config: SourceConfig) -> httpx.Client:
    """An httpx client with the configured timeouts and redirect limit, whose every connection
    (each redirect hop and resumed request too) passes the destination policy."""
    timeout = httpx.Timeout(
        connect=config.connect_timeout_s,
        read=config.read_timeout_s,
        write=config.read_timeout_s,
        pool=config.connect_timeout_s,
    )
    return policy_client(
        config.destinations,
        timeout=timeout,
        follow_redirects=False,  # `_follow` does it, checking every hop with the policy
        # httpx parses a Location header before handing back the response: check it first, so
        # an odd host form is the policy's refusal, not a parse error taken for a dropped link.
        event_hooks={"response": [partial(_check_location, config)]},
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
    )


def download_http(
    url: str,
    destination: Path,
    config: SourceConfig,
    progress: ByteProgress | None = None,
    *,
    client: httpx.Client | None = None,
) -> int:
    """Download `url` to `destination` (created or truncated) and return its size in bytes.

    On failure `destination` may hold a partial body: the caller removes it. Raises
    `SourceNotFoundError` (404/410), `DownloadError` (other 4xx, too many redirects),
    `DownloadTooLargeError`, `NotAudioError` (the body starts as no known audio) and
    `DownloadNetworkError` (transient: timeouts, 5xx, drops beyond the resume attempts).
    """
    own_client = client is None
    http = client or build_client(config)
    try:
        with open(destination, "wb") as output:
            return _download(http, url, output, config, progress)
    finally:
        if own_client:
            http.close()


def _download(
    http: httpx.Client,
    url: str,
    output: BinaryIO,
    config: SourceConfig,
    progress: ByteProgress | None,
) -> int:
    shown = mask_url(url)  # every message and log line names the URL masked
    written = 0
    total: int | None = None
    validator: str | None = None  # ETag or Last-Modified, sent as If-Range when resuming
    failures = 0
    while True:
        headers = {}
        if written:
            headers["Range"] = f"bytes={written}-"
            if validator:
                headers["If-Range"] = validator
        try:
            with _follow(http, url, headers, config) as response:
                _check_status(response, shown)
                if written and response.status_code == 206:
                    _check_resumed_range(response, written, shown)
                elif written:
                    logger.info("%s: server ignored Range, restarting from byte 0", shown)
                    output.seek(0)
                    output.truncate()
                    written = 0
                if not written:
                    total = _content_length(response)
                    validator = _range_validator(response)
                    if total is not None and total > config.max_download_bytes:
                        raise _too_large(shown, config, total)
                written = _copy_body(
                    response, output,
                    written=written, total=total, shown=shown, config=config, progress=progress,
                )  # fmt: skip
            if total is not None and written < total:
                raise _DroppedError(f"connection closed after {written} of {total} bytes")
            return written
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as error:
            reason = f"timed out after {config.read_timeout_s:g} s without data ({error})"
        except httpx.ConnectTimeout:
            raise DownloadNetworkError(
                f"{shown}: connection timed out after {config.connect_timeout_s:g} s"
            ) from None
        except httpx.ConnectError as error:
            raise DownloadNetworkError(f"{shown}: cannot connect ({error})") from None
        except _TooManyRedirectsError:
            raise DownloadError(
                f"{shown}: more than {config.max_redirects} redirects (SOUNDFORGE_MAX_REDIRECTS)"
            ) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as error:
            reason = f"connection dropped after {written} bytes ({error})"
        except _DroppedError as dropped:
            reason = dropped.reason
        except DestinationRefusedError as error:  # this URL or a redirect hop
            raise DestinationRefusedError(f"{shown}: {error}") from None
        except httpx.HTTPError as error:  # e.g. an invalid redirect target
            raise DownloadError(f"{shown}: {mask_text(str(error))}") from None
        written = output.tell()  # what reached the file before the failure
        failures += 1
        if failures > config.resume_attempts:
            raise DownloadNetworkError(
                f"{shown}: {reason}; gave up after {config.resume_attempts} resume attempts"
            )
        logger.warning("%s: %s; resuming at byte %d (attempt %d)", shown, reason, written, failures)


class _TooManyRedirectsError(Exception):
    """More redirects than `max_redirects`."""


@contextmanager
def _follow(
    http: httpx.Client, url: str, headers: dict[str, str], config: SourceConfig
) -> Iterator[httpx.Response]:
    """GET `url`, following redirects one hop at a time: each target is checked by the
    destination policy (its form here, its address when the connection is made) before any
    request goes there. The final response is streamed."""
    current = url
    for _hop in range(config.max_redirects + 1):
        config.destinations.check_url(current)
        with http.stream("GET", current, headers=headers) as response:
            location = response.headers.get("location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                yield response
                return
        current = urllib.parse.urljoin(current, location)
    raise _TooManyRedirectsError


def _check_location(config: SourceConfig, response: httpx.Response) -> None:
    location = response.headers.get("location")
    if response.status_code in REDIRECT_STATUSES and location:
        config.destinations.check_url(urllib.parse.urljoin(str(response.url), location))


def _check_status(response: httpx.Response, shown: str) -> None:
    status = response.status_code
    if status in (200, 206):
        return
    phrase = f"HTTP {status} {_standard_phrase(status)}".strip()  # not the server's words
    if status in (404, 410):
        raise SourceNotFoundError(f"{shown}: {phrase} (no file at this URL)")
    if status in RETRYABLE_STATUSES or status >= 500:
        raise DownloadNetworkError(f"{shown}: {phrase} (server trouble, worth a retry)")
    raise DownloadError(f"{shown}: {phrase}")


def _standard_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _range_validator(response: httpx.Response) -> str | None:
    """A strong validator for If-Range: a strong ETag, else Last-Modified."""
    etag: str | None = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    last_modified: str | None = response.headers.get("last-modified")
    return last_modified


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length")
    return int(value) if value and value.isdigit() else None


def _check_resumed_range(response: httpx.Response, written: int, shown: str) -> None:
    match = CONTENT_RANGE.match(response.headers.get("content-range", ""))
    if match is None or int(match[1]) != written:
        raise DownloadError(
            f"{shown}: resumed download came back with a wrong range "
            f"(wanted from byte {written})"
        )


def _too_large(shown: str, config: SourceConfig, size: int | None) -> DownloadTooLargeError:
    told = f"{size} bytes" if size is not None else "the body"
    return DownloadTooLargeError(
        f"{shown}: {told} exceeds the download limit of {config.max_download_bytes} bytes "
        "(SOUNDFORGE_MAX_DOWNLOAD_BYTES)"
    )


def _copy_body(
    response: httpx.Response,
    output: BinaryIO,
    *,
    written: int,
    total: int | None,
    shown: str,
    config: SourceConfig,
    progress: ByteProgress | None,
) -> int:
    head = b""
    sniffing = written == 0
    for chunk in response.iter_raw():  # as it arrives: a drop keeps every byte received
        if written + len(chunk) > config.max_download_bytes:
            raise _too_large(shown, config, total)
        if sniffing:
            head += chunk
            if len(head) >= SNIFF_BYTES:
                _check_head(head, shown)
                sniffing = False
        output.write(chunk)
        written += len(chunk)
        if progress is not None:
            progress(written, total)
    if sniffing and head:
        _check_head(head, shown)
    return written


def _check_head(head: bytes, shown: str) -> None:
    if sniff_extension(head) is None:
        raise NotAudioError(f"{shown}: {describe_non_audio(head)}")
