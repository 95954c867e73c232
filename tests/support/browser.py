"""A real headless browser for the dashboard tests: Debian's `chromium` driven by its
`chromedriver` through Selenium (CI installs both; the tests skip where they are absent), and a
screenshot of the page when a test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(os.environ.get("SOUNDFORGE_TEST_SCREENSHOTS", "test-screenshots"))


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


needs_chromium = pytest.mark.skipif(
    chromium_paths() is None, reason="chromium and chromedriver are not installed"
)


@contextlib.contextmanager
def headless_chromium(width: int = 1200, height: int = 1400) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    assert paths is not None
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--mute-audio", f"--window-size={width},{height}",
                     "--autoplay-policy=no-user-gesture-required"):  # fmt: skip
        options.add_argument(argument)
    options.binary_location = paths[0]
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, name: str) -> Iterator[None]:
    """Save the page as `test-screenshots/<name>.png` when the block raises."""
    try:
        yield
    except BaseException:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        driver.save_screenshot(str(path))
        print(f"screenshot of the failing page: {path.absolute()}")
        raise
