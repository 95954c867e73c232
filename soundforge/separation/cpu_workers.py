"""The CPU threads segments run on, side by side, one model call each; and the gate that keeps
their memory peaks apart.

Why a gate: measured on full-size htdemucs (one thread per segment, large allocations mapped so
RSS follows live memory), a segment's forward holds about 150 MB of activations for most of its
time and about 400 MB in its decoder (the full-resolution frequency layers, then the inverse
STFT), the last third of the call. Segments started together reach their decoders together, so
two side by side peaked at two decoders' worth. The gate lets at most `peaks` segments (half the
workers, at least one) be in their decoders at once: a worker reaching its decoder while the
others hold the gate waits there once, after which the workers stay out of step by themselves
(every segment takes about as long), so the gate rarely waits again.

The gate is a forward pre-hook on the first decoder layer of each member that has a `decoder`
layer list (HTDemucs, HDemucs), acquired only on the workers' threads and released when the
member's forward returns; any other model runs ungated.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

Result = TypeVar("Result")


class _PeakGate:
    """At most `peaks` gated threads between a gated layer and the end of their call."""

    def __init__(self, peaks: int) -> None:
        self._slots = threading.Semaphore(peaks)
        self._local = threading.local()
        self._hooked: set[int] = set()
        self._hook_lock = threading.Lock()

    def attach(self, model: torch.nn.Module) -> None:
        """Hook `model`'s first decoder layer (once per model; no decoder: nothing to gate)."""
        with self._hook_lock:
            if id(model) in self._hooked:
                return
            self._hooked.add(id(model))
            decoder = getattr(model, "decoder", None)
            if isinstance(decoder, torch.nn.ModuleList) and len(decoder) > 0:
                decoder[0].register_forward_pre_hook(self._enter)

    def _enter(self, module: torch.nn.Module, args: Any) -> None:
        if getattr(self._local, "gated", False) and not getattr(self._local, "held", False):
            self._slots.acquire()
            self._local.held = True

    def run(self, call: Callable[..., Result], *args: Any) -> Result:
        """`call(*args)` on this thread with the gate in force."""
        self._local.gated, self._local.held = True, False
        try:
            return call(*args)
        finally:
            if self._local.held:
                self._slots.release()
            self._local.gated = self._local.held = False


class SegmentWorkers:
    """`size` threads for one model call each (each with torch's per-thread share of cores)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool = ThreadPoolExecutor(size, thread_name_prefix="separation")
        self._gate = _PeakGate(max(1, size // 2))

    def submit(self, call: Callable[..., Result], model: torch.nn.Module, *args: Any
               ) -> Future[Result]:
        """Run `call(model, *args)` on a worker, gated on `model`'s decoder."""
        self._gate.attach(model)
        return self._pool.submit(self._gate.run, call, model, *args)
