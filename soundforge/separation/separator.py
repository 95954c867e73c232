"""`Separator`: one loaded model and its settings; `separate(path, out_dir)` turns an audio file
into stem files, reporting progress per segment and stopping between segments when asked. A
`Separator` is built once and reused for every job of a process (the model stays loaded).

Memory stays flat with track length: the mix is decoded to a temporary file and read window by
window, the stems are overlap-added in a window of about one batch of segments and spooled to
disk. The batch size comes from the setting, or (0) from the device: a small fixed batch on the
CPU, on a GPU as many segments as the free memory holds (measured with one probe segment).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import random
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, closing, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from soundforge import audio_io
from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.errors import AbortCheck, ConfigError, JobAbortedError, ProgressCallback
from soundforge.separation import loading
from soundforge.separation.cpu_tuning import (
    release_free_memory,
    trimming_free_memory,
    tune_for_cpu_separation,
)
from soundforge.separation.cpu_workers import SegmentWorkers
from soundforge.separation.joining import JoinedStreams
from soundforge.separation.loading import LoadedModel
from soundforge.separation.mix import MixReader, PreparedMix, prepare_mix
from soundforge.separation.registry import DEFAULT_MODEL, check_model_name
from soundforge.separation.stem_files import StemFormat, StemWriter, new_token, temp_name
from soundforge.separation.streaming import (
    BatchLimit,
    SongFeed,
    SongStream,
    StemBlock,
    precision_context,
    stream_feed,
    stream_songs,
    valid_length,
)

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda", "auto"]
Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "fp16")
CPU_AUTO_BATCH = 1  # the CPU's default: one segment at a time on every core (measured below)
GPU_BATCH_CAP = 32  # more gains little (shared/gpu/model_batch.py) and grows host memory
GPU_MEMORY_SHARE = 0.7  # of the free device memory the auto batch size may plan for
GPU_SONGS_TOGETHER = 4  # `separate_many` on a GPU: songs whose segments share the batches
SEGMENTS_SHARE = 99.0  # percent reported as segments complete; the last 1 is writing the files


def resolve_device(device: Device) -> torch.device:
    """`auto` is CUDA when torch sees a GPU, else the CPU; `cuda` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no CUDA GPU; use cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda or auto")
    return torch.device(device)


def reduced_precision(precision: Precision, device: torch.device) -> Precision:
    """The precision that will run: bf16 needs native support, fp16 a CUDA device; otherwise
    fp32 (with a warning)."""
    if precision == "bf16" and not bf16_supported(device):
        logger.warning("bf16 is not supported on %s; separating in fp32", device)
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        logger.warning("fp16 needs a CUDA device (it is far slower on CPUs); separating in fp32")
        return "fp32"
    return precision


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def auto_batch_size(loaded: LoadedModel, precision: Precision) -> int:
    """Segments per step: on the CPU `CPU_AUTO_BATCH`; on a GPU, what `GPU_MEMORY_SHARE` of the
    free memory holds, from the peak memory of one probe segment (capped at `GPU_BATCH_CAP`).

    Why one on the CPU: on a quiet 2-core machine (full-size htdemucs, 30 s song, whole
    processes, the demucs CLI 16.5 s wall / 30.7 s CPU / 1314 MB) one segment on both cores
    took 15.5-16.4 s / 27-28 s / 1271-1290 MB, two side by side (one thread each) 16.1 s /
    27.3 s / 1982 MB, and 19.9 s / 33.6 s / 1175 MB with the periodic `malloc_trim` that keeps
    their memory down. Side by side pays only on cores other work keeps busy, where two
    threads of one call wait for each other (`SOUNDFORGE_SEPARATION_BATCH=2`)."""
    device = loaded.device
    if device.type != "cuda":
        return CPU_AUTO_BATCH
    per_item = max(probe_segment_bytes(loaded, member, precision) for member in loaded.members)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(GPU_BATCH_CAP, int(free * GPU_MEMORY_SHARE) // max(per_item, 1)))


def probe_segment_bytes(loaded: LoadedModel, member: torch.nn.Module, precision: Precision) -> int:
    """Device memory one segment's forward pass needs beyond what is already allocated."""
    device = loaded.device
    segment_length = int(loaded.sample_rate * member.__dict__["segment"])
    length = valid_length(member, segment_length)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    probe = torch.zeros(1, loaded.audio_channels, length, device=device)
    with torch.inference_mode(), precision_context(device, precision):
        member(probe)
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - before)


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast runs natively (CPU: AVX512-BF16/AMX; GPU: Ampere or later)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class Separator:
    """A demucs model loaded once (per process, shared by every `Separator` naming it) and the
    settings to separate with. Settings are passed in; this class reads no environment."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        repo: Path | str | None = None,
        device: Device = "cpu",
        precision: Precision = "fp32",
        shifts: int = 1,
        overlap: float = 0.25,
        stem_format: StemFormat = "flac",
        torch_threads: int = 0,
        batch_size: int = 0,
        songs_together: int = 0,
        rng: random.Random | None = None,
        limits: AudioLimits = DEFAULT_LIMITS,
    ) -> None:
        """`repo`: a folder in demucs' `--repo` layout, or None for demucs' download cache.
        `precision`: fp32 matches the demucs CLI; bf16 autocasts the model (faster on CPUs with
        AVX512-BF16/AMX and on recent GPUs, deviates ~1e-3), fp16 autocasts on a GPU; both fall
        back to fp32 where unsupported. `shifts`, `overlap`: as demucs' options.
        `torch_threads`: 0 keeps torch's default (it is a process-wide setting). `batch_size`:
        segments per model call, 0 for the device's default (`auto_batch_size`).
        `songs_together`: how many files `separate_many` and `separate_joined` run through one
        batch stream, 0 for the device's default (`GPU_SONGS_TOGETHER` on a GPU, 1 on the
        CPU). `rng`: draws the shift offsets (seed it to reproduce a run). `limits`: what an
        input may ask the decoder for (checked before anything is written)."""
        check_model_name(model)
        if shifts < 0:
            raise ConfigError(f"shifts must be 0 or more, not {shifts}")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), not {overlap}")
        if stem_format not in ("flac", "wav"):
            raise ConfigError(f"unknown stem format {stem_format!r}; use flac or wav")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
        if batch_size < 0:
            raise ConfigError(f"batch size must be 0 (automatic) or more, not {batch_size}")
        if songs_together < 0:
            raise ConfigError(f"songs together must be 0 (automatic) or more, not {songs_together}")
        if torch_threads < 0:
            raise ConfigError(f"torch threads must be 0 (default) or more, not {torch_threads}")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.precision = reduced_precision(precision, self.device)
        self.shifts = shifts
        self.overlap = overlap
        self.stem_format: StemFormat = stem_format
        self.rng = rng if rng is not None else random.Random()
        self.limits = limits
        self.model = loading.load(model, Path(repo) if repo is not None else None, self.device)
        self.batch = BatchLimit(batch_size or auto_batch_size(self.model, self.precision))
        self.songs_together = songs_together or (
            GPU_SONGS_TOGETHER if self.device.type == "cuda" else 1)
        self.workers: SegmentWorkers | None = None
        if self.device.type == "cpu":
            tune_for_cpu_separation()
            release_free_memory()  # what loading the weights left behind
        if self.device.type == "cpu" and self.batch.size > 1:
            # Segments run side by side, each with a share of the cores (process-wide setting).
            if not torch_threads:
                torch.set_num_threads(max(1, usable_cores() // self.batch.size))
            self.workers = _segment_workers(self.batch.size)
        self.joined = JoinedStreams(self._stream, self.songs_together)
        logger.info("separating with %s on %s in %s, %d segment(s) per batch, %d torch thread(s)",
                    model, self.device, self.precision, self.batch.size, torch.get_num_threads())

    @property
    def stem_names(self) -> tuple[str, ...]:
        return self.model.sources

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def separate(
        self,
        path: Path | str,
        out_dir: Path | str,
        progress: ProgressCallback | None = None,
        should_abort: AbortCheck | None = None,
    ) -> dict[str, Path]:
        """Write `<out_dir>/<stem>.<format>` for every stem of the model; returns stem -> path.

        `progress(percent)` goes from 0 to 100 as segments complete; `should_abort()` is checked
        before decoding, between segments and between stem files, and True raises
        `JobAbortedError` (no stem file is left behind). Non-audio input raises `AudioError`.
        """
        [outcome] = self.separate_together([SeparationRequest(path, out_dir, progress,
                                                              should_abort)])
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def separate_together(
        self, requests: Sequence[SeparationRequest]
    ) -> list[dict[str, Path] | Exception]:
        """Separate several files in one batch stream: their segments share the model calls
        (on a GPU, the batches stay full across the ends of songs). Each request keeps its own
        progress and abort, as `separate` has them: the result list holds, per request, its
        stems or the exception that ended it (`JobAbortedError`, `AudioError`), and the other
        requests go on. An error of the model itself (or of the device) raises for all of them;
        no temporary file is left behind either way."""
        started = time.monotonic()
        outcomes: list[dict[str, Path] | Exception | None] = [None] * len(requests)
        jobs: list[tuple[int, _Job, SongStream]] = []
        with ExitStack() as cleanups:
            for index, request in enumerate(requests):
                check_abort = _abort_check(request)
                try:
                    if request.progress is not None:
                        request.progress(0.0)
                    check_abort()
                    job = self._open(Path(request.path), Path(request.out_dir))
                except Exception as error:
                    outcomes[index] = error
                    continue
                cleanups.enter_context(job.cleanup)
                jobs.append((index, job, SongStream(job.reader, job.denormalize,
                                                    _after_segment(request, check_abort))))
            self._infer([job for _, job, _ in jobs], [song for _, _, song in jobs])
            for index, job, song in jobs:
                request = requests[index]
                try:
                    if song.error is not None:
                        raise song.error
                    with job.cleanup:
                        outcomes[index] = self._finish(job, _abort_check(request))
                except Exception as error:
                    outcomes[index] = error
                    continue
                if request.progress is not None:
                    request.progress(100.0)
                self._log_done(job, outcomes[index], started)  # type: ignore[arg-type]
        return [outcome for outcome in outcomes if outcome is not None]

    def separate_joined(self, request: SeparationRequest) -> dict[str, Path]:
        """Separate one file as `separate` does, in the batch stream this separator runs for
        every thread calling this method: a call arriving while others run joins their stream
        at its next batch (continuous batching, `songs_together` songs at once; see
        `soundforge.separation.joining`) and leaves it when its own stems are done. Decoding
        and writing the stem files run on the calling thread, beside the stream."""
        started = time.monotonic()
        check_abort = _abort_check(request)
        if request.progress is not None:
            request.progress(0.0)
        check_abort()
        job = self._open(Path(request.path), Path(request.out_dir))
        with job.cleanup:
            song = SongStream(job.reader, job.denormalize, _after_segment(request, check_abort))
            self.joined.run(song, job.writer.append,
                            lambda: request.should_abort is not None and request.should_abort())
            stems = self._finish(job, check_abort)
        if request.progress is not None:
            request.progress(100.0)
        self._log_done(job, stems, started)
        return stems

    def _stream(self, feed: SongFeed) -> Generator[tuple[SongStream, StemBlock], None, None]:
        """A stream over `feed` (`joined`'s, or a `separate_many` run's), with the CPU's memory
        care as in `_infer`."""
        with self._memory_care():
            yield from stream_feed(
                self.model, feed, shifts=self.shifts, overlap=self.overlap, rng=self.rng,
                precision=self.precision, limit=self.batch, workers=self.workers,
            )  # fmt: skip

    def separate_many(
        self, items: Sequence[tuple[Path | str, Path | str]]
    ) -> list[dict[str, Path]]:
        """Separate several `(file, out_dir)` pairs with the model kept busy: up to
        `songs_together` files share one batch stream, and the next file joins it as soon as one
        has its last segments planned (continuous batching, `SongFeed`), not when the longest
        of a group is done. The next file is decoded on a reader thread while the stream runs,
        and each file's stems are encoded on a writer thread as soon as it leaves the stream.
        Returns each file's stems, in order; the first error stops the rest (no temporary file
        is left behind)."""
        return _FileFeed(self, [(Path(path), Path(out_dir)) for path, out_dir in items]).run()

    def _open(self, source: Path, out_dir: Path) -> _Job:
        """Probe and decode `source` into a temporary mix file in `out_dir`; `AudioError` before
        anything is created when it is not audio or over the limits."""
        info = audio_io.probe(source, count_frames=False, limits=self.limits)
        info.limits.check_budget(str(source), info.frames, info.sample_rate,
                                 self.model.sample_rate, self.model.audio_channels)
        out_dir.mkdir(parents=True, exist_ok=True)
        token = new_token()
        cleanup = ExitStack()
        try:
            raw_path = out_dir / temp_name(token, "mix.f32")
            cleanup.callback(raw_path.unlink, missing_ok=True)
            mix = prepare_mix(info, raw_path, self.model.sample_rate, self.model.audio_channels)
            reader = MixReader(mix)
            cleanup.callback(reader.close)
            writer = StemWriter(out_dir, self.model.sources, mix.channels, token)
            cleanup.callback(writer.close)
        except BaseException:
            cleanup.close()
            raise
        return _Job(source, mix, reader, writer, cleanup)

    def _infer(self, jobs: Sequence[_Job], songs: Sequence[SongStream]) -> None:
        """Run `songs` (one per job) through the model, spooling each one's stems to its job's
        writer; a song dropped on the way keeps its error (see `SongStream`)."""
        with self._memory_care():
            for index, block in stream_songs(
                self.model, songs, shifts=self.shifts, overlap=self.overlap, rng=self.rng,
                precision=self.precision, limit=self.batch, workers=self.workers,
            ):  # fmt: skip
                jobs[index].writer.append(block)

    @contextmanager
    def _memory_care(self) -> Iterator[None]:
        """Around a batch stream: side by side, freed activations of several segments fragment
        the heap (see cpu_tuning), so free pages are handed back while they run (one at a time
        reuses its own); on the CPU, the freed pages are handed back once it ends."""
        trimming = trimming_free_memory() if self.workers is not None else nullcontext()
        try:
            with trimming:
                yield
        finally:
            if self.device.type == "cpu":
                release_free_memory()

    def _finish(self, job: _Job, check_abort: Callable[[], None]) -> dict[str, Path]:
        return job.writer.finish(self.model.sample_rate, self.stem_format, check_abort)

    def _log_done(self, job: _Job, stems: dict[str, Path], started: float) -> None:
        logger.info("separated %s (%.1f s of audio) into %d stems in %.1f s",
                    job.source.name, job.mix.frames / job.mix.sample_rate, len(stems),
                    time.monotonic() - started)


@dataclass(frozen=True)
class SeparationRequest:
    """One file for `Separator.separate_together`, with its own progress and abort check."""

    path: Path | str
    out_dir: Path | str
    progress: ProgressCallback | None = None
    should_abort: AbortCheck | None = None


def _abort_check(request: SeparationRequest) -> Callable[[], None]:
    def check_abort() -> None:
        if request.should_abort is not None and request.should_abort():
            raise JobAbortedError(f"separation of {Path(request.path).name} aborted")

    return check_abort


def _after_segment(request: SeparationRequest, check_abort: Callable[[], None]
                   ) -> Callable[[int, int], None]:
    def after_segment(done: int, total: int) -> None:
        if request.progress is not None:
            request.progress(SEGMENTS_SHARE * done / total)
        check_abort()

    return after_segment


def _no_progress(done: int, total: int) -> None:
    return None


@functools.cache
def _segment_workers(size: int) -> SegmentWorkers:
    """The threads CPU segments run on, one pool per size for the whole process."""
    return SegmentWorkers(size)


@dataclass
class _Job:
    """One file between decoding and its final stem files; `cleanup` removes its temporaries."""

    source: Path
    mix: PreparedMix
    reader: MixReader
    writer: StemWriter
    cleanup: ExitStack

    def denormalize(self, block: torch.Tensor) -> torch.Tensor:
        return block * self.mix.std + self.mix.mean


class _FileFeed:
    """One `Separator.separate_many` run: the files go one by one into a `SongFeed` of
    `songs_together` songs, which batch streams run over (a stream ends when nothing is left to
    plan, e.g. while the next file is still being decoded; the next stream takes it). The next
    files are decoded on the reader thread, one after the other, while fewer than
    `songs_together` decoded files wait for room in the stream (so the temporary mixes ahead of
    it stay bounded, and a fast device does not wait for a decode a song leaving could have
    started); a file whose last block is out is encoded on the writer thread while the stream
    goes on."""

    def __init__(self, separator: Separator, files: Sequence[tuple[Path, Path]]) -> None:
        self.separator = separator
        self.count = len(files)
        self.files = collections.deque(enumerate(files))
        self.feed = SongFeed(separator.songs_together)
        self.opening: tuple[int, float, Future[_Job]] | None = None  # (index, started, decode)
        self.songs: dict[SongStream, tuple[int, float, _Job]] = {}  # offered, not yet done
        self.finishing: list[tuple[int, Future[dict[str, Path]]]] = []
        self.results: dict[int, dict[str, Path]] = {}
        self.reading = ThreadPoolExecutor(1, thread_name_prefix="separation-read")
        self.writing = ThreadPoolExecutor(1, thread_name_prefix="separation-write")

    def run(self) -> list[dict[str, Path]]:
        try:
            while self.files or self.opening is not None or self.feed.waiting:
                self._top_up(wait=True)
                with closing(self.separator._stream(self.feed)) as stream:
                    for song, block in stream:
                        index, started, job = self.songs[song]
                        job.writer.append(block)
                        if song.done == song.total:  # its last block: encode it beside the stream
                            del self.songs[song]
                            self.finishing.append((index, self.writing.submit(
                                self._finish, job, started)))  # fmt: skip
                        self._collect(wait=False)
                        self._top_up(wait=False)
                for song in self.songs:  # a song the stream let go without its last block
                    if song.left.is_set():
                        raise song.error or RuntimeError("the separation stream stopped early")
            self._collect(wait=True)
        except BaseException:
            self._abandon()
            raise
        finally:
            self.reading.shutdown()
            self.writing.shutdown()
        return [self.results[index] for index in range(self.count)]

    def _top_up(self, wait: bool) -> None:
        """Offer the decoded file to the feed once it is ready (`wait`: wait for it when no file
        waits in the feed), and start decoding the next while the feed has room ahead."""
        if self.opening is None and self.files and self.feed.waiting < self.feed.capacity:
            index, (source, out_dir) = self.files.popleft()
            self.opening = (index, time.monotonic(),
                            self.reading.submit(self.separator._open, source, out_dir))  # fmt: skip
        if self.opening is None:
            return
        index, started, opening = self.opening
        if opening.done() or (wait and not self.feed.waiting):
            self.opening = None
            job = opening.result()  # a file that cannot be decoded stops the run here
            song = SongStream(job.reader, job.denormalize, _no_progress)
            self.songs[song] = (index, started, job)
            self.feed.offer(song)
            self._top_up(wait=False)

    def _finish(self, job: _Job, started: float) -> dict[str, Path]:
        with job.cleanup:
            stems = self.separator._finish(job, lambda: None)
        self.separator._log_done(job, stems, started)
        return stems

    def _collect(self, wait: bool) -> None:
        """Take the stems of the files encoded by now (`wait`: of all); raises the first error."""
        remaining = []
        for index, finishing in self.finishing:
            if wait or finishing.done():
                self.results[index] = finishing.result()
            else:
                remaining.append((index, finishing))
        self.finishing = remaining

    def _abandon(self) -> None:
        """After an error: remove the temporaries of every file not yet encoded (the stream is
        closed by now) and wait for the encodes under way."""
        if self.opening is not None:
            _, _, opening = self.opening
            self.opening = None
            with suppress(Exception):  # a failed decode removed its own temporaries
                opening.result().cleanup.close()
        for _, _, job in self.songs.values():
            job.cleanup.close()
        self.songs.clear()
        for _, finishing in self.finishing:
            with suppress(Exception):  # the error that stopped the run is already propagating
                finishing.result()
