"""Apply a (bag of) demucs model(s) to a mix segment by segment, handing each finished span of
the stems to a sink as soon as no later segment can change it.

Why not `demucs.apply.apply_model`: it holds the whole normalised mix and a whole
`(sources, channels, frames)` float32 output per shift and per bag member, so memory grows with
the track (10 min of four stems is ~850 MB more), it runs under `no_grad` without autocast, and
it reports progress only through tqdm or a per-chunk dict. This module reproduces its arithmetic
so the stems match the demucs CLI: the same chunk grid (`segment`, `stride = int((1 - overlap) *
segment_length)`), each chunk padded to the model's valid length with the neighbouring audio
(zeros only outside the track), the output centre-trimmed and overlap-added with the same
triangular weights, one pass per random shift (the offset drawn with `randint(0, 0.5 s)` in the
same order: member by member, shift by shift) averaged, and bag members mixed per source with the
bag's weights. Each (member, shift) pass keeps only a window of about one segment plus one stride.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Protocol

import torch
from torch.nn import functional

from soundforge.separation.loading import LoadedModel

StemBlock = torch.Tensor
"""`(sources, channels, frames)` float32, denormalised: the next span of every stem."""


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
    next_chunk: int = 0
    base: int = 0  # track frame of acc[..., 0]
    acc: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    den: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def chunk_count(self) -> int:
        return -(-(self.end - self.origin) // self.stride)

    @property
    def next_start(self) -> int:
        """Track frame where the next chunk starts; `end` once all are done. Every frame before
        it has all its contributions from this pass."""
        if self.next_chunk >= self.chunk_count:
            return self.end
        return self.origin + self.next_chunk * self.stride

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

    def take(self, until: int) -> torch.Tensor:
        """This pass's finished, normalised estimate for [base, until), scaled by its share; the
        window then starts at `until`."""
        count = until - self.base
        span = self.acc[..., :count] / self.den[:count] * self.source_scale
        self.acc, self.den = self.acc[..., count:], self.den[count:]
        self.base = until
        return span


def transition_weight(segment_length: int) -> torch.Tensor:
    """demucs' overlap-add weight: a triangle peaking mid-segment, scaled to a maximum of 1."""
    weight = torch.cat([
        torch.arange(1, segment_length // 2 + 1),
        torch.arange(segment_length - segment_length // 2, 0, -1),
    ])
    return weight / weight.max()


def _valid_length(model: torch.nn.Module, length: int) -> int:
    valid_length = getattr(model, "valid_length", None)
    return int(valid_length(length)) if callable(valid_length) else length


def _passes(
    loaded: LoadedModel, frames: int, shifts: int, overlap: float, rng: random.Random
) -> list[_Pass]:
    sources = len(loaded.sources)
    totals = [sum(row[source] for row in loaded.weights) for source in range(sources)]
    passes = []
    for model, member_weights in zip(loaded.members, loaded.weights, strict=True):
        segment: Fraction | float = model.__dict__["segment"]  # set by the bag's yaml, if any
        segment_length = int(loaded.sample_rate * segment)
        stride = int((1 - overlap) * segment_length)
        if stride < 1:
            raise ValueError(f"overlap {overlap} leaves no stride for {segment_length} frames")
        weight = transition_weight(segment_length)
        share = torch.tensor(
            [member_weights[k] / (max(shifts, 1) * totals[k]) for k in range(sources)],
            dtype=torch.float32,
        ).view(sources, 1, 1)
        max_shift = int(0.5 * loaded.sample_rate)
        origins = [rng.randint(0, max_shift) - max_shift for _ in range(shifts)] or [0]
        for origin in origins:
            passes.append(_Pass(
                model=model, source_scale=share, origin=origin, end=frames,
                segment_length=segment_length, stride=stride, weight=weight,
                acc=torch.zeros(sources, loaded.audio_channels, 0), den=torch.zeros(0),
            ))  # fmt: skip
    return passes


def _precision_context(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[None]:
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def segment_count(
    loaded: LoadedModel, frames: int, shifts: int, overlap: float
) -> int:
    """How many model calls separating `frames` takes (the unit of progress)."""
    return sum(p.chunk_count for p in _passes(loaded, frames, shifts, overlap, random.Random(0)))


def separate_stream(
    loaded: LoadedModel,
    mix: WindowSource,
    *,
    shifts: int,
    overlap: float,
    rng: random.Random,
    bf16: bool,
    denormalize: Callable[[torch.Tensor], torch.Tensor],
    after_segment: Callable[[int, int], None],
) -> Iterator[StemBlock]:
    """Yield the stems of `mix` as consecutive `(sources, channels, frames)` blocks covering the
    whole track. `after_segment(done, total)` runs after each model call (progress, abort)."""
    passes = _passes(loaded, mix.frames, shifts, overlap, rng)
    total = sum(p.chunk_count for p in passes)
    done = 0
    emitted = 0
    device = loaded.device
    while emitted < mix.frames:
        current = min(passes, key=lambda p: p.next_start)
        if current.next_chunk < current.chunk_count:
            start = current.next_start
            length = min(current.end - start, current.segment_length)
            valid = _valid_length(current.model, length)
            lead = (valid - length) // 2
            chunk = mix.window(start - lead, valid)[None].to(device)
            with torch.inference_mode(), _precision_context(device, bf16):
                estimate = current.model(chunk)
            estimate = estimate[0, ..., lead : lead + length].float().cpu()
            current.add(start, estimate)
            current.next_chunk += 1
            done += 1
            after_segment(done, total)
        boundary = min(p.next_start for p in passes)
        if boundary > emitted:
            block = sum((p.take(boundary) for p in passes[1:]), passes[0].take(boundary))
            emitted = boundary
            yield denormalize(block)
