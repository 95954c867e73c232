"""Engine factories for tests, importable by name in an engine child process
(`soundforge.engine_process`): the real engines with faults scripted by the test.

The script is a JSON file named by `SOUNDFORGE_TEST_ENGINE_FAULTS` (the child inherits the
test's environment): `{"analyze": [step, ...], ...}`, one step per call of that engine, after
which the real engine runs. A step is `{"raise": "message", "progress": 40}` (report progress,
then raise OSError), `{"block": "progress" | "silent", "grandchild": true}` (run until killed,
reporting progress or not; optionally with a sleeping grandchild in the same process group, as
ffmpeg would be) or `{"pass": true}`. Calls are counted in files beside the script, so the count
holds across child processes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from soundforge.engines import Engines, default_engines
from soundforge.errors import JobAbortedError
from soundforge.settings import Settings

FAULTS_VARIABLE = "SOUNDFORGE_TEST_ENGINE_FAULTS"
FACTORY = "tests.support.engines:scripted_engines"
GRANDCHILD_MARK = "soundforge-test-grandchild"


def write_script(path: Path, steps: dict[str, list[dict[str, Any]]]) -> Path:
    path.write_text(json.dumps(steps))
    return path


def _next_step(script: Path, name: str) -> dict[str, Any] | None:
    steps = json.loads(script.read_text()).get(name, [])
    counter = script.with_name(f"{script.name}.{name}.count")
    with open(counter, "ab") as out:  # one byte per call: atomic across processes
        out.write(b".")
    call = counter.stat().st_size
    return steps[call - 1] if call <= len(steps) else None


def _play(step: dict[str, Any], progress: Any) -> None:
    if "progress" in step:
        progress(float(step["progress"]))
    if "raise" in step:
        raise OSError(step["raise"])
    if "block" in step:
        if step.get("grandchild"):
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)",
                              GRANDCHILD_MARK])  # fmt: skip
        percent = 0.0
        while True:
            if step["block"] == "progress":
                percent = min(90.0, percent + 0.1)
                progress(percent)
            time.sleep(0.01)


def scripted_engines(settings: Settings) -> Engines:
    real = default_engines(settings)
    script = Path(os.environ[FAULTS_VARIABLE]) if os.environ.get(FAULTS_VARIABLE) else None

    def scripted(name: str) -> Any:
        engine = getattr(real, name)

        def call(*args: Any) -> Any:
            step = _next_step(script, name) if script is not None else None
            if step is not None:
                _play(step, args[-2] if name == "separate" else args[-1])
            return engine(*args)

        return call

    return dataclasses.replace(
        real, fetch=scripted("fetch"), separate=scripted("separate"), analyze=scripted("analyze")
    )


PID_FACTORY = "tests.support.engines:pid_engines"


def pid_engines(settings: Settings) -> Engines:
    """The real engines, except that expanding any source answers with the engine process's
    pid (tests that need to know which child served a call)."""

    def expand(source: str) -> Any:
        return [os.getpid()]

    return dataclasses.replace(default_engines(settings), expand=expand)


STUCK_TOGETHER_FACTORY = "tests.support.engines:stuck_together_engines"
POLITE_TOGETHER_FACTORY = "tests.support.engines:polite_together_engines"


def _together_engines(settings: Settings, *, honour_abort: bool) -> Engines:
    """The real engines, except that a separation run together reports 1 % and then runs until
    its abort check is true (`honour_abort`) or forever, never looking at it (an engine stuck
    inside a batch)."""

    def together(job: Any) -> Any:
        job.progress(1.0)
        while not (honour_abort and job.should_abort()):
            time.sleep(0.05)
        raise JobAbortedError("separation aborted")

    return dataclasses.replace(default_engines(settings), together=together)


def stuck_together_engines(settings: Settings) -> Engines:
    return _together_engines(settings, honour_abort=False)


def polite_together_engines(settings: Settings) -> Engines:
    return _together_engines(settings, honour_abort=True)
