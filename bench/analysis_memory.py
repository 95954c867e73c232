"""Peak memory of the analysis on a long file: writes a 60-minute stereo 44.1 kHz WAV (a 60 s
synthesized song repeated, written block by block, ~635 MB on disk in a temporary folder) and
analyses it in a fresh process, printing that process's peak RSS and the wall time. The goal is
under 1 GiB.

    .venv/bin/python bench/analysis_memory.py [--minutes 60] [FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not bench/ (its module names shadow the stdlib)

GOAL_MIB = 1024.0


def write_long_file(path: Path, minutes: float) -> Path:
    import soundfile

    from tests.audio_synth import write_test_song

    segment_path = write_test_song(path.with_name("segment.wav"), 60.0, 44100, tempo=124.0)
    segment, rate = soundfile.read(segment_path, dtype="float32")
    with soundfile.SoundFile(path, "w", rate, segment.shape[1], subtype="PCM_16") as output:
        for _ in range(round(minutes)):
            output.write(segment)
    segment_path.unlink()
    return path


def measure(path: str) -> dict[str, float | str | None]:
    """In the child: analyse and report wall time and peak RSS."""
    from soundforge.analysis import analyze

    started = time.perf_counter()
    report = analyze(path)
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "duration": report.duration,
        "tempo": report.tempo,
        "key": report.key,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(str(args.file))))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = args.file or write_long_file(Path(folder) / "long.wav", args.minutes)
        command = [sys.executable, __file__, "--measure", str(path)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    figures = json.loads(output.strip().splitlines()[-1])
    verdict = "under" if figures["peak_rss_mib"] < GOAL_MIB else "OVER"
    print(
        f"{figures['duration'] / 60:.1f} min of audio analysed in {figures['seconds']:.1f} s; "
        f"peak RSS {figures['peak_rss_mib']:.0f} MiB ({verdict} the {GOAL_MIB:.0f} MiB goal); "
        f"tempo {figures['tempo']}, key {figures['key']}"
    )


if __name__ == "__main__":
    main()
