"""Helpers for tests of the dashboard: a real `soundforge serve` process on a free port (with
its access log in a file), and rows with an analysis for the track list."""

from __future__ import annotations

import socket
import subprocess
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg

from soundforge import music
from soundforge.models import Stage, Track
from tests.factories import make_job, make_track
from tests.support.pipeline import ServiceProcesses
from tests.support.worker_thread import wait_for

TOKEN = "test-web-token-5b1f"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class WebServer:
    url: str
    process: subprocess.Popen[bytes]
    services: ServiceProcesses

    def log(self) -> str:
        return self.services.log_text(self.process)

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)


def start_web(services: ServiceProcesses, env: dict[str, str], token: str | None = TOKEN,
              **settings: object) -> WebServer:  # fmt: skip
    """`soundforge serve` on a free port of 127.0.0.1; returns once it answers."""
    env = {k: v for k, v in env.items() if k != "SOUNDFORGE_WEB_TOKEN"}
    if token is not None:
        env["SOUNDFORGE_WEB_TOKEN"] = token
    for name, value in settings.items():
        env[f"SOUNDFORGE_{name.upper()}"] = str(value)
    port = free_port()
    process = services.start("serve", "--port", str(port), env=env, label="web")
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError("soundforge serve exited:\n" + services.log_text(process))
        try:
            return httpx.get(url + "/healthz", timeout=5).status_code in (200, 503)
        except httpx.HTTPError:
            return False

    wait_for(answers, timeout_s=60, interval_s=0.2, message="soundforge serve to answer")
    return WebServer(url, process, services)


def analysed_track(conn: psycopg.Connection[Any], title: str, tempo: float, key: str,
                   artist: str | None = None) -> Track:  # fmt: skip
    """A track with a (queued) analysis job and a stored analysis result."""
    track = make_track(conn, title, artist=artist)
    job = make_job(conn, Stage.ANALYZE, track)
    music.create_analysis_result(
        conn, track_id=track.id, analysis_job_id=job.id,
        columns={"tempo": tempo, "key": key, "energy": 0.1},
        features={"key_confidence": 0.75, "beats": [0.5, 1.0], "duration": 2.0,
                  "chroma": [0.1] * 12, "mfcc": [1.0] * 13},
    )  # fmt: skip
    return track
