"""`soundforge analyze FILE [--json]`: analyse one audio file (tempo, beats, key, energy,
spectral features, MFCCs, chroma) and print a summary or the full report as one JSON object.
No database is needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soundforge.audio_limits import AudioLimits
from soundforge.cli.output import safe, say
from soundforge.errors import ConfigError
from soundforge.settings import load_settings

if TYPE_CHECKING:
    from soundforge.analysis import AnalysisReport


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyse an audio file: tempo, key, energy, spectral features",
        description="Analyse FILE (WAV, FLAC, OGG Vorbis/Opus, MP3; M4A/AAC, WebM with ffmpeg) and "
        "print tempo, key, energy and spectral statistics. --json prints the full report.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="audio file to analyse")
    parser.add_argument("--json", action="store_true",
                        help="print the full report as one JSON object")  # fmt: skip
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:  # librosa is imported only when analysing
        from soundforge.analysis import analyze
    except ImportError as error:
        raise ConfigError(
            f"audio analysis needs the analysis extra ({error.name} is missing): "
            "pip install 'soundforge[analysis]'"
        ) from None
    limits = AudioLimits.from_settings(load_settings())
    report = analyze(args.file, limits=limits)
    if args.json:
        sys.stdout.write(json.dumps(report.to_dict(), allow_nan=False) + "\n")
    else:
        for line in summary(args.file, report).splitlines():
            say(line)
    return 0


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
