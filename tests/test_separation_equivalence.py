"""Our stems equal the demucs CLI's (`python -m demucs.separate --repo DIR -n NAME`) for the same
weights, shifts and overlap, within 1e-4 after both are read as float32, at every batch size; and
the batched streaming overlap-add equals `demucs.apply.apply_model` on long inputs with a cheap
stand-in model, also when the device runs out of memory mid-song."""

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
from soundforge.separation.cpu_workers import SegmentWorkers
from soundforge.separation.loading import LoadedModel
from soundforge.separation.streaming import BatchLimit, SongStream, stream_songs
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
    ("name", "overlap", "stem_format", "batch_size"),
    [("htdemucs", 0.25, "flac", 1), ("htdemucs", 0.25, "wav", 2),
     ("htdemucs_6s", 0.5, "wav", 5),
     pytest.param("htdemucs_ft", 0.25, "flac", 3, marks=pytest.mark.slow),
     pytest.param("mdx_extra", 0.1, "flac", 2, marks=pytest.mark.slow)],
)  # fmt: skip
def test_stems_equal_demucs_cli_with_same_weights_and_no_shift(
    tmp_path: Path, name: str, overlap: float, stem_format: str, batch_size: int
) -> None:
    repo = write_local_repo(tmp_path / "repo", name, size="tiny", seed=3)
    song = write_mix(tmp_path / "song.wav", seconds=4.5)
    theirs = run_demucs_cli(repo, name, song, tmp_path / "cli", shifts=0, overlap=overlap)
    separator = Separator(name, repo=repo, shifts=0, overlap=overlap, batch_size=batch_size,
                          stem_format=stem_format)  # type: ignore[arg-type]
    ours = separator.separate(song, tmp_path / "ours")
    assert all(path.suffix == f".{stem_format}" for path in ours.values())
    assert_stems_match(ours, theirs, stem_names(name))


# One shift only: the CLI draws each further offset after the previous passes ran, and every
# HTDemucs forward call draws from `random` too (its transformer's `randrange(sin_random_shift +
# 1)`), so later offsets depend on the segment count. Several shifts are compared with
# `apply_model` on a stand-in model below.
@pytest.mark.parametrize("batch_size", [1, 3])
def test_seeded_shift_offsets_reproduce_demucs_cli_shift_trick(
    tmp_path: Path, batch_size: int
) -> None:
    shifts = 1
    repo = write_local_repo(tmp_path / "repo", "htdemucs", size="tiny")
    song = write_mix(tmp_path / "song.wav", seconds=4.0, channels=1)
    theirs = run_demucs_cli(repo, "htdemucs", song, tmp_path / "cli", shifts=shifts,
                            overlap=0.25, seed=11)
    separator = Separator("htdemucs", repo=repo, shifts=shifts, rng=random.Random(11),
                          batch_size=batch_size)
    assert_stems_match(separator.separate(song, tmp_path / "ours"), theirs,
                       stem_names("htdemucs"))


class _StandInModel(torch.nn.Module):
    """A cheap position-sensitive 'separator': a fixed random 1-D convolution per source, with
    a demucs-like `segment` and `valid_length` (rounded up to a multiple of 64, so the last
    chunk of a track takes a shorter input than the others). Each item of a batch is separated
    on its own, as demucs' networks do. `fits`: the largest batch that does not run out of
    memory (larger raises torch's `OutOfMemoryError`, as a GPU would)."""

    def __init__(self, sources: int, segment: Fraction, seed: int, fits: int = 1 << 30) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.sources = ["s"] * sources
        self.samplerate, self.audio_channels, self.segment = 44100, 2, segment
        self.kernel = torch.nn.Parameter(torch.randn(2 * sources, 2, 33, generator=generator))
        self.fits = fits
        self.batches: list[int] = []

    def valid_length(self, length: int) -> int:
        return -(-length // 64) * 64

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        if mix.shape[0] > self.fits:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {mix.shape[0]} segments")
        self.batches.append(mix.shape[0])
        out = torch.nn.functional.conv1d(mix, self.kernel, padding=16)
        return torch.tanh(out).view(mix.shape[0], len(self.sources), 2, -1)


class _Windows:
    """The mix as `stream_songs` reads it: zero-padded windows of an in-memory tensor."""

    def __init__(self, mix: torch.Tensor) -> None:
        self.mix = mix
        self.frames = mix.shape[-1]

    def window(self, start: int, length: int) -> torch.Tensor:
        padded = torch.zeros(2, length)
        first, last = max(start, 0), min(start + length, self.frames)
        padded[:, first - start : last - start] = self.mix[:, first:last]
        return padded


def _stream(models: list[_StandInModel], weights: list[list[float]], mix: torch.Tensor, *,
            shifts: int, overlap: float, limit: BatchLimit, seed: int = 5,
            workers: SegmentWorkers | None = None,
            ) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    loaded = LoadedModel("stand-in", tuple(models), tuple(map(tuple, weights)), ("a", "b", "c"),
                         44100, 2, torch.device("cpu"))
    calls: list[tuple[int, int]] = []
    song = SongStream(_Windows(mix), lambda block: block,
                      lambda done, total: calls.append((done, total)))  # fmt: skip
    blocks = [block for _, block in stream_songs(
        loaded, [song], shifts=shifts, overlap=overlap, rng=random.Random(seed),
        precision="fp32", limit=limit, workers=workers,
    )]  # fmt: skip
    assert song.error is None
    return blocks, calls


def _apply_model(models: list[_StandInModel], weights: list[list[float]], mix: torch.Tensor, *,
                 shifts: int, overlap: float, seed: int = 5) -> torch.Tensor:
    random.seed(seed)
    bag = BagOfModels(models, weights)  # type: ignore[arg-type]  # duck-typed like demucs' own
    result: torch.Tensor = apply_model(bag, mix[None], shifts=shifts, overlap=overlap)[0]
    for model in models:
        model.batches.clear()  # count only our calls
    return result


@pytest.mark.parametrize(
    ("members", "shifts", "overlap", "batch_size", "extra_frames", "threads"),
    [(1, 0, 0.25, 1, 123, 0), (1, 0, 0.25, 2, 0, 2), (1, 1, 0.25, 5, 4567, 0),
     (1, 1, 0.25, 5, 4567, 3), (2, 2, 0.4, 1, 123, 0), (2, 2, 0.4, 3, 1, 3),
     (1, 0, 0.5, 64, 99, 0)],
)  # fmt: skip
def test_batched_streaming_overlap_add_equals_apply_model_on_a_long_track(
    members: int, shifts: int, overlap: float, batch_size: int, extra_frames: int, threads: int
) -> None:
    """`threads`: 0 stacks a batch into one call (GPU style), else one call per item on that
    many worker threads (CPU style)."""
    models = [_StandInModel(3, Fraction(1, 2), seed) for seed in range(members)]
    weights = [[1.0, 0.5, 0.25], [0.0, 0.5, 1.0]][:members]
    mix = torch.randn(2, 44100 * 7 + extra_frames, generator=torch.Generator().manual_seed(0))
    expected = _apply_model(models, weights, mix, shifts=shifts, overlap=overlap)
    workers = SegmentWorkers(threads) if threads else None
    blocks, calls = _stream(models, weights, mix, shifts=shifts, overlap=overlap,
                            limit=BatchLimit(batch_size), workers=workers)
    ours = torch.cat(blocks, dim=-1)
    assert ours.shape == expected.shape
    assert float((ours - expected).abs().max()) <= 1e-5
    segment_length = 44100 // 2
    # Never the whole track at once: a window of about one batch of strides plus a segment.
    assert max(block.shape[-1] for block in blocks) <= (batch_size + 1) * segment_length
    assert [done for done, _ in calls] == list(range(1, calls[-1][1] + 1))
    batches = [size for model in models for size in model.batches]
    assert sum(batches) == calls[-1][1]
    if threads:  # every call takes one item
        assert max(batches) == 1
    else:  # as large as allowed (the shorter last chunks of a pass take another input length)
        assert max(batches) <= batch_size and (batch_size == 1 or max(batches) > 1)


def test_a_batch_that_runs_out_of_memory_is_split_and_the_smaller_size_sticks() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=0, fits=3)]
    mix = torch.randn(2, 44100 * 6 + 77, generator=torch.Generator().manual_seed(1))
    expected = _apply_model(models, [[1.0, 1.0, 1.0]], mix, shifts=1, overlap=0.25)
    limit = BatchLimit(16)
    blocks, _ = _stream(models, [[1.0, 1.0, 1.0]], mix, shifts=1, overlap=0.25, limit=limit)
    assert float((torch.cat(blocks, dim=-1) - expected).abs().max()) <= 1e-5
    assert limit.size == 3  # 15 full-length segments failed, then 7; 3 fit
    assert max(models[0].batches) == 3


def test_a_single_segment_that_does_not_fit_fails_with_the_device_error() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=0, fits=0)]
    mix = torch.randn(2, 44100 * 2)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory"):
        _stream(models, [[1.0, 1.0, 1.0]], mix, shifts=0, overlap=0.25, limit=BatchLimit(4))


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory() -> None:
    class Broken(_StandInModel):
        def forward(self, mix: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("shape mismatch")

    limit = BatchLimit(4)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        _stream([Broken(3, Fraction(1, 2), seed=0)], [[1.0, 1.0, 1.0]], torch.randn(2, 88200),
                shifts=0, overlap=0.25, limit=limit)
    assert limit.size == 4
