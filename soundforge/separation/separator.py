"""`Separator`: one loaded model and its settings; `separate(path, out_dir)` turns an audio file
into stem files, reporting progress per segment and stopping between segments when asked.

Memory stays flat with track length: the mix is decoded to a temporary file and read window by
window, the stems are overlap-added in a window of about one segment and spooled to disk.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import torch

from soundforge import audio_io
from soundforge.audio_limits import DEFAULT_LIMITS, AudioLimits
from soundforge.errors import AbortCheck, ConfigError, JobAbortedError, ProgressCallback
from soundforge.separation import loading
from soundforge.separation.mix import MixReader, prepare_mix
from soundforge.separation.registry import DEFAULT_MODEL, check_model_name
from soundforge.separation.stem_files import StemFormat, StemWriter, new_token, temp_name
from soundforge.separation.streaming import separate_stream

logger = logging.getLogger(__name__)

Device = Literal["cpu", "cuda", "auto"]
Precision = Literal["fp32", "bf16"]
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
        rng: random.Random | None = None,
        limits: AudioLimits = DEFAULT_LIMITS,
    ) -> None:
        """`repo`: a folder in demucs' `--repo` layout, or None for demucs' download cache.
        `precision`: fp32 matches the demucs CLI; bf16 autocasts the model (faster on CPUs with
        AVX512-BF16/AMX, deviates ~1e-3), falling back to fp32 where unsupported. `shifts`,
        `overlap`: as demucs' options. `torch_threads`: 0 keeps torch's default (it is a
        process-wide setting). `rng`: draws the shift offsets (seed it to reproduce a run).
        `limits`: what an input may ask the decoder for (checked before anything is written)."""
        check_model_name(model)
        if shifts < 0:
            raise ConfigError(f"shifts must be 0 or more, not {shifts}")
        if not 0.0 <= overlap < 1.0:
            raise ConfigError(f"overlap must be in [0, 1), not {overlap}")
        if stem_format not in ("flac", "wav"):
            raise ConfigError(f"unknown stem format {stem_format!r}; use flac or wav")
        if precision not in ("fp32", "bf16"):
            raise ConfigError(f"unknown precision {precision!r}; use fp32 or bf16")
        if torch_threads < 0:
            raise ConfigError(f"torch threads must be 0 (default) or more, not {torch_threads}")
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.bf16 = precision == "bf16" and bf16_supported(self.device)
        if precision == "bf16" and not self.bf16:
            logger.warning("bf16 is not supported on %s; separating in fp32", self.device)
        self.shifts = shifts
        self.overlap = overlap
        self.stem_format: StemFormat = stem_format
        self.rng = rng if rng is not None else random.Random()
        self.limits = limits
        self.model = loading.load(model, Path(repo) if repo is not None else None, self.device)

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
        source, out_dir = Path(path), Path(out_dir)
        started = time.monotonic()

        def check_abort() -> None:
            if should_abort is not None and should_abort():
                raise JobAbortedError(f"separation of {source.name} aborted")

        def after_segment(done: int, total: int) -> None:
            if progress is not None:
                progress(SEGMENTS_SHARE * done / total)
            check_abort()

        if progress is not None:
            progress(0.0)
        check_abort()
        # AudioError (not audio, over the limits) before anything is created.
        info = audio_io.probe(source, count_frames=False, limits=self.limits)
        info.limits.check_budget(str(source), info.frames, info.sample_rate,
                                 self.model.sample_rate, self.model.audio_channels)
        out_dir.mkdir(parents=True, exist_ok=True)
        token = new_token()
        with ExitStack() as cleanup:
            raw_path = out_dir / temp_name(token, "mix.f32")
            cleanup.callback(raw_path.unlink, missing_ok=True)
            mix = prepare_mix(info, raw_path, self.model.sample_rate, self.model.audio_channels)
            reader = MixReader(mix)
            cleanup.callback(reader.close)
            writer = StemWriter(out_dir, self.model.sources, mix.channels, token)
            cleanup.callback(writer.close)
            mean, std = mix.mean, mix.std
            for block in separate_stream(
                self.model, reader, shifts=self.shifts, overlap=self.overlap, rng=self.rng,
                bf16=self.bf16, denormalize=lambda block: block * std + mean,
                after_segment=after_segment,
            ):  # fmt: skip
                writer.append(block)
            stems = writer.finish(self.model.sample_rate, self.stem_format, check_abort)
        if progress is not None:
            progress(100.0)
        logger.info("separated %s (%.1f s of audio) into %d stems in %.1f s",
                    source.name, mix.frames / mix.sample_rate, len(stems),
                    time.monotonic() - started)
        return stems
