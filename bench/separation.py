"""Separation benchmark: the demucs CLI against `soundforge separate`, each in its own
subprocess on the same synthesized stereo files and the same locally built (untrained) model.

    python -m bench.separation speed  [--seconds 30 60] [--precision fp32 bf16] [--batch 1 2]
                                      [--rounds 2] [--size full]
    python -m bench.separation speed --device cuda [--long-seconds 600] [--songs 10]
                                      [--song-seconds 240] [--precision fp32 bf16]
    python -m bench.separation throughput --device cpu --size tiny   (the same, any device)
    python -m bench.separation throughput --device cpu --size tiny --long-seconds 6 --songs 3
        --song-seconds 4 --precision fp32 --songs-together 2 1 --shifts 0
                          (one command: a one-minute CPU smoke of the GPU set's code paths)
    python -m bench.separation memory [--durations 60 600] [--precision bf16] [--with-cli]

`speed` on the CPU prints wall time, CPU time (user + system) and peak RSS of the CLI, of demucs'
`apply_model` called in a Python process of its own (`bench/apply_model_process.py`: no CLI
layer) and of ours per song length, precision and batch size, the runs interleaved round by round
(the CLI, apply_model, then each of ours) so a machine shared with other work slows all alike,
and the CLI/ours and apply_model/ours ratios per round and their median (> 1: ours is faster /
smaller). `speed --device cuda` (or `throughput` on any
device, a smoke test on the CPU) runs one long song and then a batch of songs in one process each
(the CLI takes several files, so does `soundforge separate`) and prints wall time, audio seconds
per second and peak GPU memory side by side; for the batch of songs, ours both with the songs'
segments sharing batches (cross-song batching, `--songs-together`, by default 4 on a GPU) and
one song at a time. `memory` prints our peak RSS per track duration (flat
means memory does not grow with the track). Peak RSS is the child's `ru_maxrss` from `wait4`, so
each run is measured alone. Linux folds the parent's resident pages at fork/exec into a child's
`ru_maxrss`, so this process stays small: the model repo and the songs are built by a `prepare`
subprocess, and torch is never imported here.
"""

from __future__ import annotations

import argparse
import os
import statistics
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
    peak_gpu_mb: float = 0.0


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
    """Run `command` to completion; its wall time, CPU time and peak RSS (and peak GPU memory
    when `command` was wrapped by `with_peak_gpu`)."""
    peak_file = log_path.with_suffix(".gpu")
    peak_file.unlink(missing_ok=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall_s = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{label} failed (exit {process.returncode}):\n{tail}")
    gpu_mb = int(peak_file.read_text()) / 2**20 if peak_file.exists() else 0.0
    return Measurement(label, wall_s, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                       gpu_mb)


def with_peak_gpu(command: list[str], log_path: Path) -> list[str]:
    """`python -m MODULE ...` run through `bench.peak_memory`, which records peak GPU memory."""
    assert command[1] == "-m"
    return [command[0], "-m", "bench.peak_memory", str(log_path.with_suffix(".gpu")),
            *command[2:]]


def demucs_cli(repo: Path, songs: Sequence[Path], out: Path, shifts: int, overlap: float,
               device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "demucs.separate", "--repo", str(repo), "-n", MODEL,
            "--shifts", str(shifts), "--overlap", str(overlap), "-d", device, "-o", str(out),
            *map(str, songs)]


def in_process(repo: Path, songs: Sequence[Path], out: Path, shifts: int,
               overlap: float) -> list[str]:
    """demucs' `apply_model` in a Python process of its own (`bench/apply_model_process.py`)."""
    return [sys.executable, "-m", "bench.apply_model_process", "--repo", str(repo), "--name",
            MODEL, "--shifts", str(shifts), "--overlap", str(overlap), "--out", str(out),
            *map(str, songs)]


def ours(repo: Path, songs: Sequence[Path], out: Path, shifts: int, overlap: float,
         precision: str, threads: int, batch: int = 0, device: str = "cpu",
         songs_together: int = 0) -> list[str]:
    return [sys.executable, "-m", "soundforge.cli.main", "separate", *map(str, songs),
            "--out", str(out), "--model", MODEL, "--repo", str(repo), "--format", "wav",
            "--device", device, "--shifts", str(shifts), "--overlap", str(overlap),
            "--precision", precision, "--threads", str(threads), "--batch", str(batch),
            "--songs-together", str(songs_together)]


def print_table(rows: Sequence[Measurement], audio_s: dict[str, float] | None = None) -> None:
    """One line per run; with `audio_s` (label -> seconds of audio) also audio s per wall s and
    peak GPU memory."""
    extra = f"{'audio s/s':>11}{'peak GPU MB':>13}" if audio_s else ""
    print(f"{'run':<48}{'wall s':>10}{'cpu s':>10}{'peak RSS MB':>14}{extra}")
    for row in rows:
        line = f"{row.label:<48}{row.wall_s:>10.1f}{row.cpu_s:>10.1f}{row.peak_rss_mb:>14.0f}"
        if audio_s:
            line += f"{audio_s[row.label] / row.wall_s:>11.1f}{row.peak_gpu_mb:>13.0f}"
        print(line)


def prepare_in_subprocess(work: Path, size: str, durations: Sequence[float], songs: int = 0,
                          song_seconds: float = 0.0) -> Path:
    """Build the model repo and the songs in a child process (see the module docstring)."""
    subprocess.run([sys.executable, "-m", "bench.separation", "prepare", "--work", str(work),
                    "--size", size, "--durations", *map(str, durations), "--songs", str(songs),
                    "--song-seconds", str(song_seconds)], check=True)
    return work / "repo"


def song_path(work: Path, seconds: float) -> Path:
    return work / f"song-{seconds:g}.wav"


def batch_paths(work: Path, songs: int, seconds: float) -> list[Path]:
    return [work / f"batch-{index}-{seconds:g}.wav" for index in range(songs)]


def prepare(args: argparse.Namespace) -> None:
    from soundforge.separation import write_local_repo  # imports torch: child process only

    write_local_repo(args.work / "repo", MODEL, size=args.size)
    for seconds in args.durations:
        write_song(song_path(args.work, seconds), seconds)
    for index, path in enumerate(batch_paths(args.work, args.songs, args.song_seconds)):
        write_song(path, args.song_seconds, seed=index + 1)


def speed(args: argparse.Namespace, work: Path) -> None:
    """CPU: the CLI and each of our configurations, interleaved round by round."""
    repo = prepare_in_subprocess(work, args.size, args.seconds)
    configs = [(precision, batch) for precision in args.precision for batch in args.batch]
    print(f"{MODEL} {args.size}, shifts={args.shifts}, overlap={args.overlap}, torch "
          f"threads={args.threads or 'default'}, {os.cpu_count()} CPUs, {args.rounds} round(s)")
    for seconds in args.seconds:
        song = song_path(work, seconds)
        rows: list[Measurement] = []
        ratios: dict[str, list[tuple[float, float, float, float]]] = {}
        for round_ in range(1, args.rounds + 1):
            cli = measure(f"demucs CLI (fp32) #{round_}",
                          demucs_cli(repo, [song], work / "cli", args.shifts, args.overlap),
                          work / "cli.log")  # fmt: skip
            rows.append(cli)
            baseline = measure(f"demucs apply_model in-process (fp32) #{round_}",
                               in_process(repo, [song], work / "apply", args.shifts,
                                          args.overlap), work / "apply.log")  # fmt: skip
            rows.append(baseline)
            for precision, batch in configs:
                name = f"soundforge ({precision}, batch {batch or 'auto'})"
                row = measure(f"{name} #{round_}", ours(
                    repo, [song], work / "ours", args.shifts, args.overlap, precision,
                    args.threads, batch), work / "ours.log")  # fmt: skip
                rows.append(row)
                ratios.setdefault(name, []).append((cli.wall_s / row.wall_s,
                                                    cli.cpu_s / row.cpu_s,
                                                    cli.peak_rss_mb / row.peak_rss_mb,
                                                    baseline.wall_s / row.wall_s))
        print(f"\n{seconds:g} s stereo")
        print_table(rows)
        for name, values in ratios.items():
            wall, cpu, rss, apply = (statistics.median(column)
                                     for column in zip(*values, strict=True))  # fmt: skip
            by_round = ", ".join(f"{value[0]:.2f}" for value in values)
            print(f"{name}: {wall:.2f}x faster (wall; rounds {by_round}), {cpu:.2f}x less CPU, "
                  f"{rss:.2f}x less peak RSS than the CLI; {apply:.2f}x the wall of apply_model "
                  "in-process (medians)")


def device_speed(args: argparse.Namespace, work: Path) -> None:
    """A GPU (or any device): one long song, then a batch of songs, each set in one process per
    program; wall, audio seconds per second, peak GPU memory."""
    batch = [args.long_seconds] + [args.song_seconds] * args.songs
    repo = prepare_in_subprocess(work, args.size, sorted(set(batch)), songs=args.songs,
                                 song_seconds=args.song_seconds)
    sets = {f"1 x {args.long_seconds:g} s": [song_path(work, args.long_seconds)],
            f"{args.songs} x {args.song_seconds:g} s": batch_paths(work, args.songs,
                                                                   args.song_seconds)}
    print(f"{MODEL} {args.size} on {args.device}, shifts={args.shifts}, overlap={args.overlap}")
    for title, songs in sets.items():
        seconds = args.long_seconds if len(songs) == 1 else args.songs * args.song_seconds
        rows = [measure(f"demucs CLI (fp32) {title}", with_peak_gpu(demucs_cli(
            repo, songs, work / "cli", args.shifts, args.overlap, args.device), work / "cli.log"),
            work / "cli.log")]  # fmt: skip
        for precision in args.precision:
            for together in args.songs_together if len(songs) > 1 else [0]:
                label = f"soundforge ({precision}{_together_label(together)}) {title}"
                rows.append(measure(label, with_peak_gpu(ours(
                    repo, songs, work / "ours", args.shifts, args.overlap, precision,
                    args.threads, args.batch[0], args.device, together), work / "ours.log"),
                    work / "ours.log"))  # fmt: skip
        print()
        print_table(rows, {row.label: seconds for row in rows})
        for row in rows[1:]:
            print(f"{row.label}: {rows[0].wall_s / row.wall_s:.2f}x the CLI's songs per hour")


def _together_label(together: int) -> str:
    return {0: "", 1: ", one song at a time"}.get(together, f", {together} songs together")


def memory(args: argparse.Namespace, work: Path) -> None:
    repo = prepare_in_subprocess(work, args.size, args.durations)
    rows = []
    for seconds in args.durations:
        song = song_path(work, seconds)
        for precision in args.precision:
            rows.append(measure(
                f"soundforge {seconds:g} s ({precision})",
                ours(repo, [song], work / f"ours-{seconds:g}", args.shifts, args.overlap,
                     precision, args.threads, args.batch[0]),
                work / "ours.log",
            ))  # fmt: skip
        if args.with_cli:
            rows.append(measure(f"demucs CLI {seconds:g} s",
                                demucs_cli(repo, [song], work / "cli", args.shifts, args.overlap),
                                work / "cli.log"))  # fmt: skip
    print(f"{MODEL} {args.size}, shifts={args.shifts}, overlap={args.overlap}")
    print_table(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=("speed", "throughput", "memory", "prepare"))
    parser.add_argument("--work", type=Path, help="prepare: the folder to fill")
    parser.add_argument("--seconds", type=float, nargs="+", default=[30.0, 60.0],
                        help="speed (CPU): track lengths")
    parser.add_argument("--rounds", type=int, default=1, help="speed (CPU): interleaved rounds")
    parser.add_argument("--batch", type=int, nargs="+", default=[0],
                        help="ours: segments per model call (0: by device)")
    parser.add_argument("--device", default="cpu", help="speed: cpu, or cuda for the GPU set")
    parser.add_argument("--long-seconds", type=float, default=600.0,
                        help="speed --device: the long song")
    parser.add_argument("--songs", type=int, default=10, help="speed --device: batch songs")
    parser.add_argument("--song-seconds", type=float, default=240.0,
                        help="speed --device: length of each batch song")
    parser.add_argument("--songs-together", type=int, nargs="+", default=[0, 1],
                        help="speed --device, the batch of songs: ours with each of these "
                        "(0: by device, 4 on a GPU; 1: one song at a time)")
    parser.add_argument("--durations", type=float, nargs="+", default=[60.0, 600.0],
                        help="memory: track lengths in seconds")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16", "fp16"),
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
    if args.mode == "throughput" or (args.mode == "speed" and args.device != "cpu"):
        run = device_speed
    else:
        run = speed if args.mode == "speed" else memory
    with tempfile.TemporaryDirectory(prefix="sf-bench-") as directory:
        run(args, Path(directory))


if __name__ == "__main__":
    main()
