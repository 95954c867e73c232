"""The one way untrusted text reaches a terminal. Titles, artists, paths, URLs and errors come
from whoever queued a job, from a file's tags or from a remote server: `safe` turns any of them
into one harmless line (terminal escape sequences, control and format characters, line breaks
removed; rich markup escaped), and `say` prints a line built from literal text and `safe`
values, rendering the markup so an escaped value comes out exactly as it was. Rich consoles
(the progress bars) take `safe` values directly.

rich is imported on first use, not with this module: `soundforge analyze --json` prints no
markup, and rich's import is a tenth of that whole process on a short file.
"""

from __future__ import annotations

import re
import sys
from typing import TextIO

# CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), and the other two-byte ESC sequences.
_TERMINAL_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]|\x9b[0-?]*[ -/]*[@-~]"
)


def safe(value: object) -> str:
    """`value` as one line a terminal shows literally: escape sequences dropped, every other
    non-printable character (controls, line and paragraph separators, bidi overrides) turned
    into a space, rich markup escaped."""
    text = _TERMINAL_ESCAPE.sub("", str(value))
    text = "".join(char if char.isprintable() else " " for char in text)
    from rich.markup import escape

    return escape(text)


def say(line: str, file: TextIO | None = None) -> None:
    """Print one line of literal text and `safe` values, as plain text (no styles, no emoji
    codes, no wrapping)."""
    from rich.text import Text

    print(Text.from_markup(line, emoji=False).plain, file=file or sys.stdout)
