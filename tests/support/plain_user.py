"""Running SoundForge's Python as an ordinary account when the tests run as root (permissions
do not stop root, so a test of "this user cannot write there" must drop it): a Python of this
version that account can execute, with this checkout and its site-packages on PYTHONPATH."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PLAIN_USER = "nobody"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def interpreter_for(account: str) -> str | None:
    """A Python of this version the account can run (a root-only pyenv one is not)."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        try:
            check = subprocess.run([candidate, "-c", "import sys"], capture_output=True,
                                   check=False, user=account, cwd="/")  # fmt: skip
        except OSError:  # not executable by the account
            continue
        if check.returncode == 0:
            return candidate
    return None


def python_path() -> str:
    site_paths = [path for path in sys.path if path.endswith("site-packages")]
    return os.pathsep.join([str(REPO_ROOT), *site_paths])


def run_python_as_plain_user(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python ARGS` as PLAIN_USER when root (skips when no Python is runnable by it), as this
    user otherwise."""
    extra: dict[str, Any] = {}
    interpreter = sys.executable
    if os.geteuid() == 0:
        found = interpreter_for(PLAIN_USER)
        if found is None:
            pytest.skip(f"no Python the `{PLAIN_USER}` account can run")
        interpreter = found
        env = {**env, "PYTHONPATH": python_path()}
        extra = {"user": PLAIN_USER, "group": "nogroup", "extra_groups": [], "cwd": "/"}
    return subprocess.run([interpreter, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, **extra)  # fmt: skip
