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
