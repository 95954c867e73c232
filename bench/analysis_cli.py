"""Whole-process speed of `soundforge analyze`, as a user at a shell sees it (start-up, imports
and all): a 2 s file; a 180 s song beside the original system's analyzer process (librosa.load
and one librosa call per feature, `bench/analysis.py --worker original --cold`); a folder of
100 short files (3 s) and a folder of as many 30 s files with --jobs 1 and --jobs 2. Medians of
interleaved runs.

A 3 s file takes about 10 ms of analysis, so a folder of them is mostly the process's own start
(Python, numpy, the analysis modules): the part no second process shares. The best --jobs 2 can
do is T1 / (S + (T1 - S) / 2), S the start-up, measured here as the whole process on a 2 s file;
that bound is printed beside the ratio.

The package's bytecode is compiled first, as `pip install` does: without it (this environment
sets PYTHONDONTWRITEBYTECODE, so nothing is cached) every process compiles SoundForge's modules
from source again, about 25 ms, which no installed copy pays. `--jobs-only` times the --jobs
rows and the 2 s file (the start-up in the bound) only.

    .venv/bin/python bench/analysis_cli.py [--files 100] [--rounds 3] [--jobs-only]
"""

from __future__ import annotations

import argparse
import compileall
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not bench/ (its module names shadow the stdlib)

SOUNDFORGE = str(Path(sys.executable).with_name("soundforge"))


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def median_of(commands: dict[str, list[str]], rounds: int) -> dict[str, float]:
    """Each command `rounds` times, interleaved (a busy machine slows all alike)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, command in commands.items():
            times[name].append(timed(command))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs-only", action="store_true",
                        help="time only the --jobs rows and the 2 s file")  # fmt: skip
    args = parser.parse_args()
    compileall.compile_dir(ROOT / "soundforge", quiet=1)
    from tests.audio_synth import write_test_song

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        short = write_test_song(folder / "short.wav", 2.0, 44100, tempo=120.0)
        song = (folder / "song.wav" if args.jobs_only else
                write_test_song(folder / "song.wav", 180.0, 44100, tempo=126.0, key="D minor"))
        many, longer = folder / "many", folder / "longer"
        many.mkdir()
        longer.mkdir()
        for index in range(args.files):
            write_test_song(many / f"clip{index:03d}.wav", 3.0, 22050, tempo=90.0 + index % 60,
                            channels=1, seed=index)  # fmt: skip
            if not args.jobs_only:
                write_test_song(longer / f"clip{index:03d}.wav", 30.0, 22050,
                                tempo=90.0 + index % 60, channels=1, seed=index)  # fmt: skip
        original = [sys.executable, str(ROOT / "bench" / "analysis.py"), "--worker", "original",
                    str(song), "--cold"]  # fmt: skip
        commands = {
            "2 s file": [SOUNDFORGE, "analyze", str(short)],
            "180 s song": [SOUNDFORGE, "analyze", str(song)],
            "180 s song, original analyzer process": original,
            "--jobs 1": [SOUNDFORGE, "analyze", "--json", "--jobs", "1", str(many)],
            "--jobs 2": [SOUNDFORGE, "analyze", "--json", "--jobs", "2", str(many)],
            "--jobs 1, 30 s files": [SOUNDFORGE, "analyze", "--json", "--jobs", "1", str(longer)],
            "--jobs 2, 30 s files": [SOUNDFORGE, "analyze", "--json", "--jobs", "2", str(longer)],
        }  # fmt: skip
        if args.jobs_only:
            commands = {name: command for name, command in commands.items()
                        if name in ("2 s file", "--jobs 1", "--jobs 2")}  # fmt: skip
        figures = median_of(commands, args.rounds)
    print(f"whole process, median of {args.rounds} interleaved rounds:")
    for name, seconds in figures.items():
        print(f"  {name:40s} {seconds:7.2f} s")
    if not args.jobs_only:
        print(f"  180 s song: original / soundforge = "
              f"{figures['180 s song, original analyzer process'] / figures['180 s song']:.1f}x")
    start, one = figures["2 s file"], figures["--jobs 1"]
    bound = one / (start + max(one - start, 0.0) / 2)
    print(f"  {args.files} files of 3 s: --jobs 1 / --jobs 2 = "
          f"{one / figures['--jobs 2']:.2f}x (at best {bound:.2f}x with a {start:.2f} s start)")
    if not args.jobs_only:
        print(f"  {args.files} files of 30 s: --jobs 1 / --jobs 2 = "
              f"{figures['--jobs 1, 30 s files'] / figures['--jobs 2, 30 s files']:.2f}x")


if __name__ == "__main__":
    main()
