"""Process settings that keep CPU separation's memory down without costing speed.

Measured on full-size htdemucs, two segments side by side on two threads (4 forward calls,
peak RSS of the process with 405 MB of torch and weights):

- glibc gives each thread its own malloc arena; freed activations stay in them, fragmented, and
  peak RSS climbed past 2.3 GB. One arena for the process (`M_ARENA_MAX` 1) gave 1.6-1.9 GB and
  less system time (fewer fresh pages to fault in). Mapping every large block instead
  (`M_MMAP_THRESHOLD` 1 MB) gave 1.2 GB but tripled the system time; jemalloc did the same.
- torch's native multi-head attention fast path (taken by the transformer's self-attention
  layers) materialises the `(heads, tokens, tokens)` scores: 220 MB per call for a 7.8 s
  segment. The regular path runs `scaled_dot_product_attention`, whose CPU kernel never holds
  them, with 5-8 % less CPU time; outputs differ by ~5e-7.

- Even in one arena, freed activations leave free pages inside the heap that stay resident
  until reused: a 30 s song peaked at 1.56-1.82 GB. `malloc_trim` returns them; run every
  0.5 s while segments run it gave 1.40 GB, every 0.1 s 1.09-1.11 GB (0.05 s: 1.09 GB), for
  3.8 and 6.7 s more system time over 23 s of user time (the returned pages are faulted in
  again when reused); the process still used less CPU time than the demucs CLI's.

Tried for the fp32 exact mode and not kept (full-size htdemucs, one 7.8 s segment, the
variants alternating in one process, each checked within 2e-7 of eager; the 2-core machine was
shared, so only large differences count): `channels_last` 7.4-11.2 s per forward against eager's
7.2-10.0 s; `torch.jit` trace + freeze + `optimize_for_inference` 9.8-13.3 s; `torch.compile`
(inductor) has no code generation for the STFT's complex operators and its cold compile had not
finished after 10 minutes of the machine, far beyond a song's separation. `torch.profiler` on one
forward: oneDNN convolutions 35 % of the time, the transformer's linear layers (addmm) 25 %,
flash attention 20 %, copies 6 %, elementwise ops (add, GLU, GroupNorm, mul, GELU) 12 %, STFT and
inverse STFT 3 %: four fifths are library kernels that fusing the graph cannot speed up. Outside
the network (30 s song, in one process): model load 1.1 s, decoding 0.05 s, the FLAC stems 0.45 s
against 57 s of inference on the loaded machine (about 12 s quiet), so overlapping decode and
encode with it would save 4 % at most.

All are process-wide; the separator sets them on the CPU only (a process that separates on the
CPU does little else) and runs the trimmer (`trimming_free_memory`) while segments run;
`release_free_memory` hands freed pages back after each job, so an idle engine process does not
keep a song's peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter numbers (malloc.h)
TRIM_INTERVAL_S = 0.1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 -- raises AttributeError on musl/macOS
    except (OSError, AttributeError):
        return None
    return libc


def tune_for_cpu_separation() -> None:
    """One malloc arena for the process (before the worker threads start) and the attention
    path that does not materialise the score matrix. Idempotent."""
    libc = _glibc()
    if libc is not None and not libc.mallopt(M_ARENA_MAX, 1):
        logger.debug("mallopt(M_ARENA_MAX, 1) was refused")
    torch.backends.mha.set_fastpath_enabled(False)


def release_free_memory() -> None:
    """Return the heap's free pages to the system (glibc `malloc_trim`); no-op elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class _Trimmer:
    """One thread per process calling `release_free_memory` every `TRIM_INTERVAL_S` while at
    least one user is inside `trimming_free_memory`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="malloc-trim",
                                                daemon=True)  # fmt: skip
                self._thread.start()

    def exit(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait(TRIM_INTERVAL_S)
            with self._lock:
                self._wake.clear()
                if self._users == 0:
                    self._thread = None
                    return
            release_free_memory()


_trimmer = _Trimmer()


@contextlib.contextmanager
def trimming_free_memory() -> Iterator[None]:
    """Return the heap's free pages to the system every `TRIM_INTERVAL_S` inside this block (a
    no-op without glibc)."""
    if _glibc() is None:
        yield
        return
    _trimmer.enter()
    try:
        yield
    finally:
        _trimmer.exit()
