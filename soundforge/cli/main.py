"""The `soundforge` command: builds the argument parser from the command modules and turns
user-caused errors into one line on stderr and an exit code (tracebacks are for bugs)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from soundforge.cli.output import safe, say
from soundforge.errors import SoundForgeError
from soundforge.redact import install_log_redaction, mask_text

# Each module defines `register(subparsers)`, which adds its sub-commands and sets `handler`
# (a callable taking the parsed namespace and returning an exit code) on each.
COMMAND_MODULES: tuple[str, ...] = (
    "soundforge.cli.separate_cmd",
    "soundforge.cli.analyze_cmd",
    "soundforge.cli.database_cmds",
    "soundforge.cli.pipeline_cmds",
    "soundforge.cli.demo_cmd",
    "soundforge.cli.service_cmds",
    "soundforge.cli.models_cmd",
    "soundforge.cli.web_cmds",
)


# Commands whose module is registered alone when they are the one asked for: the other command
# modules import the database and queue stacks (about half a second, paid by every process),
# which neither `soundforge analyze` nor `soundforge separate` uses.
STANDALONE_COMMANDS: dict[str, str] = {
    "analyze": "soundforge.cli.analyze_cmd",
    "separate": "soundforge.cli.separate_cmd",
}


def _requested_command(argv: Sequence[str]) -> str | None:
    """The sub-command named in `argv` (its first argument that is not an option)."""
    return next((argument for argument in argv if not argument.startswith("-")), None)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soundforge",
        description="Turn music sources into stored tracks, stems and analyses, queued in "
        "PostgreSQL.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    modules = (only,) if only else COMMAND_MODULES
    for module_name in modules:
        importlib.import_module(module_name).register(subparsers)
    return parser


# Commands that leave nothing to clean up when they return (no database, no temporary files, no
# threads): run from the shell, their process ends without the interpreter's teardown.
QUICK_EXIT_COMMANDS = frozenset({"analyze"})
BROKEN_PIPE_EXIT = 141  # as a shell reports a command ended by SIGPIPE (128 + 13)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in `argv`, or, with None, the one in `sys.argv`: then this process is the
    command's own (the console script, `python -m`), and a command of `QUICK_EXIT_COMMANDS`
    ends it here (see `_exit_now`)."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(STANDALONE_COMMANDS.get(_requested_command(arguments) or ""))
    args = parser.parse_args(arguments)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()
    code = _run(args)
    if argv is None and args.command in QUICK_EXIT_COMMANDS:
        _exit_now(code)
    return code


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args))
    except SoundForgeError as error:
        say(f"soundforge: error: {safe(mask_text(str(error)))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("soundforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`soundforge analyze --json DIR | head`)
        _silence_stdout()
        return BROKEN_PIPE_EXIT


def _silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a closed pipe would otherwise
    raise again when it is flushed at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _exit_now(code: int) -> NoReturn:
    """End the process once its output is out, skipping the interpreter's teardown: freeing
    every module's objects one by one takes about 30 ms once numpy is loaded, a sixth of
    `soundforge analyze` on a short file, for memory the operating system frees at once."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`): nothing more to say there
            code = code or 1
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
