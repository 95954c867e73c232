"""Several songs in one batch stream (the GPU worker's cross-song batching, run here on the
CPU): each song's stems equal separating it alone, model calls really mix songs, a song that is
aborted (or fails to decode) is dropped without losing the others, each keeps its own progress,
and running out of memory shrinks the batch for all of them. Songs that join a running stream
(continuous batching) start at its next batch, leave it when they are done, and still equal
each song alone."""

from __future__ import annotations

import random
import threading
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
from soundforge.separation.streaming import (
    BatchLimit,
    SongFeed,
    SongStream,
    stream_feed,
    stream_songs,
)
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


def _fed(loaded: LoadedModel, feed: SongFeed, songs: list[SongStream], shifts: int, seed: int,
         limit: BatchLimit) -> list[torch.Tensor | None]:  # fmt: skip
    blocks: dict[int, list[torch.Tensor]] = {id(song): [] for song in songs}
    for song, block in stream_feed(loaded, feed, shifts=shifts, overlap=0.25,
                                   rng=random.Random(seed), precision="fp32", limit=limit):
        blocks[id(song)].append(block)
    return [torch.cat(blocks[id(song)], dim=-1) if blocks[id(song)] else None for song in songs]


@pytest.mark.parametrize(("shifts", "batch_size"), [(0, 1), (1, 3)])
def test_songs_joining_a_running_stream_start_at_once_and_equal_each_song_alone(
    shifts: int, batch_size: int
) -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=6)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, shifts, seed=4)
    events: list[tuple[int, int, int]] = []  # (song, done, total) in the order segments end
    left_before_first: list[bool] = []
    feed = SongFeed(3)
    songs = [SongStream(_Windows(mix), lambda block: block, lambda done, total: None)
             for mix in mixes]  # fmt: skip

    def recorder(index: int) -> Callable[[int, int], None]:
        def after_segment(done: int, total: int) -> None:
            events.append((index, done, total))
            if index == 0 and done == 2:  # the later songs arrive while song 0 runs
                feed.offer(songs[1])
                feed.offer(songs[2])
            if index == 0:
                left_before_first.append(songs[1].left.is_set())

        return after_segment

    for index, song in enumerate(songs):
        song.after_segment = recorder(index)
    feed.offer(songs[0])
    ours = _fed(loaded, feed, songs, shifts, seed=4, limit=BatchLimit(batch_size))
    for index, (mine, theirs) in enumerate(zip(ours, expected, strict=True)):
        assert mine is not None and mine.shape == theirs.shape, index
        assert float((mine - theirs).abs().max()) <= 1e-5, index
        assert songs[index].left.is_set() and songs[index].error is None
    first_of = {song: events.index(next(e for e in events if e[0] == song)) for song in (1, 2)}
    last_of_first = max(i for i, event in enumerate(events) if event[0] == 0)
    # The joined songs ran beside song 0, not after it: within the batches already planned.
    assert all(first < last_of_first for first in first_of.values())
    assert first_of[1] <= events.index((0, 2, songs[0].total)) + 2 * batch_size + 1
    # Song 1 (the shortest) left the stream while song 0 was still running.
    assert any(left_before_first)
    for index, song in enumerate(songs):
        assert [done for i, done, _ in events if i == index] == list(range(1, song.total + 1))


def test_a_stream_holds_at_most_its_capacity_of_songs_and_admits_the_next_as_one_ends() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=8)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, 0, seed=0)
    order: list[int] = []

    def recorder(index: int) -> Callable[[int, int], None]:
        def after_segment(done: int, total: int) -> None:
            order.append(index)

        return after_segment

    songs = [SongStream(_Windows(mix), lambda block: block, recorder(index))
             for index, mix in enumerate(mixes)]  # fmt: skip
    feed = SongFeed(2)
    for song in songs:
        feed.offer(song)
    ours = _fed(loaded, feed, songs, 0, seed=0, limit=BatchLimit(2))
    for mine, theirs in zip(ours, expected, strict=True):
        assert mine is not None and float((mine - theirs).abs().max()) <= 1e-5
    # Song 2 was admitted only once song 1 (the shorter of the first two) had all its segments
    # planned: batches run in planned order, so it starts after song 1's last segment.
    last_of_1 = max(i for i, index in enumerate(order) if index == 1)
    assert order.index(2) > last_of_1
    assert 0 in order[order.index(2):]  # song 0 was still running when song 2 joined


def test_a_joined_song_that_is_aborted_leaves_and_the_others_finish_unchanged() -> None:
    models = [_StandInModel(3, Fraction(1, 2), seed=9)]
    loaded, mixes = _loaded(models), _mixes()
    expected = _alone(loaded, mixes, 0, seed=0)
    feed = SongFeed(3)
    progress: list[list[tuple[int, int]]] = [[] for _ in mixes]
    songs = _songs(mixes, progress)
    withdrawn = SongStream(_Windows(mixes[1]), lambda block: block, lambda done, total: None)

    def first(done: int, total: int) -> None:
        progress[0].append((done, total))
        if done == 1:
            feed.offer(songs[2])
            feed.offer(withdrawn)
            assert feed.withdraw(withdrawn)  # taken back before the stream admitted it

    def joined_then_aborted(done: int, total: int) -> None:
        progress[2].append((done, total))
        if done == 2:
            raise JobAbortedError("cancelled")

    songs[0].after_segment = first
    songs[2].after_segment = joined_then_aborted
    feed.offer(songs[0])
    feed.offer(songs[1])
    ours = _fed(loaded, feed, [*songs, withdrawn], 0, seed=0, limit=BatchLimit(1))
    assert isinstance(songs[2].error, JobAbortedError) and songs[2].left.is_set()
    assert [done for done, _ in progress[2]] == [1, 2]
    assert ours[2] is None or ours[2].shape[-1] < expected[2].shape[-1]
    assert ours[3] is None and not withdrawn.left.is_set() and not withdrawn.passes
    for index in (0, 1):
        mine = ours[index]
        assert songs[index].error is None and mine is not None
        assert float((mine - expected[index]).abs().max()) <= 1e-5
    assert not feed.withdraw(songs[0]) and feed.waiting == 0


def test_separate_joined_lets_a_later_call_join_a_running_one(repo: Path, tmp_path: Path) -> None:
    """Real threads, the tiny network: a call made while another separates starts before that
    one ends, a joined call that is cancelled ends alone, and the stems equal each file
    separated alone."""
    songs = [write_mix(tmp_path / f"song{index}.wav", seconds=seconds, seed=index)
             for index, seconds in enumerate((14.0, 4.0, 9.0))]  # fmt: skip
    separator = Separator("htdemucs", repo=repo, shifts=0, batch_size=2, songs_together=3,
                          stem_format="wav")  # fmt: skip
    alone = [separator.separate(song, tmp_path / f"alone{index}")
             for index, song in enumerate(songs[:2])]  # fmt: skip
    reported: list[list[float]] = [[], [], []]
    seen_first_at: list[float] = []  # song 0's progress when song 1 first progressed
    outcomes: list[object] = [None, None, None]
    cancel = threading.Event()
    threads: list[threading.Thread] = []

    def call(index: int) -> None:
        def progress(percent: float) -> None:
            reported[index].append(percent)
            if index == 0 and percent > 0 and len(threads) == 1:
                start(1)
                start(2)
            if index == 1 and percent > 0 and not seen_first_at:
                seen_first_at.append(reported[0][-1])
            if index == 2 and percent > 5:
                cancel.set()

        try:
            outcomes[index] = separator.separate_joined(SeparationRequest(
                songs[index], tmp_path / f"joined{index}", progress,
                should_abort=cancel.is_set if index == 2 else None))  # fmt: skip
        except Exception as error:
            outcomes[index] = error

    def start(index: int) -> None:
        thread = threading.Thread(target=call, args=(index,))
        threads.append(thread)
        thread.start()

    start(0)
    while any(thread.is_alive() for thread in list(threads)) or len(threads) < 3:
        for thread in list(threads):
            thread.join(timeout=0.1)
    assert isinstance(outcomes[2], JobAbortedError)
    assert list((tmp_path / "joined2").iterdir()) == []
    assert seen_first_at and 0 < seen_first_at[0] < 99.0  # song 1 ran while song 0 was
    for index in (0, 1):
        stems = outcomes[index]
        assert isinstance(stems, dict), stems
        assert reported[index][0] == 0.0 and reported[index][-1] == 100.0
        for stem, path in stems.items():
            ours, theirs = read_stem(path), read_stem(alone[index][stem])
            assert ours.shape == theirs.shape
            assert float(np.abs(ours - theirs).max()) <= 1e-4
