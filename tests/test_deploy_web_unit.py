"""deploy/soundforge-web.service, checked with systemd's own tools like the daemon's unit:
`systemd-analyze verify` is clean, `systemd-analyze security --offline=true` rates it 2.0 or
lower, and it runs `soundforge serve` on the loopback default as the soundforge user."""

from __future__ import annotations

from pathlib import Path

from tests.test_deploy_systemd import (
    DEPLOY,
    MAX_EXPOSURE,
    make_verify_root,
    pytestmark,
    security_exposure,
    unit_directives,
    verify,
)

WEB_UNIT = DEPLOY / "soundforge-web.service"
__all__ = ["pytestmark"]


def _values(key: str) -> list[str]:
    return [value for section, name, value in unit_directives(WEB_UNIT)
            if section == "Service" and name == key]  # fmt: skip


def test_web_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    make_verify_root(tmp_path, WEB_UNIT)
    returncode, complaints = verify(tmp_path, WEB_UNIT.name)
    assert complaints == [] and returncode == 0


def test_web_unit_security_exposure_is_at_most_2_0() -> None:
    exposure, output = security_exposure(WEB_UNIT)
    assert exposure <= MAX_EXPOSURE, output


def test_web_unit_serves_on_the_loopback_default_as_the_soundforge_user() -> None:
    [command] = _values("ExecStart")
    assert command.endswith("soundforge serve") and "--host" not in command
    assert _values("User") == ["soundforge"] and _values("MemoryDenyWriteExecute") == ["yes"]
