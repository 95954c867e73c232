"""Run the real `soundforge` console script in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOUNDFORGE = str(Path(sys.executable).with_name("soundforge"))


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SOUNDFORGE, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input_text,
        check=False,
    )
