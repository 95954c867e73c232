"""The sources engine (pure: no database): parse what a user gives (a file, a URL, a Spotify
link), expand it into track metadata, and fetch each track's audio into the storage root,
validated. The pipeline builds one `SourceConfig` from the settings and passes it in."""

from soundforge.sources.config import SourceConfig
from soundforge.sources.errors import (
    DownloadError,
    DownloadNetworkError,
    DownloadTooLargeError,
    ImportTooLargeError,
    NoMatchError,
    NotAudioError,
    ResolverError,
    ResolverUnavailableError,
    SourceNotFoundError,
    SpotifyAuthError,
    SpotifyCredentialsMissingError,
    SpotifyUnavailableError,
    StreamNotFetchableError,
    TruncatedAudioError,
    UnsupportedSourceError,
)
from soundforge.sources.fetch import expand_source, fetch_audio
from soundforge.sources.model import (
    HttpSource,
    LocalFileSource,
    Source,
    SpotifySource,
    StoredAudio,
    TrackMetadata,
)
from soundforge.sources.parse import parse_source
from soundforge.sources.spotify import SpotifyClient, spotify_client
from soundforge.sources.validate import ValidatedAudio, validate_audio_file

__all__ = [
    "DownloadError",
    "DownloadNetworkError",
    "DownloadTooLargeError",
    "HttpSource",
    "ImportTooLargeError",
    "LocalFileSource",
    "NoMatchError",
    "NotAudioError",
    "ResolverError",
    "ResolverUnavailableError",
    "Source",
    "SourceConfig",
    "SourceNotFoundError",
    "SpotifyAuthError",
    "SpotifyClient",
    "SpotifyCredentialsMissingError",
    "SpotifySource",
    "SpotifyUnavailableError",
    "StoredAudio",
    "StreamNotFetchableError",
    "TrackMetadata",
    "TruncatedAudioError",
    "UnsupportedSourceError",
    "ValidatedAudio",
    "expand_source",
    "fetch_audio",
    "parse_source",
    "spotify_client",
    "validate_audio_file",
]
