"""Several songs in one batch stream (the GPU worker's cross-song batching, run here on the
CPU): each song's stems equal separating it alone, model calls really mix songs, a song that is
aborted (or fails to decode) is dropped without losing the others, each keeps its own progress,
and running out of memory shrinks the batch for all of them."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from soundforge.errors import AudioError, JobAbortedError
from soundforge.separation import Separator, loading, write_local_repo
from soundforge.separation.cpu_workers import SegmentWorkers
from soundforge.separation.loading import LoadedModel
from soundforge.separation.separator import SeparationRequest
from soundforge.separation.streaming import BatchLimit, SongStream, stream_songs
from tests.test_separation_equivalence import _StandInModel, _Windows
from tests.test_separation_support import read_stem, write_mix

SECONDS = (3.3, 1.7, 2.45)  # different lengths: the songs' last chunks differ


def _mixes() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(2, int(44100 * seconds), generator=generator) for seconds in SECONDS]


def _loaded(models: Sequence[torch.nn.Module]) -> LoadedModel:
    return LoadedModel("stand-in", tuple(models), ((1.0, 0.5, 0.25),) * len(models),
                       ("a", "b", "c"), 44100, 2, torch.device("cpu"))  # fmt: skip


def _alone(loaded: LoadedModel, mixes: list[torch.Tensor], shifts: int, seed: int,
           batch_size: int = 1) -> list[torch.Tensor]:
    """Each song through its own stream, one after the other, sharing one rng."""
    rng = random.Random(seed)
    return [
        torch.cat([block for _, block in stream_songs(
            loaded, [SongStream(_Windows(mix), lambda block: block, lambda done, total: None)],
            shifts=shifts, overlap=0.25, rng=rng, precision="fp32",
            limit=BatchLimit(batch_size),
        )], dim=-1)
        for mix in mixes
    ]  # fmt: skip


def _together(loaded: LoadedModel, songs: list[SongStream], shifts: int, seed: int,
              limit: BatchLimit, workers: SegmentWorkers | None = None
              ) -> list[torch.Tensor | None]:
    blocks: list[list[torch.Tensor]] = [[] for _ in songs]
    for index, block in stream_songs(loaded, songs, shifts=shifts, overlap=0.25,
                                     rng=random.Random(seed), precision="fp32", limit=limit,
                                     workers=workers):  # fmt: skip
        blocks[index].append(block)
    return [torch.cat(found, dim=-1) if found else None for found in blocks]


def _recorder(calls: list[tuple[int, int]]) -> Callable[[int, int], None]:
    def after_segment(done: int, total: int) -> None:
        calls.append((done, total))

    return after_segment


def _songs(mixes: list[torch.Tensor], progress: list[list[tuple[int, int]]]) -> list[SongStream]:
    return [SongStream(_Windows(mix), lambda block: block, _recorder(calls))
            for mix, calls in zip(mixes, progress, strict=True)]  # fmt: skip


@pytest.mark.parametrize(("shifts", "batch_size", "threads"), [(0, 16, 0), (2, 5, 0), (1, 4, 2)])
def test_songs_batched_together_equal_each_song_alone_with_their_own_progress(
    shifts: int, batch_size: int, threads: int
) -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=1)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, shifts, seed=3, batch_size=batch_size)
    calls_alone = len(models[0].batches)
    models[0].batches.clear()
    progress: list[list[tuple[int, int]]] = [[] for _ in mixes]
    workers = SegmentWorkers(threads) if threads else None
    ours = _together(loaded, _songs(mixes, progress), shifts, seed=3,
                     limit=BatchLimit(batch_size), workers=workers)
    for song, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        assert mine is not None and mine.shape == theirs.shape, song
        assert float((mine - theirs).abs().max()) <= 1e-5, song
    for calls in progress:  # each song counts its own segments, 1..total
        assert [done for done, _ in calls] == list(range(1, calls[-1][1] + 1))
    if not threads:  # model calls held segments of several songs: fewer, fuller calls
        assert len(models[0].batches) < calls_alone
    assert sum(models[0].batches) == sum(calls[-1][1] for calls in progress)


def test_an_aborted_song_is_dropped_and_the_others_finish_unchanged() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=2)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, 0, seed=0)
    models[0].batches.clear()
    progress: list[list[tuple[int, int]]] = [[] for _ in mixes]
    songs = _songs(mixes, progress)

    def abort_after_two(done: int, total: int) -> None:
        progress[0].append((done, total))
        if done == 2:
            raise JobAbortedError("cancelled")

    songs[0].after_segment = abort_after_two
    ours = _together(loaded, songs, 0, seed=0, limit=BatchLimit(2))
    assert isinstance(songs[0].error, JobAbortedError)
    assert [done for done, _ in progress[0]] == [1, 2]
    for index in (1, 2):
        mine = ours[index]
        assert songs[index].error is None and mine is not None
        assert float((mine - expected[index]).abs().max()) <= 1e-5
    # The dropped song's remaining segments were never computed.
    assert sum(models[0].batches) < sum(song.total for song in songs)


def test_out_of_memory_in_a_multi_song_batch_shrinks_it_for_every_song() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=4)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, 1, seed=9)
    models[0].fits = 3
    limit = BatchLimit(16)
    progress: list[list[tuple[int, int]]] = [[] for _ in mixes]
    ours = _together(loaded, _songs(mixes, progress), 1, seed=9, limit=limit)
    assert limit.size == 2  # 16, 8 and 4 did not fit; halving again gave 2
    assert max(models[0].batches) == 2
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine is not None and float((mine - theirs).abs().max()) <= 1e-5


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_local_repo(tmp_path_factory.mktemp("repo"), "htdemucs", size="tiny", seed=5)


def test_real_network_stacked_across_songs_equals_each_song_alone(repo: Path) -> None:
    """The GPU-style path (one stacked call per batch) on tiny htdemucs: items of different
    songs in one call do not change each other's estimate beyond float rounding."""
    loaded = loading.load("htdemucs", repo, torch.device("cpu"))
    generator = torch.Generator().manual_seed(1)
    mixes = [0.3 * torch.randn(2, int(44100 * seconds), generator=generator)
             for seconds in (4.1, 2.6)]  # fmt: skip
    expected = _alone(loaded, mixes, 0, seed=0)
    progress: list[list[tuple[int, int]]] = [[] for _ in mixes]
    ours = _together(loaded, _songs(mixes, progress), 0, seed=0, limit=BatchLimit(8))
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine is not None and mine.shape == theirs.shape
        assert float(theirs.abs().max()) > 1e-3
        assert float((mine - theirs).abs().max()) <= 1e-4


def test_separate_together_keeps_each_jobs_progress_abort_and_errors(
    repo: Path, tmp_path: Path
) -> None:
    songs = [write_mix(tmp_path / f"song{index}.wav", seconds=seconds, seed=index)
             for index, seconds in enumerate((5.0, 3.0, 4.0))]  # fmt: skip
    bogus = tmp_path / "bogus.wav"
    bogus.write_bytes(b"not audio at all")
    separator = Separator("htdemucs", repo=repo, shifts=0, batch_size=2, stem_format="wav")
    alone = [separator.separate(song, tmp_path / f"alone{index}")
             for index, song in enumerate(songs)]  # fmt: skip
    reported: list[list[float]] = [[], [], [], []]
    outcomes = separator.separate_together([
        SeparationRequest(songs[0], tmp_path / "a", reported[0].append),
        SeparationRequest(songs[1], tmp_path / "b", reported[1].append,
                          should_abort=lambda: len(reported[1]) >= 3),
        SeparationRequest(bogus, tmp_path / "c", reported[2].append),
        SeparationRequest(songs[2], tmp_path / "d", reported[3].append),
    ])  # fmt: skip
    assert isinstance(outcomes[1], JobAbortedError)
    assert isinstance(outcomes[2], AudioError)
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []
    for index, song in ((0, 0), (3, 2)):
        stems = outcomes[index]
        assert isinstance(stems, dict)
        assert reported[index][0] == 0.0 and reported[index][-1] == 100.0
        assert reported[index] == sorted(reported[index])
        assert sorted(path.name for path in stems[next(iter(stems))].parent.iterdir()) == \
            sorted(f"{stem}.wav" for stem in separator.stem_names)
        for stem, path in stems.items():
            ours, theirs = read_stem(path), read_stem(alone[song][stem])
            assert float(np.abs(ours - theirs).max()) <= 1e-4
    assert reported[1][-1] < 100.0
