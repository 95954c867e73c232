"""`soundforge analyze` over many files and as a process of its own: with --jobs the caller
analyses beside forked children that start with the first-call costs paid; a child that dies or
hits a bug is reported without losing the order; the command's process loads OpenBLAS with one
thread and ends without the interpreter's teardown. Real processes throughout (forks, a
subprocess per command), no timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("soxr")

from soundforge.analysis import batch
from tests.audio_synth import write_test_song

SR = 22050
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("batch")
    return [write_test_song(folder / f"clip{index}.wav", 2.0, SR, tempo=100.0 + index,
                            channels=1, seed=index) for index in range(6)]  # fmt: skip


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("PYTHONUNBUFFERED", "OPENBLAS_NUM_THREADS")}  # fmt: skip
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=120, env=env, check=False)  # fmt: skip


def test_the_caller_analyses_beside_its_children_and_the_order_holds(
    clips: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def tagged(path: Path, limits: object = None) -> batch.FileOutcome:
        time.sleep(0.1)  # long enough for every process to take a file
        return batch.FileOutcome(path, None, error=str(os.getpid()))

    monkeypatch.setattr(batch, "analyze_one", tagged)  # the forked children inherit it
    outcomes = list(batch.analyze_many(clips, jobs=2))
    assert [outcome.path for outcome in outcomes] == clips
    processes = {outcome.error for outcome in outcomes}
    assert str(os.getpid()) in processes and len(processes) == 2


PROBE_FIRST_CALL_COSTS = """
import json, os, sys, time
from pathlib import Path
from soundforge.analysis import batch, engine
parent = os.getpid()

def probe(path, limits=None):
    state = {"pid": os.getpid(), "numpy.ma": "numpy.ma" in sys.modules,
             "blas": engine._blas_controller.cache_info().currsize}
    time.sleep(0.1)  # long enough for every process to take a file
    return batch.FileOutcome(path, None, error=json.dumps(state))

batch.analyze_one = probe
seen = [json.loads(o.error) for o in batch.analyze_many([Path(p) for p in sys.argv[1:]], jobs=3)]
print(json.dumps([state for state in seen if state["pid"] != parent]))
"""


def test_children_are_forked_with_the_first_call_costs_paid(clips: list[Path]) -> None:
    """A fresh process (nothing imported by other tests): what a child finds loaded before
    its first file."""
    done = _python(PROBE_FIRST_CALL_COSTS, *map(str, clips))
    assert done.returncode == 0, done.stderr
    in_children = json.loads(done.stdout)
    assert in_children, "no child took a file"
    assert all(state["numpy.ma"] and state["blas"] == 1 for state in in_children)


def test_a_child_that_dies_costs_only_its_file_an_error(
    clips: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = os.getpid()

    def dies_in_a_child(path: Path, limits: object = None) -> batch.FileOutcome:
        if os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.1)  # the child takes a file before the caller has done them all
        return batch.FileOutcome(path, None, error="fine")

    monkeypatch.setattr(batch, "analyze_one", dies_in_a_child)
    outcomes = list(batch.analyze_many(clips, jobs=2))
    assert [outcome.path for outcome in outcomes] == clips
    errors = [outcome.error for outcome in outcomes]
    assert errors.count("fine") == len(clips) - 1
    assert [error for error in errors if error != "fine"] == [
        "the analysis process was killed by signal 9"]  # fmt: skip


def test_a_bug_in_a_child_is_raised_with_its_traceback(
    clips: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = os.getpid()

    def buggy_in_a_child(path: Path, limits: object = None) -> batch.FileOutcome:
        if os.getpid() != parent:
            raise ValueError("a bug in the engine")
        time.sleep(0.1)
        return batch.FileOutcome(path, None, error="fine")

    monkeypatch.setattr(batch, "analyze_one", buggy_in_a_child)
    with pytest.raises(batch.WorkerError, match=r"(?s)failed in a worker.*a bug in the engine"):
        list(batch.analyze_many(clips, jobs=2))


PROBE_CLI_PROCESS = """
import atexit, os, sys
from soundforge.cli.main import main
atexit.register(lambda: print("TEARDOWN"))
sys.argv = ["soundforge", "analyze", "--json", sys.argv[1]]
main()
"""


def test_the_analyze_process_ends_without_teardown_once_its_output_is_out(
    clips: list[Path],
) -> None:
    done = _python(PROBE_CLI_PROCESS, str(clips[0]))
    assert done.returncode == 0, done.stderr
    assert "TEARDOWN" not in done.stdout
    assert json.loads(done.stdout)["duration"] == pytest.approx(2.0)  # flushed before the end
    # `main(argv)` (tests, callers embedding the CLI) returns its exit code as before.
    done = _python("import sys; from soundforge.cli.main import main; "
                   "code = main(['analyze', '--json', sys.argv[1]]); print('RETURNED', code)",
                   str(clips[0]))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "RETURNED 0" in done.stdout


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS has one thread on one core anyway")
def test_the_analyze_process_loads_openblas_with_one_thread(clips: list[Path]) -> None:
    done = _python("import os, sys; from soundforge.cli.main import main; "
                   "main(['analyze', '--json', sys.argv[1]]); "
                   "from threadpoolctl import threadpool_info; "
                   "print('THREADS', [pool['num_threads'] for pool in threadpool_info() "
                   "if pool['user_api'] == 'blas'], 'OPENBLAS_NUM_THREADS' in os.environ)",
                   str(clips[0]))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "THREADS [1] False" in done.stdout
