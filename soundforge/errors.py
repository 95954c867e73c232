"""Exception types a user can cause, with messages that say what to do.

`PermanentError` means the input itself is bad (retrying cannot help): a task fails its job row
at once. `TransientError` means the world may change (network, a busy resource): a task lets
Procrastinate retry it. The CLI turns any `SoundForgeError` into one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Callable


class SoundForgeError(Exception):
    """Base of every error a user can cause; `str(error)` is the one line shown to them."""

    exit_code: int = 1


class PermanentError(SoundForgeError):
    """Bad input or configuration: retrying the same job cannot succeed."""


class TransientError(SoundForgeError):
    """A failure that may go away on its own (network, timeouts): worth a retry."""


class ConfigError(PermanentError):
    """A setting is missing or invalid."""

    exit_code = 2


class DatabaseUnavailableError(SoundForgeError):
    """PostgreSQL cannot be reached; the message names host/port/database, never the password."""

    exit_code = 2


class AudioError(PermanentError):
    """A file is missing, not audio, truncated, empty or in a format we cannot decode."""


class FfmpegMissingError(AudioError):
    """The input needs ffmpeg to decode or extract and ffmpeg is not on PATH."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} needs ffmpeg, which is not installed or not on PATH; "
            "install it (Debian/Ubuntu: apt-get install ffmpeg; macOS: brew install ffmpeg)"
        )


class StorageError(PermanentError):
    """A path escapes the storage root or a stored file is not where its row says."""


class SourceError(PermanentError):
    """A source (path, URL, Spotify link) is malformed, unsupported or does not exist."""


class DestinationRefusedError(SourceError):
    """The destination policy refuses an address (loopback, private, metadata...): permanent;
    the message names the rule and never quotes a reply."""


class ImportRootError(SourceError):
    """A local source lies outside every folder in `SOUNDFORGE_IMPORT_ROOTS`."""


class InvalidIdError(PermanentError):
    """A track or job id given by a user is not a UUID."""


class StaleRowError(SoundForgeError):
    """An optimistic-lock update lost: the row changed since it was read."""


class IllegalTransitionError(PermanentError):
    """A job status or progress move the status machine forbids."""


class StageTimeLimitError(TransientError):
    """An attempt ran past its stage's time limit and its engine was stopped (a failed
    attempt: retried while attempts remain)."""


class JobAbortedError(SoundForgeError):
    """An engine stopped because its `should_abort` callback said so (cancel, time limit)."""


ProgressCallback = Callable[[float], None]
"""Engines report progress as a percentage, 0..100, never decreasing."""

AbortCheck = Callable[[], bool]
"""Engines call this between units of work; True means stop and raise `JobAbortedError`."""
