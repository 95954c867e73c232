"""deploy/soundforge.service and its companions, checked with systemd's own tools:
`systemd-analyze verify` finds nothing to say about the unit, `systemd-analyze security
--offline=true` rates it 2.0 or lower, and the sysusers/tmpfiles snippets do what they say.

`verify` insists that every Exec command exists; it runs against a scratch root holding the
unit file byte for byte, stand-ins for its commands at their install paths and the host's
systemd units, so what it reads is the real file and nothing installed on the host matters.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from soundforge import settings_source
from soundforge.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNIT = DEPLOY / "soundforge.service"
ENV_EXAMPLE = DEPLOY / "soundforge.env.example"
SYSUSERS = DEPLOY / "sysusers.d-soundforge.conf"
TMPFILES = DEPLOY / "tmpfiles.d-soundforge.conf"
MAX_EXPOSURE = 2.0
# soundforge.supervisor.STOP_MARGIN_S: after the grace, time to requeue and unregister.
SUPERVISOR_STOP_MARGIN_S = 15.0
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
EXEC_KEYS = ("ExecStartPre", "ExecStart", "ExecStartPost", "ExecReload", "ExecStop",
             "ExecStopPost", "ExecCondition")  # fmt: skip
STUB_TARGETS = ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target",
                "network-online.target")  # fmt: skip

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def unit_directives(path: Path = UNIT) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment, in order (keys may repeat)."""
    directives: list[tuple[str, str, str]] = []
    section = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.append((section, key.strip(), value.strip()))
    return directives


def service_values(key: str) -> list[str]:
    return [value for section, name, value in unit_directives() if section == "Service"
            and name == key]  # fmt: skip


def single(key: str) -> str:
    values = service_values(key)
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def timespan_s(value: str) -> float:
    """A systemd time span in seconds, as systemd itself parses it."""
    shown = subprocess.run(
        ["systemd-analyze", "timespan", value], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"μs:\s*(\d+)", shown)
    assert match, shown
    return int(match.group(1)) / 1e6


def command_path(command_line: str) -> str:
    """The executable of an Exec line, without systemd's prefixes (`-`, `@`, `+`, `!`, `:`)."""
    return command_line.split(maxsplit=1)[0].lstrip("-@+!:")


def make_verify_root(root: Path, unit: Path = UNIT) -> None:
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copyfile(unit, root / "etc/systemd/system" / unit.name)
    units = root / "usr/lib/systemd/system"
    host_units = next((path for path in HOST_UNIT_DIRS if path.is_dir()), None)
    if host_units is not None:
        shutil.copytree(host_units, units, symlinks=True)
    else:
        units.mkdir(parents=True)
        for target in STUB_TARGETS:
            (units / target).write_text("[Unit]\nDescription=stand-in\n", encoding="utf-8")
    for section, key, value in unit_directives(unit):
        if section == "Service" and key in EXEC_KEYS:
            stand_in = root / command_path(value).lstrip("/")
            stand_in.parent.mkdir(parents=True, exist_ok=True)
            stand_in.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
            stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def verify(root: Path, unit_name: str = UNIT.name) -> tuple[int, list[str]]:
    """Exit status of `systemd-analyze verify` and the lines it printed about our unit."""
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit_name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if "soundforge" in line]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    make_verify_root(tmp_path)
    returncode, complaints = verify(tmp_path)
    assert complaints == []
    assert returncode == 0


def test_verify_harness_reports_a_bad_directive_and_a_missing_command(tmp_path: Path) -> None:
    """The harness above would pass vacuously if `verify` never read our file."""
    broken = tmp_path / "soundforge.service"
    broken.write_text(
        UNIT.read_text(encoding="utf-8").replace(
            "ProtectSystem=strict", "ProtectSystem=sideways"
        ),
        encoding="utf-8",
    )
    root = tmp_path / "root"
    make_verify_root(root, broken)
    _, complaints = verify(root)
    assert any("sideways" in line for line in complaints), complaints

    (root / command_path(single("ExecStart")).lstrip("/")).unlink()
    returncode, complaints = verify(root)
    assert returncode != 0
    assert any("not executable" in line for line in complaints), complaints


def security_exposure(unit: Path) -> tuple[float, str]:
    """`systemd-analyze security --offline=true`'s overall exposure of `unit`, and its output."""
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    pattern = rf"Overall exposure level for {re.escape(unit.name)}:\s*(\d+(?:\.\d+)?)"
    match = re.search(pattern, output)
    assert match, output
    return float(match.group(1)), output


def test_unit_security_exposure_is_at_most_2_0() -> None:
    exposure, output = security_exposure(UNIT)
    assert exposure <= MAX_EXPOSURE, output


def test_unit_allows_writable_executable_memory_for_torch() -> None:
    assert service_values("MemoryDenyWriteExecute") in ([], ["no"])


def test_unit_runs_the_notify_supervisor_after_migrations_as_its_own_user() -> None:
    assert single("Type") == "notify"
    assert single("NotifyAccess") == "main"
    assert single("Restart") == "always"
    assert timespan_s(single("WatchdogSec")) > 0
    assert single("User") == "soundforge"
    assert single("ExecStart") == "/opt/soundforge/venv/bin/soundforge run"
    assert "/opt/soundforge/venv/bin/soundforge migrate" in single("ExecStartPre")
    assert single("EnvironmentFile") == str(settings_source.DEFAULT_ENV_FILE)


def test_unit_stops_by_letting_the_supervisor_drain_within_its_grace() -> None:
    """SIGTERM to the supervisor only (it drains its workers), and systemd waits longer than
    the default grace plus the supervisor's margin for requeueing before it kills."""
    assert single("KillMode") == "mixed"
    assert single("KillSignal") == "SIGTERM"
    grace_s = Settings.model_fields["shutdown_grace_s"].default
    assert timespan_s(single("TimeoutStopSec")) > grace_s + SUPERVISOR_STOP_MARGIN_S


def test_unit_keeps_storage_and_caches_in_its_state_and_cache_directories() -> None:
    assert single("StateDirectory") == "soundforge"
    assert single("CacheDirectory") == "soundforge"
    environment = dict(
        assignment.split("=", 1)
        for line in service_values("Environment")
        for assignment in line.split()
    )
    assert environment["SOUNDFORGE_STORAGE_PATH"] == "%S/soundforge"
    assert environment["XDG_CACHE_HOME"] == "%C/soundforge"
    assert "NUMBA_CACHE_DIR" not in environment  # nothing the service runs uses numba
    # The code's default storage path is the same folder systemd's %S/soundforge names.
    assert Settings.model_fields["storage_path"].default == Path("/var/lib/soundforge")
    assert set(single("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_env_example_loads_into_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SOUNDFORGE_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SOUNDFORGE_ENV_FILE", str(ENV_EXAMPLE))
    loaded = load_settings()
    assert loaded.database_url.startswith("postgresql://soundforge_app:")
    assert "SOUNDFORGE_MIGRATION_DATABASE_URL=postgresql://soundforge_owner:" in (
        ENV_EXAMPLE.read_text(encoding="utf-8")
    )


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="no systemd-tmpfiles")
@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles must run as root to chown")
def test_sysusers_and_tmpfiles_snippets_create_the_user_and_private_directories(
    tmp_path: Path,
) -> None:
    (tmp_path / "etc").mkdir()
    subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    passwd = (tmp_path / "etc/passwd").read_text(encoding="utf-8").splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("soundforge:"))
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert 0 < uid < 1000
    assert home == "/var/lib/soundforge"
    assert shell.endswith("nologin")

    subprocess.run(
        ["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    expected = {
        "etc/soundforge": (0, gid),
        "var/lib/soundforge": (uid, gid),
        "var/cache/soundforge": (uid, gid),
    }
    for relative, (owner, group) in expected.items():
        info = (tmp_path / relative).stat()
        assert (info.st_uid, info.st_gid) == (owner, group), relative
        assert stat.S_IMODE(info.st_mode) == 0o750, relative
    imports = (tmp_path / "var/lib/soundforge/imports").stat()  # the default import root
    assert (imports.st_uid, imports.st_gid, stat.S_IMODE(imports.st_mode)) == (uid, gid, 0o2770)
