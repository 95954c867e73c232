"""Settings: variable names, the env file, and failures that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from soundforge.errors import ConfigError
from soundforge.settings import load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("SOUNDFORGE_") or name == "DATABASE_URL":
            monkeypatch.delenv(name)


def test_database_url_is_read_from_either_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDFORGE_DATABASE_URL", "postgresql://a@h/one")
    assert load_settings().database_url == "postgresql://a@h/one"
    monkeypatch.setenv("DATABASE_URL", "postgresql://a@h/two")
    assert load_settings().database_url == "postgresql://a@h/two"


def test_prefixed_variables_and_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = tmp_path / "soundforge.env"
    env_file.write_text("SOUNDFORGE_STORAGE_PATH=/srv/music\nSOUNDFORGE_SHIFTS=2\n")
    monkeypatch.setenv("SOUNDFORGE_ENV_FILE", str(env_file))
    monkeypatch.setenv("SOUNDFORGE_SHIFTS", "3")  # the environment beats the file
    settings = load_settings()
    assert settings.storage_path == Path("/srv/music")
    assert settings.shifts == 3


def test_an_invalid_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDFORGE_DOWNLOAD_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="SOUNDFORGE_DOWNLOAD_ATTEMPTS"):
        load_settings()
    monkeypatch.delenv("SOUNDFORGE_DOWNLOAD_ATTEMPTS")
    monkeypatch.setenv("DATABASE_URL", "mysql://nope")
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        load_settings()


def test_a_missing_named_env_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOUNDFORGE_ENV_FILE", "/nonexistent/soundforge.env")
    with pytest.raises(ConfigError, match="no such file"):
        load_settings()


def test_allowed_networks_and_import_roots_are_checked_and_defaulted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from soundforge.sources import SourceConfig

    monkeypatch.setenv("SOUNDFORGE_STORAGE_PATH", "/srv/sf")
    defaults = SourceConfig.from_settings(load_settings())
    assert defaults.destinations.allowed_networks == ()
    assert defaults.import_roots.roots == (Path("/srv/sf/imports"),)

    monkeypatch.setenv("SOUNDFORGE_ALLOWED_NETWORKS", "192.168.1.20/32, 10.8.0.0/16")
    monkeypatch.setenv("SOUNDFORGE_IMPORT_ROOTS", "/srv/music,/mnt/nas")
    configured = SourceConfig.from_settings(load_settings())
    assert [str(n) for n in configured.destinations.allowed_networks] == [
        "192.168.1.20/32", "10.8.0.0/16"]  # fmt: skip
    assert configured.import_roots.roots == (Path("/srv/music"), Path("/mnt/nas"))

    monkeypatch.setenv("SOUNDFORGE_ALLOWED_NETWORKS", "192.168.1.0/24,lan")
    with pytest.raises(ConfigError, match=r"SOUNDFORGE_ALLOWED_NETWORKS.*'lan' is not a CIDR"):
        load_settings()
    monkeypatch.delenv("SOUNDFORGE_ALLOWED_NETWORKS")
    monkeypatch.setenv("SOUNDFORGE_IMPORT_ROOTS", "music")
    with pytest.raises(ConfigError, match=r"SOUNDFORGE_IMPORT_ROOTS.*not an absolute folder"):
        load_settings()


def test_audio_limits_are_read_without_the_settings_unless_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`soundforge analyze` needs only the two limits: their defaults come without pydantic
    (a tenth of a second per process); given anywhere, the settings read them as before."""
    import subprocess
    import sys

    from soundforge.audio_limits import AudioLimits

    probe = ("import sys; from soundforge.audio_limits import AudioLimits; "
             "limits = AudioLimits.configured(); "
             "print(limits.max_duration_s, 'pydantic' in sys.modules)")  # fmt: skip
    env_file = tmp_path / "soundforge.env"
    env_file.write_text("DATABASE_URL=postgresql://a@h/db\n")
    monkeypatch.setenv("SOUNDFORGE_ENV_FILE", str(env_file))
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["7200.0", "False"]
    env_file.write_text("soundforge_max_duration_s=60\n")  # any case, as the settings read it
    assert AudioLimits.configured().max_duration_s == 60.0
    monkeypatch.setenv("SOUNDFORGE_MAX_DECODED_BYTES", str(2 << 20))
    assert AudioLimits.configured() == AudioLimits(60.0, 2 << 20)
    monkeypatch.setenv("SOUNDFORGE_MAX_DECODED_BYTES", "1")
    with pytest.raises(ConfigError, match="SOUNDFORGE_MAX_DECODED_BYTES"):
        AudioLimits.configured()
    monkeypatch.setenv("SOUNDFORGE_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigError, match="no such file"):
        AudioLimits.configured()
