"""The dashboard in a real headless Chromium, against a real `soundforge serve` and a real
worker: a synthesized song added through the form shows its bars reach 100 % without a reload,
its stems play and seek (Range requests answered 206), search and the tempo filter work, and a
write without the token is refused. A failing test leaves a screenshot in test-screenshots/."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.by import By

from tests.audio_synth import write_test_song
from tests.support.browser import headless_chromium, needs_chromium, screenshot_on_failure
from tests.support.pipeline import ServiceProcesses, service_env
from tests.support.web import TOKEN, start_web
from tests.support.worker_thread import wait_for

pytestmark = [needs_chromium, pytest.mark.timeout(600), pytest.mark.slow]


@pytest.fixture
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from soundforge.separation import write_local_repo

    return write_local_repo(tmp_path_factory.mktemp("models"), "htdemucs", size="tiny")


def _tracks_after_submit(driver: Any, query: str) -> str:
    """The track list's text once the page a form submitted (its URL holding `query`) has
    loaded: reading at once may find the old page, or none while the new one loads."""
    wait_for(lambda: query in driver.current_url, timeout_s=30, message=f"a page for {query}")

    def text() -> str | None:
        try:
            return str(driver.find_element(By.ID, "tracks").text)
        except NoSuchElementException:
            return None

    found: str = wait_for(text, timeout_s=30, message="the track list")
    return found


def _stage_values(driver: Any) -> list[tuple[str, float]]:
    values: list[tuple[str, float]] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#pipeline td.stage')).map("
        "c => [c.querySelector('.status').textContent.trim(),"
        " Number(c.querySelector('progress').value)]);"
    )
    return values


def test_a_song_added_in_the_browser_progresses_live_then_plays_and_filters(
    services: ServiceProcesses, cli_env: dict[str, str], tmp_path: Path, tiny_repo: Path
) -> None:
    env = service_env(cli_env, demucs_repo=tiny_repo)
    song = write_test_song(tmp_path / "browser song.wav", seconds=6.0, tempo=120.0,
                           key="A minor")  # fmt: skip
    web = start_web(services, env)
    services.start("worker", "--name", "browser-test", env=env, label="worker")
    with headless_chromium() as driver, screenshot_on_failure(driver, "web-browser"):
        driver.get(web.url + "/add")
        assert "Sign in" in driver.page_source
        driver.get(web.url + "/login")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "token").submit()
        driver.get(web.url + "/add")
        driver.find_element(By.ID, "source").send_keys(str(song))
        driver.find_element(By.ID, "add-submit").click()
        wait_for(lambda: "/tracks/" in driver.current_url, timeout_s=30, message="track page")
        driver.execute_script("window.__sameDocument = 'yes';")
        wait_for(lambda: driver.execute_script("return document.readyState") == "complete",
                 timeout_s=10, message="page load")  # fmt: skip
        wait_for(lambda: [v for _, v in _stage_values(driver)] == [100, 100, 100]
                 and all(s == "completed" for s, _ in _stage_values(driver)),
                 timeout_s=400, interval_s=0.5, message="all three bars at 100 %")  # fmt: skip
        assert driver.execute_script("return window.__sameDocument") == "yes"  # no reload
        assert driver.execute_script("return window.soundforgeEvents.received") >= 6
        assert driver.find_element(By.ID, "ready").is_displayed()

        driver.refresh()
        players = driver.find_elements(By.CSS_SELECTOR, "#mixer audio")
        assert [p.get_attribute("data-stem") for p in players] == ["bass", "drums", "other",
                                                                   "vocals"]  # fmt: skip
        wait_for(lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('#mixer audio'))"
            ".every(a => a.duration > 5.5 && a.duration < 6.5)"),
            timeout_s=30, message="every stem's duration")  # fmt: skip
        driver.execute_script("document.querySelector('#mixer audio').currentTime = 3.0;")
        driver.find_element(By.ID, "play-all").click()
        wait_for(lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('#mixer audio')).every(a => !a.paused)"),
            timeout_s=20, message="all stems playing")  # fmt: skip
        position = driver.execute_script("return document.querySelector('#mixer audio')"
                                          ".currentTime")  # fmt: skip
        assert position >= 2.9
        assert re.search(r'"GET /api/stems/[0-9a-f-]+ HTTP/1.1" 206', web.log())
        assert driver.find_element(By.ID, "tempo").text.endswith("BPM")

        driver.get(web.url + "/")
        driver.find_element(By.NAME, "q").send_keys("browser so")
        driver.find_element(By.NAME, "q").submit()
        assert "browser song" in _tracks_after_submit(driver, "q=browser+so")
        driver.find_element(By.NAME, "tempo_min").send_keys("200")
        driver.find_element(By.NAME, "tempo_min").submit()
        assert "No tracks match" in _tracks_after_submit(driver, "tempo_min=200")
        driver.get(web.url + "/?tempo_min=110&tempo_max=130")
        assert "browser song" in driver.find_element(By.ID, "tracks").text

        driver.delete_all_cookies()
        driver.get(web.url + "/")
        status = driver.execute_async_script(
            "const done = arguments[0];"
            "fetch('/api/tracks', {method: 'POST', body: '{\"source\": \"x\"}'})"
            ".then(r => done(r.status));"
        )
        assert status == 403
