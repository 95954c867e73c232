"""The real wheel: everything lives under `soundforge` (the repo's `tasks/` folder becomes
`soundforge.tasks`), and the installed copy imports its tasks from itself."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (built,) = out.glob("soundforge-*.whl")
    return built


def test_wheel_has_only_the_soundforge_package_at_the_top(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert {name for name in top if not name.endswith(".dist-info")} == {"soundforge"}
    assert "soundforge/tasks/__init__.py" in names
    assert "soundforge/tasks/maintenance.py" in names
    assert "soundforge/_schema/001_music_tables.sql" in names


def test_installed_wheel_registers_its_tasks_from_soundforge_tasks(
    wheel: Path, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    assert not (target / "tasks").exists()
    probe = (
        "import soundforge.tasks as t, soundforge.app as a; "
        "print(t.__file__); print(sorted(t.blueprint.tasks))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, cwd=tmp_path, env={"PYTHONPATH": str(target)},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    tasks_file, names = result.stdout.splitlines()
    assert Path(tasks_file).is_relative_to(target)
    assert "soundforge.download" in names and "soundforge.rescue_stalled" in names
