"""The in-process baseline of `bench/separation.py speed`: demucs' own `apply_model` called from
a Python process of its own, with no command-line layer. It does what the demucs CLI does around
the call (the model from the local repo, the mix normalised by its mean and deviation, the stems
scaled back, 16-bit WAV stems written), reads the file with soundfile (the songs are WAV at the
model's rate, so there is nothing to resample) and runs the model under `torch.inference_mode`.

    python -m bench.apply_model_process --repo REPO --name htdemucs --out DIR SONG...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile
import torch
from demucs.apply import apply_model
from demucs.audio import save_audio
from demucs.pretrained import get_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("songs", type=Path, nargs="+")
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--name", default="htdemucs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shifts", type=int, default=1)
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args()
    model = get_model(args.name, repo=args.repo)
    model.eval()
    args.out.mkdir(parents=True, exist_ok=True)
    for song in args.songs:
        audio, rate = soundfile.read(str(song), dtype="float32", always_2d=True)
        if rate != model.samplerate or audio.shape[1] != model.audio_channels:
            raise SystemExit(f"{song}: {rate} Hz x {audio.shape[1]}, the model takes "
                             f"{model.samplerate} Hz x {model.audio_channels}")  # fmt: skip
        wav = torch.from_numpy(audio.T.copy())
        reference = wav.mean(0)
        mean, std = reference.mean(), reference.std() + 1e-8
        with torch.inference_mode():
            stems = apply_model(model, ((wav - mean) / std)[None], shifts=args.shifts,
                                split=True, overlap=args.overlap, device="cpu",
                                progress=False)[0]  # fmt: skip
        for name, stem in zip(model.sources, stems * std + mean, strict=True):
            save_audio(stem, str(args.out / f"{song.stem}-{name}.wav"), model.samplerate)


if __name__ == "__main__":
    main()
