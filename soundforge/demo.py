"""The steps of `soundforge demo`, without the printing: where its data lives, the database
(the configured one, else an embedded PostgreSQL), the song (given or synthesized), whether
stem weights are there, the pipeline processes (the supervisor, `soundforge run`, as a child
process) and the summary of what the pipeline stored. The CLI command strings them together
with the same import and progress-bar code as `soundforge add --wait`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import platformdirs

from soundforge.embedded_pg import EmbeddedPostgres
from soundforge.errors import SoundForgeError, SourceError
from soundforge.settings import Settings

log = logging.getLogger(__name__)

APP_NAME = "soundforge"
SONG_NAME = "soundforge-demo-song.wav"
STOP_GRACE_S = 30.0
PIPELINE_TIMEOUT_S = 900.0  # a first run compiles librosa's numba code; real stems take a while
# What the demo's pipeline processes get on top of the caller's environment: a short drain
# (nothing is running when the demo stops them) and the settings the demo chose.
CHILD_SETTINGS = {"SOUNDFORGE_SHUTDOWN_GRACE_S": "10"}


class PipelineProcessesExitedError(SoundForgeError):
    """The demo's supervisor (or a worker) exited while the pipeline was still running."""


class PipelineTimeoutError(SoundForgeError):
    """The demo's pipeline did not end within its time limit."""


def default_demo_dir() -> Path:
    """`<user data dir>/soundforge/demo` (XDG_DATA_HOME on Linux)."""
    return platformdirs.user_data_path(APP_NAME) / "demo"


def storage_path(config: Settings, demo_dir: Path) -> Path:
    """SOUNDFORGE_STORAGE_PATH when set, else `storage/` in the demo folder."""
    if "storage_path" in config.model_fields_set:
        return config.storage_path
    return demo_dir / "storage"


def uses_configured_database(config: Settings) -> bool:
    """DATABASE_URL (or SOUNDFORGE_DATABASE_URL, or the env file) names a server."""
    return "database_url" in config.model_fields_set


@contextlib.contextmanager
def demo_database(
    config: Settings, demo_dir: Path
) -> Iterator[tuple[str, EmbeddedPostgres | None]]:
    """The database to use: the configured one, or an embedded PostgreSQL started in
    `demo_dir` for the duration (stopped on exit, its data kept for the next run)."""
    if uses_configured_database(config):
        yield config.database_url, None
        return
    with EmbeddedPostgres(demo_dir) as server:
        yield server.conninfo, server


def shell_environment(database_url: str, storage: Path) -> dict[str, str]:
    """The caller's environment with the demo's database and storage in it (and no
    SOUNDFORGE_DATABASE_URL, which would win over DATABASE_URL), and this installation's
    `soundforge` first on PATH (a virtualenv's bin folder is often not on it)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "/usr/bin:/bin")
    environment = {**os.environ, "DATABASE_URL": database_url,
                   "SOUNDFORGE_STORAGE_PATH": str(storage),
                   "PATH": path if path.split(os.pathsep)[0] == bin_dir
                   else os.pathsep.join([bin_dir, path])}  # fmt: skip
    environment.pop("SOUNDFORGE_DATABASE_URL", None)
    return environment


def user_shell() -> str:
    return os.environ.get("SHELL") or shutil.which("bash") or "/bin/sh"


def demo_song(demo_dir: Path, given: Path | None) -> tuple[Path, str]:
    """(path, description) of the song to run: `given` when named, else a synthesized one."""
    if given is not None:
        if not given.is_file():
            raise SourceError(f"{given}: no such file; name an audio file, or leave it out to "
                              "use a synthesized song")  # fmt: skip
        return given.resolve(), f"{given.resolve()}"
    from soundforge.demo_audio import write_demo_song

    song = write_demo_song(demo_dir / SONG_NAME)
    return song.path, (f"synthesized {song.duration_s:.0f} s, {song.tempo_bpm:.0f} BPM, "
                       f"{song.key}: {song.path}")  # fmt: skip


def stems_unavailable_reason(
    config: Settings, model: str, fetch: Callable[[str], object] | None = None
) -> str | None:
    """None when the separation model's weights load here (fetched first with `fetch` when
    missing and SOUNDFORGE_FETCH_MODELS allows); else what is missing and how to get it."""
    from soundforge.engines import with_fetched_weights

    try:
        import torch

        from soundforge.separation import loading

        with_fetched_weights(config, model,
                             lambda: loading.load(model, config.demucs_repo, torch.device("cpu")),
                             fetch)  # fmt: skip
        loading.clear_cache()
    except ImportError as error:
        return (f"stem separation needs the stems extra ({error.name} is not installed): "
                "pip install -c constraints.txt 'soundforge[stems]'")  # fmt: skip
    except SoundForgeError as error:
        return str(error)
    return None


class PipelineProcesses:
    """The supervisor (`soundforge run`, which starts and watches a worker process per queue
    group) run for the demo as a child process; its output goes to `log_path`."""

    def __init__(self, config: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self.environment = shell_environment(config.database_url, config.storage_path)
        self.environment.update(CHILD_SETTINGS)
        self.environment["SOUNDFORGE_IMPORT_ROOTS"] = ",".join(
            str(root) for root in config.import_root_paths)  # fmt: skip
        self.processes: list[subprocess.Popen[bytes]] = []
        self._log_file: IO[bytes] | None = None

    description = "supervisor `soundforge run`"

    def commands(self) -> list[list[str]]:
        return [[sys.executable, "-m", "soundforge.cli.main", "run"]]

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        for command in map(_terminating_with_parent, self.commands()):
            # A session of its own: a Ctrl-C in the terminal reaches the demo, which stops them.
            process = subprocess.Popen(command, env=self.environment, stdin=subprocess.DEVNULL,
                                       stdout=self._log_file, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # fmt: skip
            log.info("started %s (pid %d)", " ".join(command), process.pid)
            self.processes.append(process)

    def exited(self) -> list[tuple[int, int]]:
        """(pid, exit code) of each process that has ended."""
        return [(p.pid, code) for p in self.processes if (code := p.poll()) is not None]

    def check_running(self) -> None:
        ended = self.exited()
        if ended:
            codes = ", ".join(f"pid {pid} exit code {code}" for pid, code in ended)
            raise PipelineProcessesExitedError(
                f"the pipeline processes stopped before the pipeline ended ({codes}); "
                f"see {self.log_path}"
            )

    @contextlib.contextmanager
    def failing_on_exit(self, timeout_s: float) -> Iterator[None]:
        """Within the block, a pipeline process that exits raises `PipelineProcessesExitedError`
        and `timeout_s` seconds raise `PipelineTimeoutError`, in the main thread (from SIGCHLD
        and SIGALRM handlers), so following the pipeline never hangs (a worker that keeps
        crashing at start is restarted by the supervisor, which itself stays up)."""

        def on_child_exit(_signum: int, _frame: FrameType | None) -> None:
            self.check_running()

        def on_timeout(_signum: int, _frame: FrameType | None) -> None:
            raise PipelineTimeoutError(
                f"the pipeline did not finish within {timeout_s:.0f} s; see {self.log_path} "
                "(or give it longer with --timeout)"
            )

        previous_child = signal.signal(signal.SIGCHLD, on_child_exit)
        previous_alarm = signal.signal(signal.SIGALRM, on_timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            self.check_running()
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous_alarm)
            signal.signal(signal.SIGCHLD, previous_child)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (drain and exit), then SIGKILL what is left after `grace_s`."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop within %.0f s; killing it", process.pid, grace_s)
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _terminating_with_parent(command: list[str]) -> list[str]:
    """`command` under `setpriv --pdeathsig SIGTERM` where util-linux has it (Linux): the child
    gets SIGTERM when the demo dies, even by SIGKILL, so a killed demo leaves no supervisor
    behind (it would otherwise retry an embedded server that is gone, forever)."""
    setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
    return [setpriv, "--pdeathsig", "SIGTERM", "--", *command] if setpriv else command


