"""Accuracy of the analysis beside librosa's standard recipe (`beat.beat_track` for the tempo;
mean `chroma_cqt` correlated with Krumhansl-Kessler profiles for the key), on the same clips,
scored with mir_eval: key by `key.weighted_score` (MIREX: 1 exact, 0.5 fifth, 0.3 relative,
0.2 parallel), tempo by Accuracy1 (within 4 %) and Accuracy2 (also at 2x, 1/2x, 3x, 1/3x),
through `tempo.detection`. Two sets, one run, each per class (no drums / drums):

- corpus: the rendered recordings of `bench/analysis_corpus.py` (built on first use; needs
  fluidsynth, a GM soundfont and the bench extra; skipped with the reason when missing), per
  part (tuning: what the analysis was tuned on; validation: held back, `split_of`), and the
  four-part hymns alone, the hymns with secondary dominants alone, the hymns that modulate and
  come back home alone, the slow hymns with fermatas alone and the ornamented hymns (sevenths,
  suspensions, Picardy thirds, a bass in eighths) alone, and the hymns at 111-160 BPM alone
  (the classes closest to chorales);
- grid: the synthesized grid of `tests/audio_synth.py` (24 keys x 3 progressions per mode x
  3 timbres x drums on/off for the key; 60-200 BPM for the tempo), as before.

Every key profile in `soundforge.analysis.key.KEY_PROFILES` is also scored on this engine's
note chroma (the evidence for the default profile).

With `--skip-seconds S` the corpus clips are scored with their first S seconds cut off (copies
kept in `cache/cut-S/`): a clip that does not start where the piece starts.

    .venv/bin/python bench/analysis_accuracy.py [--quick] [--only corpus|grid] [--skip-seconds S]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository, not bench/

from bench.analysis_corpus import (  # noqa: E402
    DEFAULT_CACHE,
    build_corpus,
    split_of,
    tools_missing,
    use_soundfont,
)
from soundforge.analysis import analyze  # noqa: E402
from soundforge.analysis.key import KEY_PROFILES, estimate_key  # noqa: E402
from tests.audio_synth import (  # noqa: E402
    DRUM_STYLES,
    MAJOR_PROGRESSIONS,
    MINOR_PROGRESSIONS,
    PITCH_CLASSES,
    write_test_song,
)

SR = 22050
TEMPO_TOLERANCE = 0.04
OCTAVE_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


@dataclass(frozen=True)
class Case:
    path: str
    key: str | None  # truth; None: not scored for key
    tempo: float | None  # truth; None: not scored for tempo
    drums: bool
    label: str
    part: str = "all"  # "tuning" / "validation" for corpus clips


@dataclass(frozen=True)
class Estimate:
    key: str | None
    tempo: float | None
    note_chroma: list[float] | None = None


def ours(path: str) -> Estimate:
    report = analyze(path)
    return Estimate(report.key, report.tempo, report.key_chroma)


def librosa_recipe(path: str) -> Estimate:
    import librosa
    import numpy as np

    y, sr = librosa.load(path, sr=SR)
    tempo, _ = librosa.beat.beat_track(y=y, sr=sr)
    chroma = librosa.feature.chroma_cqt(y=y, sr=sr).mean(axis=1)
    key = estimate_key(chroma, "krumhansl")
    return Estimate(key.name if key else None, float(np.asarray(tempo).ravel()[0]))


def key_score(truth: str, estimate: str | None) -> float:
    import mir_eval

    return float(mir_eval.key.weighted_score(truth, estimate)) if estimate else 0.0


def tempo_hits(truth: float, estimate: float | None) -> tuple[bool, bool]:
    """(Accuracy1, Accuracy2) of one estimate, via mir_eval's tempo detection."""
    import numpy as np
    from mir_eval.tempo import detection

    if not estimate:
        return False, False
    reference = np.array([truth, truth])

    def hit(factor: float) -> bool:
        return bool(detection(reference, 0.5, np.array([estimate * factor] * 2),
                              tol=TEMPO_TOLERANCE)[1])  # fmt: skip

    return hit(1.0), any(hit(factor) for factor in OCTAVE_FACTORS)


def _row(chosen: list[tuple[Case, Estimate]], system: str, label: str) -> str:
    keyed = [(case, est) for case, est in chosen if case.key]
    timed = [(case, est) for case, est in chosen if case.tempo]
    scores = [key_score(case.key or "", est.key) for case, est in keyed]
    fifths = sum(score == 0.5 for score in scores)
    relative = sum(score == 0.3 for score in scores)
    hits = [tempo_hits(case.tempo or 0.0, est.tempo) for case, est in timed]
    missing = sum(est.tempo is None for _, est in timed)
    key_part = (f"key MIREX {sum(scores) / len(scores):.3f} exact "
                f"{sum(s == 1.0 for s in scores) / len(scores):.3f} fifth {fifths:2d} "
                f"rel {relative:2d}" if scores else "key -")  # fmt: skip
    tempo_part = (f"tempo Acc1 {sum(a for a, _ in hits) / len(hits):.3f} "
                  f"Acc2 {sum(b for _, b in hits) / len(hits):.3f} none {missing:2d}"
                  if hits else "tempo -")  # fmt: skip
    return f"  {system:10s} {label:22s} n={len(chosen):3d}  {key_part}  |  {tempo_part}"


def _score(cases: list[Case], system: str, estimates: list[Estimate]) -> list[str]:
    """One row per part (tuning / validation, when the cases have parts) and class (no drums /
    drums), then the hymns, the chromatic, the modulating, the fermata, the ornamented and
    the fast hymns alone per part."""
    pairs = list(zip(cases, estimates, strict=True))
    rows = []
    for part in sorted({case.part for case in cases}, key=("tuning", "validation", "all").index):
        for drums in (False, True):
            chosen = [(case, est) for case, est in pairs
                      if case.drums == drums and case.part == part]  # fmt: skip
            if chosen:
                label = f"{'drums' if drums else 'no drums'} {part if part != 'all' else ''}"
                rows.append(_row(chosen, system, label))
        for source, label in (("hymn", "hymns"), ("chromatic hymn", "chromatic hymns"),
                              ("modulating hymn", "modulating hymns"),
                              ("fermata hymn", "fermata hymns"),
                              ("ornamented hymn", "ornamented hymns"),
                              ("fast hymn", "fast hymns")):  # fmt: skip
            chosen = [(case, est) for case, est in pairs
                      if case.part == part and case.label.startswith(source + " (")]  # fmt: skip
            if chosen:
                rows.append(_row(chosen, system, f"{label} {part}"))
    return rows


def _misses(cases: list[Case], estimates: list[Estimate]) -> str:
    wrong = []
    for case, est in zip(cases, estimates, strict=True):
        if case.key and est.key != case.key:
            wrong.append(f"key [{case.part}] {Path(case.path).stem} {case.label}: {case.key}"
                         f" -> {est.key}")  # fmt: skip
        if case.tempo and not tempo_hits(case.tempo, est.tempo)[0]:
            wrong.append(f"tempo [{case.part}] {Path(case.path).stem} {case.label}: "
                         f"{case.tempo:g} -> {est.tempo}")  # fmt: skip
    return "\n".join(f"    {line}" for line in wrong)


def _profiles(cases: list[Case], estimates: list[Estimate]) -> list[str]:
    rows = []
    for profile in KEY_PROFILES:
        scores = []
        for case, est in zip(cases, estimates, strict=True):
            if case.key and est.note_chroma:
                found = estimate_key(est.note_chroma, profile)
                scores.append(key_score(case.key, found.name if found else None))
        if scores:
            rows.append(f"    {profile:14s} MIREX {sum(scores) / len(scores):.3f}")
    return rows


def _librosa_cached(cases: list[Case], cache: Path | None) -> list[Estimate]:
    """librosa's estimates, kept in `cache/librosa.json` for clips that have not changed (the
    recipe is fixed, and it is the slow half of a run)."""
    import librosa

    store_path = cache / "librosa.json" if cache else None
    store = json.loads(store_path.read_text()) if store_path and store_path.exists() else {}
    estimates = []
    version = getattr(librosa, "__version__", "?")
    for case in cases:
        stamp = f"{case.path}:{Path(case.path).stat().st_mtime_ns}:{version}"
        if stamp not in store:
            store[stamp] = asdict(librosa_recipe(case.path))
        estimates.append(Estimate(**store[stamp]))
    if store_path:
        store_path.write_text(json.dumps(store))
    return estimates


def compare(title: str, cases: list[Case], verbose: bool, cache: Path | None = None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = [ours(case.path) for case in cases]
        theirs = _librosa_cached(cases, cache)
    print(f"{title}: {len(cases)} clips")
    for system, estimates in (("soundforge", mine), ("librosa", theirs)):
        print("\n".join(_score(cases, system, estimates)))
    print("  key profiles on SoundForge's note chroma (all clips):")
    print("\n".join(_profiles(cases, mine)))
    if verbose:
        print("  soundforge misses:\n" + _misses(cases, mine))
        print("  librosa misses:\n" + _misses(cases, theirs))


def _cut(path: str, folder: Path, seconds: float) -> str:
    """A copy of the clip without its first `seconds`, made once in `folder`."""
    import soundfile

    target = folder / Path(path).name
    if not target.exists() or target.stat().st_mtime_ns < Path(path).stat().st_mtime_ns:
        audio, rate = soundfile.read(path, dtype="float32")
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(target), audio[int(seconds * rate) :], rate, subtype="PCM_16")
    return str(target)


def corpus_cases(cache: Path, skip_seconds: float = 0.0) -> list[Case]:
    folder = cache / f"cut-{skip_seconds:g}"
    return [Case(_cut(clip.path, folder, skip_seconds) if skip_seconds > 0 else clip.path,
                 clip.key, clip.tempo, clip.drums, f"{clip.source} ({clip.ensemble})",
                 split_of(clip)) for clip in build_corpus(cache)]  # fmt: skip


def grid_cases(folder: Path, quick: bool) -> Iterator[Case]:
    timbres = (6,) if quick else (1, 6, 12)
    number = 0
    for mode, table in (("major", MAJOR_PROGRESSIONS), ("minor", MINOR_PROGRESSIONS)):
        for tonic in PITCH_CLASSES[:: 3 if quick else 1]:
            key = f"{tonic} {mode}"
            for progression in table:
                for harmonics in timbres:
                    for drums in (False, True):
                        number += 1
                        path = write_test_song(
                            folder / f"key{number}.wav", 12.0, SR, tempo=100.0, key=key,
                            channels=1, drums=drums, progression=progression, harmonics=harmonics,
                        )
                        yield Case(str(path), key, 100.0, drums, f"{progression} x{harmonics}")
    for style in DRUM_STYLES:
        for chords in (False, True):
            for bpm in range(60, 201, 20 if quick else 5):
                number += 1
                path = write_test_song(folder / f"tempo{number}.wav", 20.0, SR, tempo=float(bpm),
                                       key="G major", chords=chords, channels=1,
                                       drum_style=style)  # fmt: skip
                yield Case(str(path), None, float(bpm), True, f"{style} chords={chords}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smaller synthetic grid")
    parser.add_argument("--only", choices=("corpus", "grid"))
    parser.add_argument("--cache", type=Path, help=f"corpus folder (default {DEFAULT_CACHE})")
    parser.add_argument("--soundfont", type=Path,
                        help="the corpus rendered through this soundfont (its own folder)")
    parser.add_argument("--verbose", action="store_true", help="list every miss")
    parser.add_argument("--skip-seconds", type=float, default=0.0,
                        help="cut this much off the start of every corpus clip")  # fmt: skip
    args = parser.parse_args()
    args.cache = use_soundfont(args.soundfont, args.cache)
    if args.only != "grid":
        missing = tools_missing() if not (args.cache / "index.json").exists() else None
        if missing:
            print(f"corpus: skipped ({missing})")
        else:
            cut = f", first {args.skip_seconds:g} s cut" if args.skip_seconds > 0 else ""
            font = f" through {args.soundfont.name}" if args.soundfont else ""
            title = f"corpus (FluidSynth renderings{font}){cut}"
            compare(title, corpus_cases(args.cache, args.skip_seconds), args.verbose,
                    args.cache)  # fmt: skip
    if args.only != "corpus":
        with tempfile.TemporaryDirectory() as folder:
            cases = list(grid_cases(Path(folder), args.quick))
            compare("grid (synthesized)", cases, args.verbose)


if __name__ == "__main__":
    main()
