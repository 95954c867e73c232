"""The models SoundForge separates with and the stems each one produces.

Importing this module needs neither torch nor demucs, so the core install (CLI, tasks, queries)
can name models and stems without the `stems` extra.
"""

from __future__ import annotations

from typing import Final

from soundforge.separation.errors import UnknownModelError

DEFAULT_MODEL: Final = "htdemucs"
FOUR_STEMS: Final = ("drums", "bass", "other", "vocals")
SIX_STEMS: Final = (*FOUR_STEMS, "guitar", "piano")

STEM_NAMES: Final[dict[str, tuple[str, ...]]] = {
    "htdemucs": FOUR_STEMS,
    "htdemucs_ft": FOUR_STEMS,
    "htdemucs_6s": SIX_STEMS,
    "mdx_extra": FOUR_STEMS,
}
"""Stems per model name, in the order the model emits them."""

MODEL_NAMES: Final = tuple(STEM_NAMES)


def check_model_name(name: str) -> str:
    """`name` itself, or `UnknownModelError` listing the names we know."""
    if name not in STEM_NAMES:
        raise UnknownModelError(
            f"unknown separation model {name!r}; choose one of {', '.join(MODEL_NAMES)}"
        )
    return name


def stem_names(name: str) -> tuple[str, ...]:
    """The stems model `name` writes, in order."""
    return STEM_NAMES[check_model_name(name)]
