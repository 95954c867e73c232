"""`soundforge separate FILE... --out DIR`: split audio files into stem files with demucs and
print where they went. Several files share one loaded model and one batch stream, a few at a
time on a GPU (`--songs-together`; the next file joins as soon as one is done), the next ones
decoded and the finished ones encoded while the network works. Flags override the `SOUNDFORGE_*`
settings; no database is needed."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from soundforge import audio_io
from soundforge.audio_limits import AudioLimits
from soundforge.cli.output import safe, say
from soundforge.errors import ConfigError
from soundforge.separation.registry import MODEL_NAMES
from soundforge.settings import load_settings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "separate",
        help="separate an audio file into stems (demucs)",
        description="Separate FILE into stems (drums, bass, other, vocals; htdemucs_6s adds "
        "guitar and piano) written as DIR/<stem>.<format>; several files go to "
        "DIR/<file name>/<stem>.<format>. Defaults come from the SOUNDFORGE_* settings.",
    )
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE",
                        help="audio file(s) to separate")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for the stem files (created)")
    parser.add_argument("--model", metavar="NAME",
                        help=f"{', '.join(MODEL_NAMES)} (default: setting)")
    parser.add_argument("--repo", type=Path, metavar="DIR",
                        help="local demucs model folder (default: SOUNDFORGE_DEMUCS_REPO, else "
                        "demucs' download cache)")
    parser.add_argument("--format", dest="stem_format", choices=("flac", "wav"),
                        help="stem file format")
    parser.add_argument("--shifts", type=int, metavar="N",
                        help="random-shift passes averaged (0 = deterministic)")
    parser.add_argument("--overlap", type=float, metavar="F", help="segment overlap, 0 <= F < 1")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                        help="fp32 (matches demucs), bf16 (faster on CPUs with AVX512-BF16 and "
                        "on GPUs) or fp16 (GPU)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="segments per model call (0 = by device: one at a time on the CPU, "
                        "by free memory on a GPU; N > 1 on the CPU: side by side)")
    parser.add_argument("--songs-together", type=int, metavar="N", default=0,
                        help="files whose segments share the model's batches (0 = by device: "
                        "4 on a GPU, 1 on the CPU)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="torch device")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (0 = default)")
    parser.add_argument("--json", action="store_true", help="print {stem: path} as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from soundforge.separation import Separator  # torch is imported only when separating

    settings = load_settings()
    limits = AudioLimits.from_settings(settings)
    for file in args.files:  # a bad input fails before the model loads
        audio_io.probe(file, count_frames=False, limits=limits)
    names = [file.stem for file in args.files]
    if len(set(names)) < len(names):
        raise ConfigError("two input files have the same name; they would share an output folder")

    def pick(flag: Any, setting: Any) -> Any:
        return setting if flag is None else flag

    separator = Separator(
        pick(args.model, settings.demucs_model),
        repo=pick(args.repo, settings.demucs_repo),
        device=pick(args.device, settings.device),
        precision=pick(args.precision, settings.precision),
        shifts=pick(args.shifts, settings.shifts),
        overlap=pick(args.overlap, settings.overlap),
        stem_format=pick(args.stem_format, settings.stem_format),
        torch_threads=pick(args.threads, settings.torch_threads),
        batch_size=pick(args.batch, settings.separation_batch),
        songs_together=args.songs_together,
        limits=limits,
    )
    if len(args.files) == 1:
        stems = separator.separate(args.files[0], args.out)
        if args.json:
            print(json.dumps({stem: str(path) for stem, path in stems.items()}))
        else:
            for stem, path in stems.items():
                say(f"{stem}\t{safe(path)}")
    else:
        results = separator.separate_many([(file, args.out / file.stem) for file in args.files])
        if args.json:
            print(json.dumps({str(file): {stem: str(path) for stem, path in stems.items()}
                              for file, stems in zip(args.files, results, strict=True)}))
        else:
            for file, stems in zip(args.files, results, strict=True):
                for stem, path in stems.items():
                    say(f"{safe(file)}\t{stem}\t{safe(path)}")
    sys.stdout.flush()
    return 0
