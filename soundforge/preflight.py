"""What a process that runs jobs checks before it takes any (`soundforge worker`, `soundforge
run`): the database has the schema this version needs, and the storage root exists (or can be
created) and is writable, or the bucket takes a probe object. Each failure is one line that
says what to do, exit code 2, instead of jobs failing one by one later with a message that
blames their source."""

from __future__ import annotations

import getpass
import os

from soundforge.errors import ConfigError, StorageError
from soundforge.file_store import open_storage
from soundforge.migrations import check_schema
from soundforge.settings import Settings


class StorageUnwritableError(ConfigError):
    """The storage root cannot be created or written by this process's user."""


def check_storage(settings: Settings) -> None:
    """The file store can be written: the local folder (created if needed), or the bucket
    (a probe object is written and deleted; `ConfigError` naming the URL otherwise)."""
    try:
        open_storage(settings).check()
    except StorageError as error:  # the local folder
        raise StorageUnwritableError(
            f"{error}; set SOUNDFORGE_STORAGE_PATH to a folder this user ({_user()}) may write, "
            "or give it write access there"
        ) from None


def check_service_start(settings: Settings) -> None:
    """Both checks, schema first (a database that cannot be reached fails here too)."""
    check_schema(settings.database_url)
    check_storage(settings)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
