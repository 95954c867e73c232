"""Where the settings come from, readable without pydantic: the env file's path, and whether a
setting is given at all (in the environment or the env file).

`soundforge analyze` needs two settings (the audio limits) and nothing else; checking that
neither is given and using their defaults costs a stat and a read, where building the
`Settings` costs about 0.1 s of imports (pydantic, pydantic-settings): a third of the whole
process for a short file, paid again by every process a shell loop starts.
"""

from __future__ import annotations

import os
from pathlib import Path

from soundforge.errors import ConfigError

DEFAULT_ENV_FILE = Path("/etc/soundforge/soundforge.env")
ENV_PREFIX = "SOUNDFORGE_"


def env_file_path() -> Path | None:
    """The env file the settings read: `SOUNDFORGE_ENV_FILE` (which must exist), else the
    default when it exists, else None."""
    named = os.environ.get("SOUNDFORGE_ENV_FILE")
    if named:
        path = Path(named)
        if not path.is_file():
            raise ConfigError(f"SOUNDFORGE_ENV_FILE={named}: no such file")
        return path
    try:
        present = DEFAULT_ENV_FILE.is_file()
    except OSError as error:  # e.g. /etc/soundforge not readable by this user
        raise ConfigError(
            f"cannot read {DEFAULT_ENV_FILE} ({error.strerror}); run as a user in the "
            "soundforge group, or point SOUNDFORGE_ENV_FILE at a readable file"
        ) from None
    return DEFAULT_ENV_FILE if present else None


def any_given(field_names: tuple[str, ...]) -> bool:
    """Whether any of these settings may be given: its variable (`SOUNDFORGE_<NAME>`, in any
    case, as the settings read it) is in the environment, or the env file mentions the name at
    all (a comment too: a false yes only costs the full settings load, a false no would ignore
    a setting). An env file that cannot be read counts as yes, so the settings report it."""
    variables = {ENV_PREFIX + name.upper() for name in field_names}
    if any(key.upper() in variables for key in os.environ):
        return True
    path = env_file_path()
    if path is None:
        return False
    try:
        text = path.read_text(errors="replace").lower()
    except OSError:
        return True
    return any(name.lower() in text for name in field_names)
