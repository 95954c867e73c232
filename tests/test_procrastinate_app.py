"""`soundforge.app.app` reads its settings when it is used, not when it is imported: an invalid
setting lets the module import and fails the first command that opens the app, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from soundforge.app import build_app
from soundforge.settings import load_settings

PROCRASTINATE = str(Path(sys.executable).with_name("procrastinate"))
BAD = "SOUNDFORGE_DOWNLOAD_CONCURRENCY"


def _bad_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUNDFORGE_")}
    (tmp_path / "empty.env").write_text("")
    env["SOUNDFORGE_ENV_FILE"] = str(tmp_path / "empty.env")
    env[BAD] = "many"
    return env


def test_importing_the_app_reads_no_settings(tmp_path: Path) -> None:
    probe = "import soundforge.app as a; print(len(a.app.periodic_registry.periodic_tasks))"
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, env=_bad_env(tmp_path), cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"  # schedules wait for the settings


def test_procrastinate_commands_fail_on_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    for command in (["worker", "--queues=download"], ["defer", "soundforge.analyze", "{}"]):
        result = subprocess.run(
            [PROCRASTINATE, "--app=soundforge.app.app", *command], check=False,
            env=_bad_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 1, (command, result.stderr)
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"invalid setting {BAD}: "), line


def test_the_app_schedules_maintenance_with_the_settings_it_is_given() -> None:
    settings = load_settings(rescue_cron="*/7 * * * *")
    app = build_app(settings)
    crons = {key[0]: task.cron for key, task in app.periodic_registry.periodic_tasks.items()}
    assert crons["soundforge.rescue_stalled"] == "*/7 * * * *"
    assert app.configure() is settings
