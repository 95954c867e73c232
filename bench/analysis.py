"""Analysis speed: the original system's way against ours on one file, each in its own process.

(a) original: `librosa.load`, then one librosa call per feature (beat_track, chroma_stft,
chroma_cqt, chroma_cens, mfcc, rms, zero_crossing_rate, spectral_centroid/rolloff/bandwidth/
contrast/flatness), every call computing its own spectrogram; (b) ours: `analyze(path)`.
Both warm (one untimed call first), best of 3; peak RSS of each process; and the cold cost: the
first call in a fresh process (imports and numba JIT included), plus what `warm_up()` costs.

    .venv/bin/python bench/analysis.py [FILE]   # default: a synthesized 180 s stereo 44.1 kHz song
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
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the repository, not bench/ (its module names shadow the stdlib)

REPEATS = 3


def original(path: str) -> None:
    import librosa

    y, sr = librosa.load(path)
    librosa.beat.beat_track(y=y, sr=sr)
    librosa.feature.chroma_stft(y=y, sr=sr)
    librosa.feature.chroma_cqt(y=y, sr=sr)
    librosa.feature.chroma_cens(y=y, sr=sr)
    librosa.feature.mfcc(y=y, sr=sr, n_mfcc=13)
    librosa.feature.rms(y=y)
    librosa.feature.zero_crossing_rate(y)
    librosa.feature.spectral_centroid(y=y, sr=sr)
    librosa.feature.spectral_rolloff(y=y, sr=sr)
    librosa.feature.spectral_bandwidth(y=y, sr=sr)
    librosa.feature.spectral_contrast(y=y, sr=sr)
    librosa.feature.spectral_flatness(y=y)


def ours(path: str) -> None:
    from soundforge.analysis import analyze

    analyze(path)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def worker(mode: str, path: str, cold: bool) -> dict[str, Any]:
    """Runs in the child process: times `mode` on `path`, returns the figures."""
    run = original if mode == "original" else ours
    started = time.perf_counter()
    if cold:
        run(path)
        return {"cold_s": time.perf_counter() - started, "peak_rss_mib": peak_rss_mib()}
    warm_up_s = None
    if mode == "ours":
        from soundforge.analysis import warm_up

        warm_up()
        warm_up_s = time.perf_counter() - started
    run(path)  # untimed warm call
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        run(path)
        times.append(time.perf_counter() - started)
    return {"best_s": min(times), "times_s": times, "warm_up_s": warm_up_s,
            "peak_rss_mib": peak_rss_mib()}  # fmt: skip


def in_subprocess(mode: str, path: Path, cold: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", mode, str(path)]
    output = subprocess.run(command + (["--cold"] if cold else []), check=True,
                            capture_output=True, text=True).stdout  # fmt: skip
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def synthesize(folder: Path) -> Path:
    from tests.audio_synth import write_test_song

    return write_test_song(folder / "bench_180s.wav", 180.0, 44100, tempo=126.0, key="D minor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", type=Path, help="audio file (default: synthesized)")
    parser.add_argument("--worker", choices=("original", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.file), args.cold)))
        return
    with tempfile.TemporaryDirectory() as folder:
        path = args.file or synthesize(Path(folder))
        results = {mode: in_subprocess(mode, path, cold=False) for mode in ("original", "ours")}
        cold = {mode: in_subprocess(mode, path, cold=True) for mode in ("original", "ours")}
    slow, fast = results["original"], results["ours"]
    print(f"file: {path.name if args.file else 'synthesized 180 s stereo 44.1 kHz WAV'}")
    print(f"warm, best of {REPEATS} (each in its own process):")
    for mode, figures in results.items():
        runs = ", ".join(f"{seconds:.3f}" for seconds in figures["times_s"])
        print(
            f"  {mode:9s} {figures['best_s']:7.3f} s  (runs {runs})  "
            f"peak RSS {figures['peak_rss_mib']:6.0f} MiB"
        )
    print(f"  ratio     {slow['best_s'] / fast['best_s']:7.1f}x  (original / ours)")
    print("cold, first call in a fresh process (imports and numba JIT included):")
    for mode, figures in cold.items():
        print(
            f"  {mode:9s} {figures['cold_s']:7.3f} s  peak RSS {figures['peak_rss_mib']:6.0f} MiB"
        )
    print(f"  ours: warm_up() at worker start takes {fast['warm_up_s']:.3f} s")


if __name__ == "__main__":
    main()
