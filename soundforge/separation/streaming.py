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

Batching: the next chunks (in track order, across the shift passes of one bag member) of equal
input length go through the network together: stacked into one call on a GPU, or on the CPU one
call per chunk on worker threads side by side (profiled on full-size htdemucs: one call with two
torch threads took 1.8x the CPU time of two single-threaded calls for the same work). Every item is
independent (the network normalises and attends per item), so a batch gives each chunk's estimate
as a call of its own would, up to float rounding. Memory stays bounded: a batch is planned a
bounded distance ahead (one batch being read by `Prefetcher` while one runs) and each (member,
shift) pass keeps an overlap-add window of about one batch of strides plus one segment, on the
model's device.

A batch that runs the device out of memory is split: `BatchLimit` halves itself and the batch
runs in pieces of the new size (halving again if needed); only a single segment that does not fit
fails the job.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, wait
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import torch
from torch.nn import functional

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


@dataclass
class _Pass:
    """One member of the bag at one shift: its chunk grid and its overlap-add window."""

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
    loaded: LoadedModel, frames: int, shifts: int, overlap: float, rng: random.Random
) -> list[_Pass]:
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
                model=model, source_scale=share, origin=origin, end=frames,
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


def plan_batches(passes: list[_Pass], limit: BatchLimit) -> Iterator[list[_Chunk]]:
    """The chunks of every pass in batches: each batch starts with the earliest unscheduled chunk
    (so the emitted track advances evenly) and adds the next earliest of the same network with
    the same input length, up to the limit's current size."""
    while True:
        pending = [p for p in passes if p.scheduled < p.chunk_count]
        if not pending:
            return
        first = _next_chunk(min(pending, key=lambda p: p.chunk_start(p.scheduled)))
        first.owner.scheduled += 1
        batch = [first]
        while len(batch) < limit.size:
            same = [p for p in passes
                    if p.model is first.owner.model and p.scheduled < p.chunk_count]
            if not same:
                break
            chunk = _next_chunk(min(same, key=lambda p: p.chunk_start(p.scheduled)))
            if chunk.valid != first.valid:
                break
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
    """Reads planned batches' input windows on a thread, `PREFETCH_BATCHES` ahead of the
    consumer (decode and device compute overlap; memory stays bounded). Iterate it; `close()`
    stops the thread (also after an error or an abort)."""

    def __init__(self, batches: Iterator[list[_Chunk]], mix: WindowSource, pin: bool) -> None:
        self._batches = batches
        self._mix = mix
        self._pin = pin
        self._queue: queue.Queue[_Batch | BaseException | None] = queue.Queue(PREFETCH_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="separation-reader", daemon=True)
        self._thread.start()

    def _read(self, chunks: list[_Chunk]) -> _Batch:
        inputs = torch.stack([self._mix.window(c.start - c.lead, c.valid) for c in chunks])
        return _Batch(chunks, inputs.pin_memory() if self._pin else inputs)

    def _put(self, item: _Batch | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for chunks in self._batches:
                if not self._put(self._read(chunks)):
                    return
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)
            return
        self._put(None)

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def segment_count(
    loaded: LoadedModel, frames: int, shifts: int, overlap: float
) -> int:
    """How many model calls at batch size 1 separating `frames` takes (the unit of progress)."""
    return sum(p.chunk_count for p in _passes(loaded, frames, shifts, overlap, random.Random(0)))


def _forward_once(model: torch.nn.Module, inputs: torch.Tensor, precision: Precision
                  ) -> torch.Tensor:
    with torch.inference_mode(), precision_context(inputs.device, precision):
        estimate: torch.Tensor = model(inputs)
    return estimate


def forward(model: torch.nn.Module, inputs: torch.Tensor, precision: Precision,
            workers: Executor | None) -> torch.Tensor:
    """The network's estimate for a batch: one stacked call, or with `workers` (the CPU) one call
    per item on the worker threads, side by side. (On a CPU a stacked call gains nothing and
    torch's threads inside one call scale poorly: each item on a thread of its own does.)"""
    if workers is None or inputs.shape[0] == 1:
        return _forward_once(model, inputs, precision)
    futures = [workers.submit(_forward_once, model, inputs[index : index + 1], precision)
               for index in range(inputs.shape[0])]  # fmt: skip
    wait(futures)
    return torch.cat([future.result() for future in futures])


def separate_stream(
    loaded: LoadedModel,
    mix: WindowSource,
    *,
    shifts: int,
    overlap: float,
    rng: random.Random,
    precision: Precision,
    limit: BatchLimit,
    denormalize: Callable[[torch.Tensor], torch.Tensor],
    after_segment: Callable[[int, int], None],
    workers: Executor | None = None,
) -> Iterator[StemBlock]:
    """Yield the stems of `mix` as consecutive `(sources, channels, frames)` CPU blocks covering
    the whole track. `after_segment(done, total)` runs after each segment's estimate is added
    (progress, abort); `limit` sets (and may shrink) the batch size; `workers` runs a batch's
    items side by side (see `forward`)."""
    passes = _passes(loaded, mix.frames, shifts, overlap, rng)
    total = sum(p.chunk_count for p in passes)
    done = 0
    emitted = 0
    device = loaded.device
    reader = Prefetcher(plan_batches(passes, limit), mix, pin=device.type == "cuda")
    try:
        for batch in reader:
            inputs = batch.inputs.to(device, non_blocking=True)
            model = batch.chunks[0].owner.model
            outputs = run_batch(model, inputs, limit,
                                lambda m, x: forward(m, x, precision, workers))  # fmt: skip
            for index, chunk in enumerate(batch.chunks):
                estimate = outputs[index, ..., chunk.lead : chunk.lead + chunk.length]
                chunk.owner.add(chunk.start, estimate.float())
                done += 1
                after_segment(done, total)
            boundary = min(p.complete_until for p in passes)
            if boundary > emitted:
                block = sum((p.take(boundary) for p in passes[1:]), passes[0].take(boundary))
                emitted = boundary
                yield denormalize(block.cpu())
    finally:
        reader.close()
