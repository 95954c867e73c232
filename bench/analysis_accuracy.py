"""Accuracy of the analysis engine beyond the tests, on a broader synthesized grid with known
truth: key over 24 keys x 3 progressions per mode x 3 timbres x with/without drums, scored for
every key profile in `soundforge.analysis.key.KEY_PROFILES` (the evidence for the default
profile); tempo over 60-200 BPM in 5 BPM steps, drums alone and with chords, as WAV and as MP3.

    .venv/bin/python bench/analysis_accuracy.py [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not bench/

from soundforge.analysis import analyze  # noqa: E402
from soundforge.analysis.key import KEY_PROFILES, estimate_key, key_correlations  # noqa: E402
from tests.audio_synth import (  # noqa: E402
    DRUM_STYLES,
    MAJOR_PROGRESSIONS,
    MINOR_PROGRESSIONS,
    PITCH_CLASSES,
    write_test_song,
)

SR = 22050


def key_grid(folder: Path, quick: bool) -> None:
    correct: dict[str, int] = defaultdict(int)
    relative: dict[str, int] = defaultdict(int)
    misses: dict[str, list[str]] = defaultdict(list)
    margins: dict[str, list[float]] = defaultdict(list)
    cases = 0
    timbres = (6,) if quick else (1, 6, 12)
    for mode, table in (("major", MAJOR_PROGRESSIONS), ("minor", MINOR_PROGRESSIONS)):
        for tonic in PITCH_CLASSES:
            key = f"{tonic} {mode}"
            for progression in table:
                for harmonics in timbres:
                    for drums in (False, True):
                        path = write_test_song(
                            folder / "key.wav",
                            12.0,
                            SR,
                            tempo=100.0,
                            key=key,
                            channels=1,
                            drums=drums,
                            progression=progression,
                            harmonics=harmonics,
                        )
                        chroma = analyze(path).chroma
                        cases += 1
                        for profile in KEY_PROFILES:
                            correlations = key_correlations(chroma, profile)
                            truth = correlations.pop(key)
                            margins[profile].append(truth - max(correlations.values()))
                            estimate = estimate_key(chroma, profile)
                            found = estimate.name if estimate else "none"
                            if found == key:
                                correct[profile] += 1
                            else:
                                misses[profile].append(f"{progression} in {key} -> {found}")
                                relative[profile] += _is_relative(key, found)
    print(f"key: {cases} cases (24 keys x progressions x timbres x drums on/off)")
    print("  margin: correlation of the true key minus the best other key (> 0: correct)")
    print(
        f"  {'profile':14s} {'exact':>7s} {'relative':>9s} {'mean margin':>12s} "
        f"{'5th pct margin':>15s}"
    )
    for profile in KEY_PROFILES:
        ordered = sorted(margins[profile])
        print(
            f"  {profile:14s} {correct[profile] / cases:7.1%} {relative[profile] / cases:9.1%} "
            f"{sum(ordered) / len(ordered):12.3f} {ordered[len(ordered) // 20]:15.3f}"
        )
    for profile in KEY_PROFILES:
        kinds = sorted({miss.split(" in ")[0] for miss in misses[profile]})
        print(f"  {profile} misses by progression: {kinds}")


def _is_relative(expected: str, found: str) -> bool:
    if found == "none":
        return False
    tonic, mode = expected.split()
    other_tonic, other_mode = found.split()
    shift = 9 if mode == "major" else 3
    return other_mode != mode and PITCH_CLASSES.index(other_tonic) == (
        PITCH_CLASSES.index(tonic) + shift) % 12  # fmt: skip


def tempo_grid(folder: Path, quick: bool) -> None:
    step = 20 if quick else 5
    rows = []
    for suffix in (".wav", ".mp3"):
        for style in DRUM_STYLES:
            for chords in (False, True):
                errors = []
                for bpm in range(60, 201, step):
                    path = write_test_song(
                        folder / f"tempo{suffix}",
                        20.0,
                        SR,
                        tempo=float(bpm),
                        key="G major",
                        chords=chords,
                        channels=1,
                        drum_style=style,
                    )
                    tempo = analyze(path).tempo or 0.0
                    errors.append((abs(tempo - bpm) / bpm, tempo, bpm))
                within = sum(error <= 0.02 for error, _, _ in errors)
                misses = [f"{bpm}->{tempo:.1f}" for error, tempo, bpm in errors if error > 0.02]
                label = f"{suffix[1:]} {style}{' + chords' if chords else ''}"
                median = sorted(error for error, _, _ in errors)[len(errors) // 2]
                rows.append(
                    f"  {label:32s} within 2%: {within:2d}/{len(errors)}  "
                    f"median error {median:.2%}  misses: {' '.join(misses) or '-'}"
                )
    print(f"tempo: 60-200 BPM every {step} BPM, 20 s clips, drum styles {', '.join(DRUM_STYLES)}")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller grid")
    parser.add_argument("--only", choices=("key", "tempo"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.only != "tempo":
            key_grid(Path(folder), args.quick)
        if args.only != "key":
            tempo_grid(Path(folder), args.quick)


if __name__ == "__main__":
    main()
