"""Errors the separation engine raises for bad input or configuration (all permanent: a retry
of the same job cannot succeed), each with a message that says what to do."""

from __future__ import annotations

from soundforge.errors import PermanentError


class SeparationError(PermanentError):
    """Base of the separation engine's own errors."""


class UnknownModelError(SeparationError):
    """The model name is not one SoundForge knows how to separate with."""


class ModelNotFoundError(SeparationError):
    """The model's weights are not where we looked; the message says where to put them."""


class ModelLoadError(SeparationError):
    """The weights were found but could not be loaded (corrupt file, wrong checksum)."""


class StemsExtraMissingError(SeparationError):
    """torch/demucs are not installed: separation needs the `stems` extra."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"stem separation needs {missing}, which is not installed; "
            "install the stems extra: pip install 'soundforge[stems]' -c constraints.txt"
        )
