"""Apply a (bag of) demucs model(s) to a mix in batches of segments, handing each finished span of
the stems to a sink as soon as no later segment can change it.

Why not `demucs.apply.apply_model`: it holds the whole normalised mix and a whole
`(sources, channels, frames)` float32 output per shift and per bag member, so memory grows with
the track (10 min of four stems is ~850 MB more), it feeds the network one segment at a time (a
GPU idles), it runs under `no_grad` without autocast, and it reports progress only through tqdm or
a per-chunk dict. This module reproduces its arithmetic so the stems match the demucs CLI: the
same chunk grid (`segment`, `stride = int((1 - overlap) * segment_length)`), each chunk padded to
the model's valid length with the neighbouring audio (zeros only outside the track), the output
centre-trimmed and overlap-added with the same triangular weights, one pass per random shift (the
offset drawn with `randint(0, 0.5 s)` in the same order: member by member, shift by shift)
averaged, and bag members mixed per source with the bag's weights.

Batching: the next chunks (in track order, across the shift passes of one bag member, and across
the songs of a multi-song stream) of equal input length go through the network together: stacked
into one call on a GPU, or on the CPU one call per chunk on worker threads side by side (see
`soundforge.separation.cpu_workers`; profiled on full-size htdemucs: one call with two torch
threads took 1.8x the CPU time of two single-threaded calls for the same work). Every item is
independent (the network normalises and attends per item), so a batch gives each chunk's estimate
as a call of its own would, up to float rounding, whichever songs share it. Memory stays bounded:
a batch is planned a bounded distance ahead (one batch being read by `Prefetcher` while one runs)
and each (song, member, shift) pass keeps an overlap-add window of about one batch of strides
plus one segment, on the model's device.

Several songs (`SongStream`) share one stream: their chunks are planned earliest-first across the
songs, each song's finished spans are yielded with it, and each has its own progress callback; a
song whose callback raises (an abort) is dropped, its error kept on it, and the others go on.
Songs join a running stream (continuous batching, `SongFeed`): a song offered while the stream
runs is admitted when the next batch is planned (at most `PREFETCH_BATCHES` + 1 batches before it
runs) and leaves it when its last span is out, without waiting for the other songs. Each song's
passes, shift offsets and overlap-add windows are its own, so its stems are those it would get
alone (the offsets are drawn when it joins, in the order songs join).

A batch that runs the device out of memory is split: `BatchLimit` halves itself and the batch
runs in pieces of the new size (halving again if needed); only a single segment that does not fit
fails the job.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import random
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import torch
from torch.nn import functional

from soundforge.separation.cpu_workers import SegmentWorkers
from soundforge.separation.loading import LoadedModel

logger = logging.getLogger(__name__)

StemBlock = torch.Tensor
"""`(sources, channels, frames)` float32 on the CPU, denormalised: the next span of every stem."""
Precision = str  # "fp32", "bf16", "fp16" or "tf32" (see `precision_context`)
PREFETCH_BATCHES = 1  # batches read ahead of the one running


class WindowSource(Protocol):
    """Normalised mix windows (see `soundforge.separation.mix.MixReader`)."""

    @property
    def frames(self) -> int: ...

    def window(self, start: int, length: int) -> torch.Tensor: ...


@dataclass(eq=False)
class SongStream:
    """One song of a stream: its normalised mix, how its stems are denormalised, and
    `after_segment(done, total)`, called after each of its segments (progress, abort). When that
    raises, the song is dropped from the stream and the exception kept in `error`."""

    mix: WindowSource
    denormalize: Callable[[torch.Tensor], torch.Tensor]
    after_segment: Callable[[int, int], None]
    error: BaseException | None = None
    passes: list[_Pass] = field(default_factory=list)
    done: int = 0
    emitted: int = 0
    joined_at: int = 0
    """Where the stream's planning stood when the song joined it (frames): its segments are
    planned as if its track started there, so a late song shares the batches with the others
    instead of taking them all until it catches up."""
    left: threading.Event = field(default_factory=threading.Event)
    """Set once the song is out of its stream: every span emitted, dropped, or the stream ended."""

    @property
    def total(self) -> int:
        return sum(p.chunk_count for p in self.passes)

    def emit(self) -> torch.Tensor | None:
        """The span every pass has finished since the last call, summed and denormalised on the
        CPU; None when there is none yet."""
        boundary = min(p.complete_until for p in self.passes)
        if boundary <= self.emitted:
            return None
        block = sum((p.take(boundary) for p in self.passes[1:]), self.passes[0].take(boundary))
        self.emitted = boundary
        return self.denormalize(block.cpu())


@dataclass(eq=False)
class _Pass:
    """One member of the bag at one shift: its chunk grid and its overlap-add window."""

    song: SongStream
    model: torch.nn.Module
    source_scale: torch.Tensor  # (sources, 1, 1): its share of each stem in the final mix
    origin: int  # track frame of the grid's first chunk: shift offset - max shift (<= 0)
    end: int  # track length; the grid covers [origin, end)
    segment_length: int
    stride: int
    weight: torch.Tensor  # (segment_length,) triangular transition weight
    scheduled: int = 0  # chunks handed to a batch
    added: int = 0  # chunks whose estimate is in the window
    base: int = 0  # track frame of acc[..., 0]
    acc: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    den: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def chunk_count(self) -> int:
        return -(-(self.end - self.origin) // self.stride)

    def chunk_start(self, index: int) -> int:
        """Track frame where chunk `index` starts; `end` past the last chunk."""
        if index >= self.chunk_count:
            return self.end
        return self.origin + index * self.stride

    @property
    def complete_until(self) -> int:
        """Every frame before this has all its contributions from this pass."""
        return self.chunk_start(self.added)

    def add(self, start: int, values: torch.Tensor) -> None:
        """Overlap-add a chunk's `(sources, channels, length)` estimate starting at `start`."""
        weight = self.weight[: values.shape[-1]]
        skip = max(0, self.base - start)  # frames before the track (the shift's lead-in)
        values, weight, start = values[..., skip:], weight[skip:], start + skip
        end = start + values.shape[-1]
        missing = end - self.base - self.acc.shape[-1]
        if missing > 0:
            self.acc = functional.pad(self.acc, (0, missing))
            self.den = functional.pad(self.den, (0, missing))
        offset = start - self.base
        self.acc[..., offset : offset + values.shape[-1]] += weight * values
        self.den[offset : offset + values.shape[-1]] += weight
        self.added += 1

    def take(self, until: int) -> torch.Tensor:
        """This pass's finished, normalised estimate for [base, until), scaled by its share; the
        window then starts at `until`."""
        count = until - self.base
        span = self.acc[..., :count] / self.den[:count] * self.source_scale
        self.acc, self.den = self.acc[..., count:], self.den[count:]
        self.base = until
        return span


@dataclass(frozen=True)
class _Chunk:
    """One model call's worth of input: `valid` frames from `start - lead`; its estimate is the
    `length` frames from `lead` of the output, for `owner`'s window at track frame `start`."""

    owner: _Pass
    start: int
    length: int
    valid: int
    lead: int


@dataclass
class _Batch:
    chunks: list[_Chunk]
    inputs: torch.Tensor  # (items, channels, valid), on the CPU (pinned for a CUDA model)


class BatchLimit:
    """How many segments go through the network at once; halves itself when the device runs out
    of memory (see `run_batch`). Shared by the jobs of a `Separator`, so a reduced size sticks."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"batch size must be 1 or more, not {size}")
        self.size = size
        self._lock = threading.Lock()

    def shrink(self, failed: int) -> int:
        """A batch of `failed` items did not fit: the new size (at most half of it, at least 1)."""
        with self._lock:
            self.size = max(1, min(self.size, failed // 2))
            return self.size


def transition_weight(segment_length: int) -> torch.Tensor:
    """demucs' overlap-add weight: a triangle peaking mid-segment, scaled to a maximum of 1."""
    weight = torch.cat([
        torch.arange(1, segment_length // 2 + 1),
        torch.arange(segment_length - segment_length // 2, 0, -1),
    ])
    return weight / weight.max()


def valid_length(model: torch.nn.Module, length: int) -> int:
    """The input length the network takes for `length` frames of output (demucs' rule)."""
    method = getattr(model, "valid_length", None)
    return int(method(length)) if callable(method) else length


def _passes(
    loaded: LoadedModel, song: SongStream, shifts: int, overlap: float, rng: random.Random
) -> list[_Pass]:
    frames = song.mix.frames
    sources = len(loaded.sources)
    device = loaded.device
    totals = [sum(row[source] for row in loaded.weights) for source in range(sources)]
    passes = []
    for model, member_weights in zip(loaded.members, loaded.weights, strict=True):
        segment: Fraction | float = model.__dict__["segment"]  # set by the bag's yaml, if any
        segment_length = int(loaded.sample_rate * segment)
        stride = int((1 - overlap) * segment_length)
        if stride < 1:
            raise ValueError(f"overlap {overlap} leaves no stride for {segment_length} frames")
        weight = transition_weight(segment_length).to(device)
        share = torch.tensor(
            [member_weights[k] / (max(shifts, 1) * totals[k]) for k in range(sources)],
            dtype=torch.float32, device=device,
        ).view(sources, 1, 1)  # fmt: skip
        max_shift = int(0.5 * loaded.sample_rate)
        origins = [rng.randint(0, max_shift) - max_shift for _ in range(shifts)] or [0]
        for origin in origins:
            passes.append(_Pass(
                song=song, model=model, source_scale=share, origin=origin, end=frames,
                segment_length=segment_length, stride=stride, weight=weight,
                acc=torch.zeros(sources, loaded.audio_channels, 0, device=device),
                den=torch.zeros(0, device=device),
            ))  # fmt: skip
    return passes


def _next_chunk(owner: _Pass) -> _Chunk:
    start = owner.chunk_start(owner.scheduled)
    length = min(owner.end - start, owner.segment_length)
    valid = valid_length(owner.model, length)
    return _Chunk(owner, start, length, valid, (valid - length) // 2)


class SongFeed:
    """The songs of a stream, which may join it while it runs. `offer` (from any thread) queues
    a song; the stream admits queued songs, in the order offered, each time it plans a batch,
    while fewer than `capacity` of its songs have segments left to plan (a song whose last
    segments are planned makes room for the next). `withdraw` takes back a song not yet
    admitted. A stream that has nothing left to run ends; songs offered after that wait for the
    next stream over the same feed (`waiting`)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a stream holds 1 song or more, not {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._queued: collections.deque[SongStream] = collections.deque()
        self._admitted: list[SongStream] = []
        self._open = False

    def offer(self, song: SongStream) -> None:
        with self._lock:
            self._queued.append(song)

    def withdraw(self, song: SongStream) -> bool:
        """Take back `song` when no stream has admitted it yet (True); False once admitted."""
        with self._lock:
            if song in self._queued:
                self._queued.remove(song)
                return True
            return False

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._queued)

    def drop(self, song: SongStream, error: BaseException) -> None:
        """End `song` with `error` (e.g. its blocks could not be written); the others go on."""
        if song.error is None:
            song.error = error
        self._leave(song)

    def _start(self) -> None:
        with self._lock:
            self._open = True

    def _admit(self, planning: Callable[[SongStream], bool]) -> list[SongStream]:
        """Queued songs the stream takes now; `planning(song)`: whether an admitted song still
        has segments to plan."""
        with self._lock:
            if not self._open:
                return []
            room = self.capacity - sum(1 for song in self._admitted if planning(song))
            taken = [self._queued.popleft() for _ in range(min(room, len(self._queued)))]
            self._admitted.extend(taken)
            return taken

    def _leave(self, song: SongStream) -> None:
        with self._lock:
            if song in self._admitted:
                self._admitted.remove(song)
        song.left.set()

    def _close_if_idle(self) -> bool:
        """Admit no more songs into this stream when none is in it or queued (True)."""
        with self._lock:
            if self._admitted or self._queued:
                return False
            self._open = False
            return True

    def _end(self, error: BaseException | None) -> None:
        """The stream is over: every song still in it leaves (with `error` when it has none)."""
        with self._lock:
            self._open = False
            admitted, self._admitted = self._admitted, []
        for song in admitted:
            if song.error is None:
                song.error = error or RuntimeError("the separation stream stopped early")
            song.left.set()


def _position(owner: _Pass) -> int:
    """Where `owner`'s next chunk stands in the stream's planning order (see `joined_at`)."""
    return owner.chunk_start(owner.scheduled) + owner.song.joined_at


def plan_batches(
    passes: list[_Pass], limit: BatchLimit, admit: Callable[[int], list[_Pass]] | None = None
) -> Iterator[list[_Chunk]]:
    """The chunks of every pass (of every song not dropped) in batches: each batch starts with
    the earliest unscheduled chunk (so the emitted tracks advance evenly) and adds the next
    earliest chunks of the same network with the same input length, up to the limit's current
    size. Within a pass, chunks are always planned (and so added) in track order.
    `admit(position)`, called before each batch with the planning position reached, adds the
    passes of songs that join (see `SongFeed`)."""
    pending = list(passes)
    reached = 0
    while True:
        if admit is not None:
            pending.extend(admit(reached))
        pending = [p for p in pending if p.scheduled < p.chunk_count and p.song.error is None]
        if not pending:
            return
        first = _next_chunk(min(pending, key=_position))
        reached = max(reached, _position(first.owner))
        first.owner.scheduled += 1
        batch = [first]
        while len(batch) < limit.size:
            fitting = [
                chunk for chunk in (_next_chunk(p) for p in pending
                                    if p.model is first.owner.model and p.scheduled < p.chunk_count)
                if chunk.valid == first.valid
            ]  # fmt: skip
            if not fitting:
                break
            chunk = min(fitting, key=lambda c: c.start + c.owner.song.joined_at)
            chunk.owner.scheduled += 1
            batch.append(chunk)
        yield batch


def precision_context(
    device: torch.device, precision: Precision
) -> contextlib.AbstractContextManager[None]:
    """Autocast for bf16 and fp16; fp32 runs as it is."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        return torch.autocast(device_type=device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def is_out_of_memory(error: BaseException) -> bool:
    """A device (or host allocator) out-of-memory error, as torch raises it."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error)
    return isinstance(error, RuntimeError) and (
        "out of memory" in message or "can't allocate memory" in message
    )


def run_batch(
    model: torch.nn.Module, inputs: torch.Tensor, limit: BatchLimit,
    call: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """`call(model, inputs)` in pieces of at most `limit.size` items; a piece that runs out of
    memory shrinks the limit and is split again. One item that does not fit re-raises."""
    items = inputs.shape[0]
    if items > limit.size:
        parts = [inputs[first : first + limit.size] for first in range(0, items, limit.size)]
        return torch.cat([run_batch(model, part, limit, call) for part in parts])
    try:
        return call(model, inputs)
    except RuntimeError as error:
        if items == 1 or not is_out_of_memory(error):
            raise
    if inputs.device.type == "cuda":
        torch.cuda.empty_cache()
    size = limit.shrink(items)
    logger.warning("separation batch of %d segments ran out of memory; retrying in batches of %d",
                   items, size)
    return run_batch(model, inputs, limit, call)


class Prefetcher:
    """Plans and reads batches' input windows (each chunk from its song's mix) on a thread,
    `PREFETCH_BATCHES` ahead of the consumer (decode and device compute overlap; memory stays
    bounded). A batch is planned only once there is room for it, so a song that joins the
    stream (`SongFeed`) is in the batch after the one read ahead. Iterate it; `close()` stops
    the thread (also after an error or an abort)."""

    def __init__(self, batches: Iterator[list[_Chunk]], pin: bool) -> None:
        self._batches = batches
        self._pin = pin
        self._queue: queue.Queue[_Batch | BaseException | None] = queue.Queue()
        self._room = threading.Semaphore(PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="separation-reader", daemon=True)
        self._thread.start()

    def _read(self, chunks: list[_Chunk]) -> _Batch:
        inputs = torch.stack([c.owner.song.mix.window(c.start - c.lead, c.valid) for c in chunks])
        return _Batch(chunks, inputs.pin_memory() if self._pin else inputs)

    def _wait_for_room(self) -> bool:
        while not self._stop.is_set():
            if self._room.acquire(timeout=0.1):
                return True
        return False

    def _run(self) -> None:
        try:
            while self._wait_for_room():
                chunks = next(self._batches, None)
                if chunks is None:
                    break
                self._queue.put(self._read(chunks))
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._queue.put(error)
            return
        self._queue.put(None)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            self._room.release()
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def forward(model: torch.nn.Module, inputs: torch.Tensor, precision: Precision) -> torch.Tensor:
    """The network's estimate for a batch, in one call."""
    with torch.inference_mode(), precision_context(inputs.device, precision):
        estimate: torch.Tensor = model(inputs)
    return estimate


def _stacked_estimates(
    batches: Iterator[_Batch], device: torch.device, limit: BatchLimit, precision: Precision
) -> Generator[tuple[_Chunk, torch.Tensor], None, None]:
    """Each planned chunk and its estimate, a whole batch per model call (`run_batch`)."""
    for batch in batches:
        chunks = [c for c in batch.chunks if c.owner.song.error is None]
        if not chunks:
            continue
        inputs = batch.inputs
        if len(chunks) < len(batch.chunks):  # a song was dropped since the batch was read
            inputs = inputs[[batch.chunks.index(c) for c in chunks]]
        outputs = run_batch(chunks[0].owner.model, inputs.to(device, non_blocking=True), limit,
                            lambda m, x: forward(m, x, precision))  # fmt: skip
        for index, chunk in enumerate(chunks):
            yield chunk, outputs[index]


def _side_by_side_estimates(
    batches: Iterator[_Batch], workers: SegmentWorkers, precision: Precision
) -> Generator[tuple[_Chunk, torch.Tensor], None, None]:
    """Each planned chunk and its estimate, one call per chunk on the CPU workers, as many in
    flight as there are workers, handed back in planned order."""
    in_flight: collections.deque[tuple[_Chunk, Future[torch.Tensor]]] = collections.deque()
    try:
        for batch in batches:
            for index, chunk in enumerate(batch.chunks):
                if chunk.owner.song.error is not None:
                    continue
                while len(in_flight) >= workers.size:
                    done, future = in_flight.popleft()
                    yield done, future.result()[0]
                in_flight.append((chunk, workers.submit(
                    forward, chunk.owner.model, batch.inputs[index : index + 1], precision)))
        while in_flight:
            done, future = in_flight.popleft()
            yield done, future.result()[0]
    finally:
        for _, future in in_flight:
            future.cancel()


def stream_songs(
    loaded: LoadedModel,
    songs: Sequence[SongStream],
    *,
    shifts: int,
    overlap: float,
    rng: random.Random,
    precision: Precision,
    limit: BatchLimit,
    workers: SegmentWorkers | None = None,
) -> Iterator[tuple[int, StemBlock]]:
    """Yield `(song index, block)`: each song's stems as consecutive `(sources, channels,
    frames)` CPU blocks covering its whole track, the songs' segments sharing the model calls.
    Shift offsets are drawn from `rng` song by song (as separating them one after the other
    would). A song whose `after_segment` raises is dropped (see `SongStream`); an error of the
    model itself ends the whole stream. `limit` sets (and may shrink) the batch size; `workers`
    (the CPU) runs the segments side by side, one call each."""
    feed = SongFeed(max(1, len(songs)))
    for song in songs:
        feed.offer(song)
    index_of = {id(song): index for index, song in enumerate(songs)}
    for song, block in stream_feed(loaded, feed, shifts=shifts, overlap=overlap, rng=rng,
                                   precision=precision, limit=limit, workers=workers):  # fmt: skip
        yield index_of[id(song)], block


def stream_feed(
    loaded: LoadedModel,
    feed: SongFeed,
    *,
    shifts: int,
    overlap: float,
    rng: random.Random,
    precision: Precision,
    limit: BatchLimit,
    workers: SegmentWorkers | None = None,
) -> Iterator[tuple[SongStream, StemBlock]]:
    """Yield `(song, block)` for the songs of `feed`, those queued now and those that join
    while it runs (see `SongFeed`), as `stream_songs` does; ends when no song is left in it or
    queued. A song leaves (`SongStream.left`) right after its last block is yielded, or when it
    is dropped; when the stream ends early (an error of the model, or the consumer stops), the
    songs still in it leave with that error."""
    feed._start()

    def planning(song: SongStream) -> bool:
        return song.error is None and any(p.scheduled < p.chunk_count for p in song.passes)

    def admit(position: int) -> list[_Pass]:
        joined = []
        for song in feed._admit(planning):
            song.joined_at = position
            song.passes = _passes(loaded, song, shifts, overlap, rng)
            joined.extend(song.passes)
        return joined

    reader = Prefetcher(plan_batches([], limit, admit), pin=loaded.device.type == "cuda")
    estimates = (
        _side_by_side_estimates(iter(reader), workers, precision)
        if workers is not None
        else _stacked_estimates(iter(reader), loaded.device, limit, precision)
    )  # fmt: skip
    failure: BaseException | None = None
    try:
        for chunk, output in estimates:
            song = chunk.owner.song
            if song.error is not None:
                continue
            estimate = output[..., chunk.lead : chunk.lead + chunk.length]
            chunk.owner.add(chunk.start, estimate.float())
            song.done += 1
            try:
                song.after_segment(song.done, song.total)
            except Exception as error:  # an abort (or a failing callback): this song only
                song.error = error
                feed._leave(song)
                if feed._close_if_idle():
                    return  # nothing left to wait for (segments still running are dropped)
                continue
            block = song.emit()
            if block is not None:
                yield song, block
            if song.done == song.total:
                feed._leave(song)
    except GeneratorExit:  # the consumer stopped: the songs in the stream leave unfinished
        raise
    except BaseException as error:
        failure = error
        raise
    finally:
        estimates.close()
        reader.close()
        feed._end(failure)
