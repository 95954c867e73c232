"""`soundforge analyze FILE... | DIR [--json] [--jobs N]`: analyse audio files (tempo, beats,
key, energy, spectral features, MFCCs, chroma) and print a summary per file or, with --json, one
JSON object per line. Many files are spread over N processes with a progress bar on stderr; a
file that fails gets its error on its own line and the rest go on. No database is needed."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundforge.audio_limits import AudioLimits
from soundforge.cli.output import safe, say
from soundforge.errors import ConfigError

if TYPE_CHECKING:
    from soundforge.analysis import AnalysisReport


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyse audio files: tempo, key, energy, spectral features",
        description="Analyse each FILE (WAV, FLAC, OGG Vorbis/Opus, MP3; M4A/AAC, WebM with "
        "ffmpeg; a folder: every audio file under it) and print tempo, key, energy and spectral "
        "statistics. --json prints the full report, one JSON object per line (with its \"file\" "
        "when there are several). A file that fails gets its error on its own line (stderr, or "
        "a {\"file\", \"error\"} object with --json) and the others go on; the exit code is 1 if "
        "any failed.",
    )
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE",
                        help="audio file or folder to analyse")  # fmt: skip
    parser.add_argument("--json", action="store_true",
                        help="print each full report as one JSON object per line")  # fmt: skip
    parser.add_argument("--jobs", "-j", type=_positive, default=None, metavar="N",
                        help="analyse N files at a time (default: one per CPU core)")  # fmt: skip
    parser.set_defaults(handler=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    try:  # numpy and the engine are imported only when analysing
        with _one_blas_thread_at_load():
            from soundforge.analysis import analyze, batch
    except ImportError as error:
        raise ConfigError(
            f"audio analysis needs the analysis extra ({error.name} is missing): "
            "pip install 'soundforge[analysis]'"
        ) from None
    limits = AudioLimits.configured()
    if len(args.files) == 1 and not args.files[0].is_dir():
        report = analyze(args.files[0], limits=limits)  # one file: its error is the command's
        _write(_format(args.files[0], report, args.json, with_path=False), args.json)
        return 0
    files = batch.expand(args.files)
    if not files:
        raise ConfigError("no audio files found in " + ", ".join(map(str, args.files)))
    jobs = args.jobs or batch.default_jobs()
    failed = 0
    with _progress_bar(len(files)) as advance:
        for outcome in batch.analyze_many(files, jobs, limits, on_done=lambda _: advance()):
            if outcome.report is not None:
                _write(_format(outcome.path, outcome.report, args.json, with_path=True), args.json)
            else:
                failed += 1
                _report_error(outcome.path, outcome.error or "failed", args.json)
            sys.stdout.flush()
    return 1 if failed else 0


@contextmanager
def _one_blas_thread_at_load() -> Iterator[None]:
    """Load numpy's OpenBLAS with one thread in this process, which only analyses (the engine
    runs BLAS on one thread anyway, `engine._single_threaded_blas`). Otherwise its second thread
    is started again each time a file's analysis gives the thread count back, and spins on the
    other core for nothing: 8 % more CPU per file, taken from the other process with --jobs 2
    (1.52x -> 1.69x over --jobs 1). The variable is set only while numpy loads, if it is not
    loaded yet and the user has not set it, and is not passed on."""
    if "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        del os.environ["OPENBLAS_NUM_THREADS"]


def _write(text: str, as_json: bool) -> None:
    """JSON as it is (escaped by json.dumps); a summary line by line through `say`, which
    strips terminal escapes from names and warnings."""
    if as_json:
        sys.stdout.write(text)
        return
    for line in text.splitlines():
        say(line)


def _format(path: Path, report: AnalysisReport, as_json: bool, with_path: bool) -> str:
    if not as_json:
        return summary(path, report)
    document = {"file": str(path), **report.to_dict()} if with_path else report.to_dict()
    return json.dumps(document, allow_nan=False) + "\n"


def _report_error(path: Path, message: str, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({"file": str(path), "error": message}) + "\n")
    else:
        named = message if str(path) in message or path.name in message else f"{path}: {message}"
        say(f"soundforge: error: {safe(named)}", file=sys.stderr)


@contextmanager
def _progress_bar(total: int) -> Iterator[Callable[[], None]]:
    """A bar on stderr when it is a terminal (files done / total); otherwise nothing. Drawn
    when a file is done, not by rich's refresh thread: `--jobs` forks its workers while the bar
    is up, and a thread holding a lock at the fork would leave it held in the children."""
    if not sys.stderr.isatty():
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True,
                  auto_refresh=False) as progress:  # fmt: skip
        task = progress.add_task("analyse", total=total)
        progress.refresh()

        def advance() -> None:
            progress.advance(task)
            progress.refresh()

        yield advance


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


def summary(path: Path, report: AnalysisReport) -> str:
    """The human-readable report: one fact per line, warnings last."""
    tempo = (f"{report.tempo:.1f} BPM ({report.beat_count} beats)" if report.tempo is not None
             else "none")  # fmt: skip
    key = (f"{report.key} (confidence {report.key_confidence:.2f})"
           if report.key is not None and report.key_confidence is not None else "none")  # fmt: skip
    lines = [
        f"{safe(path.name)}: {_clock(report.duration)} ({report.duration:.1f} s), "
        f"{report.sample_rate} Hz",
        f"  tempo     {tempo}",
        f"  key       {key}",
        f"  energy    RMS mean {report.energy:.4f} (min {report.energy_min:.4f}, "
        f"max {report.energy_max:.4f}, variance {report.energy_variance:.2e})",
        f"  spectrum  centroid {report.spectral_centroid:.0f} Hz, rolloff "
        f"{report.spectral_rolloff:.0f} Hz, bandwidth {report.spectral_bandwidth:.0f} Hz, "
        f"flatness {report.spectral_flatness:.4f}",
        f"  zcr       {report.zero_crossing_rate:.4f}",
        *(f"  warning:  {safe(warning)}" for warning in report.warnings),
    ]
    return "\n".join(lines) + "\n"
