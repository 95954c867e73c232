"""Stem separation engine (demucs): a path in, stem files and progress callbacks out; no
database. `STEM_NAMES` and the error types import without torch (the core install); `Separator`
and `write_local_repo` need the `stems` extra and are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from soundforge.separation.errors import (
    ModelLoadError,
    ModelNotFoundError,
    SeparationError,
    StemsExtraMissingError,
    UnknownModelError,
)
from soundforge.separation.registry import DEFAULT_MODEL, MODEL_NAMES, STEM_NAMES, stem_names

if TYPE_CHECKING:
    from soundforge.separation.local_repo import write_local_repo
    from soundforge.separation.separator import Separator

__all__ = [
    "DEFAULT_MODEL",
    "MODEL_NAMES",
    "STEM_NAMES",
    "ModelLoadError",
    "ModelNotFoundError",
    "SeparationError",
    "Separator",
    "StemsExtraMissingError",
    "UnknownModelError",
    "stem_names",
    "write_local_repo",
]

_LAZY = {
    "Separator": "soundforge.separation.separator",
    "write_local_repo": "soundforge.separation.local_repo",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.split(".")[0] in ("torch", "demucs", "soundfile", "soxr"):
            raise StemsExtraMissingError(error.name) from None
        raise
    return getattr(module, name)
