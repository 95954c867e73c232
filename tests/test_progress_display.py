"""`soundforge add --wait` in a real terminal: the real command in a pseudo-terminal 80 columns
wide, a real worker, and a stage that fails with an error far longer than a line. Every row of
the live display stays on one line with its title, stage name and bar; the long error is cut
with an ellipsis in its row and printed whole in the summary below."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.cli_runner import SOUNDFORGE, run_cli
from tests.support.audio import tone_bytes
from tests.support.pipeline import ServiceProcesses, service_env

COLUMNS = 80
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _run_in_terminal(args: list[str], env: dict[str, str], timeout_s: float = 120,
                     once_printed: Sequence[tuple[str, Callable[[subprocess.Popen[bytes]],
                                                                 object]]] = (),
                     ) -> tuple[int, str]:  # fmt: skip
    """Run a command with a pty (COLUMNS x 24) as its terminal; (exit code, everything it
    wrote to the terminal). `once_printed` [(text, action), ...]: run each action (given the
    process) once the command has printed its text, in order."""
    pending = list(once_printed)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    process = subprocess.Popen(args, env=env, stdin=terminal, stdout=terminal, stderr=terminal,
                               close_fds=True)  # fmt: skip
    os.close(terminal)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.5)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # EIO: the terminal closed (the process ended)
                break
            if not data:
                break
            chunks.append(data)
            while pending and pending[0][0].encode() in b"".join(chunks):
                pending.pop(0)[1](process)
        elif process.poll() is not None:
            break
    else:
        process.kill()
    os.close(controller)
    return process.wait(10), b"".join(chunks).decode(errors="replace")


def test_a_long_error_keeps_every_row_on_one_line_and_is_whole_in_the_summary(
    cli_env: dict[str, str], tmp_path: Path, services: ServiceProcesses
) -> None:
    env = {k: v for k, v in service_env(cli_env).items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    good = tmp_path / "good song.wav"
    good.write_bytes(tone_bytes(1.0))
    bad = tmp_path / ("not audio " + "with a very long name " * 8 + ".wav")
    bad.write_bytes(b"<html><body>" + b"not a song " * 200 + b"</body></html>")
    services.start("worker", "--queues", "download", "--concurrency", "2", env=env,
                   label="worker")  # fmt: skip

    code, output = _run_in_terminal([SOUNDFORGE, "add", "--wait", "--no-stems", "--no-analysis",
                                     str(good), str(bad)], env)  # fmt: skip

    assert code == 1, output  # a stage failed
    text = ANSI.sub("", output)
    segments = [segment for line in text.split("\n") for segment in line.split("\r")]
    rows = [segment for segment in segments if re.search(r" download +.*\d+% ", segment)]
    assert all(len(row.rstrip()) <= COLUMNS for row in rows), rows
    bad_rows = [row for row in rows if "failed: " in row]
    assert bad_rows, text
    final_bad = bad_rows[-1]
    assert final_bad.startswith("not audio"), final_bad  # its title,
    assert re.search(r" download +(━+ *)? *\d+% failed: ", final_bad), final_bad  # stage, bar,
    assert final_bad.rstrip().endswith("…"), final_bad  # and its error cut to the line
    assert any(row.startswith("good song") and "completed" in row for row in rows), text
    summary = text.rsplit("download failed: ", 1)[-1]
    assert bad.name in summary.replace("\r", "").replace("\n", ""), summary  # the whole error


def test_watch_in_a_terminal_cuts_a_long_error_to_one_line(
    cli_env: dict[str, str], tmp_path: Path, services: ServiceProcesses
) -> None:
    env = {k: v for k, v in service_env(cli_env).items() if k not in ("COLUMNS", "LINES")}
    bad = tmp_path / ("not audio " + "with a very long name " * 8 + ".wav")
    bad.write_bytes(b"<html><body>" + b"not a song " * 200 + b"</body></html>")
    services.start("worker", "--queues", "download", env=env, label="worker")

    def add_bad_file(watch: subprocess.Popen[bytes]) -> None:
        assert run_cli("add", "--no-stems", "--no-analysis", str(bad), env=env).returncode == 0

    def interrupt(watch: subprocess.Popen[bytes]) -> None:
        watch.send_signal(signal.SIGINT)  # Ctrl-C

    # queued, downloading, failed: watch shows each row as the database has it when an event
    # wakes it, so transitions that follow each other fast may show as one (the last)
    code, output = _run_in_terminal([SOUNDFORGE, "watch"], env, once_printed=[
        ("watching", add_bad_file), ("…\r\n", interrupt)])  # fmt: skip (after the error line)
    assert code == 130, output
    lines = ANSI.sub("", output).splitlines()
    events = [line for line in lines if " download " in line]
    states = [line.split()[2] for line in events]
    assert states[-1] == "failed" and states == sorted(
        states, key=["queued", "downloading", "failed"].index), lines
    error = lines[lines.index(events[-1]) + 1]
    assert error.startswith(f"    error: {str(bad)[:40]}"), error
    assert len(error) == COLUMNS and error.endswith("…"), error
