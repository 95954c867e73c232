"""Separation benchmark: the demucs CLI against `soundforge separate`, each in its own
subprocess on the same synthesized stereo file and the same locally built (untrained) model.

    python -m bench.separation speed  [--seconds 60] [--precision fp32 bf16] [--size full]
    python -m bench.separation memory [--durations 60 600] [--precision bf16] [--with-cli]

`speed` prints wall time, CPU time (user + system) and peak RSS of the CLI and of ours per
precision, and the CLI/ours ratios (> 1: ours is faster / smaller). `memory` prints our peak RSS
per track duration (flat means memory does not grow with the track). Peak RSS is the child's
`ru_maxrss` from `wait4`, so each run is measured alone. Linux folds the parent's resident pages
at fork/exec into a child's `ru_maxrss`, so this process stays small: the model repo and the
songs are built by a `prepare` subprocess, and torch is never imported here.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

SAMPLE_RATE = 44100
MODEL = "htdemucs"


@dataclass(frozen=True)
class Measurement:
    label: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def write_song(path: Path, seconds: float, seed: int = 0) -> Path:
    """A stereo test mix: a bass line, a chord pad and noise-burst drums (16-bit WAV)."""
    rng = np.random.default_rng(seed)
    frames = int(seconds * SAMPLE_RATE)
    t = np.arange(frames) / SAMPLE_RATE
    bass = 0.3 * np.sin(2 * np.pi * 55.0 * (1 + (t // 2) % 2 * 0.5) * t)
    pad = sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    beat = (t % 0.5) < 0.05
    drums = 0.3 * rng.standard_normal(frames) * beat * np.exp(-(t % 0.5) * 40)
    mix = bass + pad + drums
    stereo = np.stack([mix, 0.8 * mix + 0.05 * rng.standard_normal(frames)], axis=1)
    stereo *= 0.9 / np.abs(stereo).max()
    soundfile.write(str(path), stereo.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def measure(label: str, command: Sequence[str], log_path: Path) -> Measurement:
    """Run `command` to completion; its wall time, CPU time and peak RSS."""
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{label} failed (exit {process.returncode}):\n{tail}")
    return Measurement(label, wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)


def demucs_cli(repo: Path, song: Path, out: Path, shifts: int, overlap: float) -> list[str]:
    return [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", MODEL,
            "--shifts", str(shifts), "--overlap", str(overlap), "-o", str(out), str(song)]


def ours(repo: Path, song: Path, out: Path, shifts: int, overlap: float, precision: str,
         threads: int) -> list[str]:
    return [sys.executable, "-m", "soundforge.cli.main", "separate", str(song), "--out", str(out),
            "--model", MODEL, "--repo", str(repo), "--format", "wav", "--device", "cpu",
            "--shifts", str(shifts), "--overlap", str(overlap), "--precision", precision,
            "--threads", str(threads)]


def print_table(rows: Sequence[Measurement]) -> None:
    print(f"{'run':<28}{'wall s':>10}{'cpu s':>10}{'peak RSS MB':>14}")
    for row in rows:
        print(f"{row.label:<28}{row.wall_s:>10.1f}{row.cpu_s:>10.1f}{row.peak_rss_mb:>14.0f}")


def prepare_in_subprocess(work: Path, size: str, durations: Sequence[float]) -> Path:
    """Build the model repo and the songs in a child process (see the module docstring)."""
    subprocess.run([sys.executable, "-m", "bench.separation", "prepare", "--work", str(work),
                    "--size", size, "--durations", *map(str, durations)], check=True)
    return work / "repo"


def song_path(work: Path, seconds: float) -> Path:
    return work / f"song-{seconds:g}.wav"


def prepare(args: argparse.Namespace) -> None:
    from soundforge.separation import write_local_repo  # imports torch: child process only

    write_local_repo(args.work / "repo", MODEL, size=args.size)
    for seconds in args.durations:
        write_song(song_path(args.work, seconds), seconds)


def speed(args: argparse.Namespace, work: Path) -> None:
    repo = prepare_in_subprocess(work, args.size, [args.seconds])
    song = song_path(work, args.seconds)
    rows = [measure("demucs CLI (fp32)",
                    demucs_cli(repo, song, work / "cli", args.shifts, args.overlap),
                    work / "cli.log")]  # fmt: skip
    for precision in args.precision:
        rows.append(measure(
            f"soundforge ({precision})",
            ours(repo, song, work / f"ours-{precision}", args.shifts, args.overlap, precision,
                 args.threads),
            work / f"ours-{precision}.log",
        ))  # fmt: skip
    print(f"{args.seconds:g} s stereo, {MODEL} {args.size}, shifts={args.shifts}, "
          f"overlap={args.overlap}, torch threads={args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs")
    print_table(rows)
    baseline = rows[0]
    for row in rows[1:]:
        print(f"{row.label}: {baseline.wall_s / row.wall_s:.2f}x faster (wall), "
              f"{baseline.cpu_s / row.cpu_s:.2f}x less CPU, "
              f"{baseline.peak_rss_mb / row.peak_rss_mb:.2f}x less peak RSS than the CLI")


def memory(args: argparse.Namespace, work: Path) -> None:
    repo = prepare_in_subprocess(work, args.size, args.durations)
    rows = []
    for seconds in args.durations:
        song = song_path(work, seconds)
        for precision in args.precision:
            rows.append(measure(
                f"soundforge {seconds:g} s ({precision})",
                ours(repo, song, work / f"ours-{seconds:g}", args.shifts, args.overlap,
                     precision, args.threads),
                work / "ours.log",
            ))  # fmt: skip
        if args.with_cli:
            rows.append(measure(f"demucs CLI {seconds:g} s",
                                demucs_cli(repo, song, work / "cli", args.shifts, args.overlap),
                                work / "cli.log"))  # fmt: skip
    print(f"{MODEL} {args.size}, shifts={args.shifts}, overlap={args.overlap}")
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "memory", "prepare"))
    parser.add_argument("--work", type=Path, help="prepare: the folder to fill")
    parser.add_argument("--seconds", type=float, default=60.0, help="speed: track length")
    parser.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0],
                        help="memory: track lengths in seconds")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"),
                        default=["fp32", "bf16"])
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--threads", type=int, default=0, help="ours: torch threads (0: default)")
    parser.add_argument("--with-cli", action="store_true", help="memory: also run the CLI")
    args = parser.parse_args()
    if args.mode == "prepare":
        prepare(args)
        return
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as directory:
        (speed if args.mode == "speed" else memory)(args, Path(directory))


if __name__ == "__main__":
    main()
