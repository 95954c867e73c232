"""The finer error types of the sources engine; each subclasses `PermanentError` (bad input:
fail the job now) or `TransientError` (network trouble: let the queue retry)."""

from __future__ import annotations

from soundforge.errors import (  # noqa: F401 (re-exported with the other source errors)
    AudioError,
    DestinationRefusedError,
    ImportRootError,
    SourceError,
    TransientError,
)


class UnsupportedSourceError(SourceError):
    """The text is not a local path, file:// URL, http(s) URL or Spotify track/album/playlist."""


class SourceNotFoundError(SourceError):
    """The source names something that does not exist: a missing file, an HTTP 404, a deleted
    Spotify track."""


class SpotifyCredentialsMissingError(SourceError):
    """A Spotify link was given but no client id/secret is configured."""


class SpotifyAuthError(SourceError):
    """Spotify refused the configured client credentials (or a fresh token)."""


class ExpansionTooLargeError(SourceError):
    """An album or playlist expands into more tracks (or pages) than one import may make."""


class SpotifyUnavailableError(TransientError):
    """The Spotify API cannot be reached, answers 5xx, or rate-limits us for too long."""


class DownloadError(SourceError):
    """An http(s) download was refused for good: a 4xx status, too many redirects."""


class DownloadTooLargeError(SourceError):
    """The body is larger than `max_download_bytes`."""


class ImportTooLargeError(SourceError):
    """A local file is larger than `max_import_bytes` (or grew past it while copied)."""


class DownloadNetworkError(TransientError):
    """Timeouts, refused or dropped connections (after the resume attempts), 5xx answers."""


class NotAudioError(AudioError):
    """A file is too small, or its first bytes are no known audio container (an HTML page...)."""


class TruncatedAudioError(AudioError):
    """A file starts like audio but ends before its own header says it should."""


class NoMatchError(SourceError):
    """The resolver found no candidate whose duration is close enough to the Spotify track."""


class ResolverUnavailableError(SourceError):
    """The chosen resolver (spotdl) is not installed."""


class StreamNotFetchableError(SourceError):
    """The stream found for a source can only be fetched by an external program (ffmpeg,
    rtmpdump) that would bypass the destination policy and the download limit."""


class ResolverError(TransientError):
    """The resolver failed in a way that may pass (network, the search service)."""
