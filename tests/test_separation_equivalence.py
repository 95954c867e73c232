"""Our stems equal the demucs CLI's (`python -m demucs.separate --repo DIR -n NAME`) for the same
weights, shifts and overlap, within 1e-4 after both are read as float32; and the streaming
overlap-add equals `demucs.apply.apply_model` on long inputs with a cheap stand-in model."""

from __future__ import annotations

import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from demucs.apply import BagOfModels, apply_model

from soundforge.separation import Separator, stem_names, write_local_repo
from soundforge.separation.loading import LoadedModel
from soundforge.separation.streaming import separate_stream
from tests.test_separation_support import read_stem, write_mix

TOLERANCE = 1e-4
# Runs demucs' CLI with Python's `random` seeded, so its shift offsets can be reproduced.
SEEDED_DEMUCS_CLI = "import random, sys; random.seed(int(sys.argv.pop(1)))\n" \
    "from demucs.separate import main; main(sys.argv[1:])"


def run_demucs_cli(repo: Path, name: str, song: Path, out: Path, *, shifts: int,
                   overlap: float, seed: int = 0) -> Path:
    command = [sys.executable, "-c", SEEDED_DEMUCS_CLI, str(seed), "--repo", str(repo), "-n",
               name, "--shifts", str(shifts), "--overlap", str(overlap), "--float32", "-o",
               str(out), str(song)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return out / name / song.stem


def assert_stems_match(ours: dict[str, Path], theirs: Path, stems: tuple[str, ...]) -> None:
    assert list(ours) == list(stems)
    for stem, path in ours.items():
        our_samples, their_samples = read_stem(path), read_stem(theirs / f"{stem}.wav")
        assert our_samples.shape == their_samples.shape
        assert float(np.abs(their_samples).max()) > 1e-3  # a silent stem would prove nothing
        assert float(np.abs(our_samples - their_samples).max()) <= TOLERANCE, stem


@pytest.mark.parametrize(
    ("name", "overlap", "stem_format"),
    [("htdemucs", 0.25, "flac"), ("htdemucs_6s", 0.5, "wav"),
     pytest.param("htdemucs_ft", 0.25, "flac", marks=pytest.mark.slow),
     pytest.param("mdx_extra", 0.1, "flac", marks=pytest.mark.slow)],
)  # fmt: skip
def test_stems_equal_demucs_cli_with_same_weights_and_no_shift(
    tmp_path: Path, name: str, overlap: float, stem_format: str
) -> None:
    repo = write_local_repo(tmp_path / "repo", name, size="tiny", seed=3)
    song = write_mix(tmp_path / "song.wav", seconds=4.5)
    theirs = run_demucs_cli(repo, name, song, tmp_path / "cli", shifts=0, overlap=overlap)
    separator = Separator(name, repo=repo, shifts=0, overlap=overlap,
                          stem_format=stem_format)  # type: ignore[arg-type]
    ours = separator.separate(song, tmp_path / "ours")
    assert all(path.suffix == f".{stem_format}" for path in ours.values())
    assert_stems_match(ours, theirs, stem_names(name))


def test_seeded_shift_offsets_reproduce_demucs_cli_shift_trick(tmp_path: Path) -> None:
    repo = write_local_repo(tmp_path / "repo", "htdemucs", size="tiny")
    song = write_mix(tmp_path / "song.wav", seconds=4.0, channels=1)
    theirs = run_demucs_cli(repo, "htdemucs", song, tmp_path / "cli", shifts=1, overlap=0.25,
                            seed=11)
    separator = Separator("htdemucs", repo=repo, shifts=1, rng=random.Random(11))
    assert_stems_match(separator.separate(song, tmp_path / "ours"), theirs,
                       stem_names("htdemucs"))


class _StandInModel(torch.nn.Module):
    """A cheap position-sensitive 'separator': a fixed random 1-D convolution per source, with
    a demucs-like `segment` and `valid_length` (rounded up to a multiple of 64)."""

    def __init__(self, sources: int, segment: Fraction, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.sources = ["s"] * sources
        self.samplerate, self.audio_channels, self.segment = 44100, 2, segment
        self.kernel = torch.nn.Parameter(torch.randn(2 * sources, 2, 33, generator=generator))

    def valid_length(self, length: int) -> int:
        return -(-length // 64) * 64

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        out = torch.nn.functional.conv1d(mix, self.kernel, padding=16)
        return torch.tanh(out).view(mix.shape[0], len(self.sources), 2, -1)


@pytest.mark.parametrize(("members", "shifts", "overlap"), [(1, 0, 0.25), (2, 2, 0.4)])
def test_streaming_overlap_add_equals_apply_model_on_a_long_track(
    members: int, shifts: int, overlap: float
) -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed) for seed in range(members)]
    weights = [[1.0, 0.5, 0.25], [0.0, 0.5, 1.0]][:members]
    mix = torch.randn(2, 44100 * 7 + 123, generator=torch.Generator().manual_seed(0))
    random.seed(5)
    bag = BagOfModels(models, weights)  # type: ignore[arg-type]  # duck-typed like demucs' own
    expected = apply_model(bag, mix[None], shifts=shifts,
                           overlap=overlap)[0]
    loaded = LoadedModel("stand-in", tuple(models), tuple(map(tuple, weights)), ("a", "b", "c"),
                         44100, 2, torch.device("cpu"))

    class Windows:
        frames = mix.shape[-1]

        def window(self, start: int, length: int) -> torch.Tensor:
            padded = torch.zeros(2, length)
            first, last = max(start, 0), min(start + length, self.frames)
            padded[:, first - start : last - start] = mix[:, first:last]
            return padded

    calls: list[tuple[int, int]] = []
    blocks = list(separate_stream(
        loaded, Windows(), shifts=shifts, overlap=overlap, rng=random.Random(5), bf16=False,
        denormalize=lambda block: block, after_segment=lambda done, total: calls.append(
            (done, total)),
    ))  # fmt: skip
    ours = torch.cat(blocks, dim=-1)
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) <= 1e-5
    segment_length = 44100 // 2
    assert max(block.shape[-1] for block in blocks) <= segment_length  # never the whole track
    assert [done for done, _ in calls] == list(range(1, calls[-1][1] + 1))
