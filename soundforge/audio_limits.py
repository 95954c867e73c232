"""Limits every input is held to before and while it is decoded (decode bombs): a sample rate
within 8-384 kHz, 1-8 channels, a maximum duration, and a budget for the decoded size estimated
from the header, checked before any scratch is written. The header is only a claim: decoders
count the frames they really produce against the same maximum, so a file that decodes to more
than its header said is stopped at the limit, and nothing is sized from the claim alone.

One `AudioLimits` is built from the settings at the edge (`from_settings`) and passed to
`soundforge.audio_io.probe`, which every decoder path (validation, separation, analysis, the
CLI) goes through.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from soundforge.errors import AudioError

if TYPE_CHECKING:
    from soundforge.settings import Settings

MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
DEFAULT_MAX_DURATION_S = 7200.0
DEFAULT_MAX_DECODED_BYTES = 4 << 30  # 2 h of 8-channel 44.1 kHz float32 is ~10 GiB: refused
DECODED_SAMPLE_BYTES = 4  # every decoder path produces float32


class AudioLimitError(AudioError):
    """The input's header asks for more than the limits allow (rate, channels, length, size)."""


class NonFiniteAudioError(AudioError):
    """The decoded samples hold NaN or infinity: no engine can use them."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: audio contains non-finite samples (NaN or infinity)")


@dataclass(frozen=True)
class AudioLimits:
    """What an input may ask a decoder for; the defaults are the settings' defaults."""

    max_duration_s: float = DEFAULT_MAX_DURATION_S
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES

    @classmethod
    def from_settings(cls, settings: Settings) -> AudioLimits:
        return cls(max_duration_s=settings.max_duration_s,
                   max_decoded_bytes=settings.max_decoded_bytes)  # fmt: skip

    @classmethod
    def configured(cls) -> AudioLimits:
        """The limits the settings give (`SOUNDFORGE_MAX_DURATION_S`,
        `SOUNDFORGE_MAX_DECODED_BYTES`); when neither is given, in the environment or the env
        file, the defaults without building the settings (see `soundforge.settings_source`)."""
        from soundforge.settings_source import any_given

        if not any_given(("max_duration_s", "max_decoded_bytes")):
            return cls()
        from soundforge.settings import load_settings

        return cls.from_settings(load_settings())

    def max_frames(self, sample_rate: int) -> int:
        """The most frames a stream at `sample_rate` may decode to."""
        return int(self.max_duration_s * sample_rate)

    def check_header(self, name: str, sample_rate: int, channels: int, frames: int) -> None:
        """Refuse a header whose rate, channel count or length is out of bounds, and one whose
        decoded size at its own rate exceeds the budget."""
        if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
            raise AudioLimitError(
                f"{name}: sample rate {sample_rate} Hz is outside the supported "
                f"{MIN_SAMPLE_RATE // 1000}-{MAX_SAMPLE_RATE // 1000} kHz"
            )
        if not 1 <= channels <= MAX_CHANNELS:
            raise AudioLimitError(
                f"{name}: {channels} channels; at most {MAX_CHANNELS} are supported"
            )
        if frames > self.max_frames(sample_rate):
            raise self.too_long(name, frames / sample_rate)
        self.check_budget(name, frames, sample_rate, sample_rate, channels)

    def check_budget(
        self, name: str, frames: int, sample_rate: int, target_rate: int, channels: int
    ) -> None:
        """Refuse when `frames` at `sample_rate`, decoded to `target_rate` with `channels`,
        would exceed the decoded-size budget (SOUNDFORGE_MAX_DECODED_BYTES)."""
        decoded = -(-frames * target_rate // sample_rate) * channels * DECODED_SAMPLE_BYTES
        if decoded > self.max_decoded_bytes:
            raise AudioLimitError(
                f"{name}: decodes to about {decoded / 2**20:.0f} MiB, over the "
                f"{self.max_decoded_bytes / 2**20:.0f} MiB budget "
                "(SOUNDFORGE_MAX_DECODED_BYTES)"
            )

    def too_long(self, name: str, duration_s: float) -> AudioLimitError:
        """The error for a stream of (at least) `duration_s` over the maximum."""
        return AudioLimitError(
            f"{name}: {duration_s:.0f} s of audio or more, longer than the "
            f"{self.max_duration_s:g} s maximum (SOUNDFORGE_MAX_DURATION_S)"
        )


DEFAULT_LIMITS = AudioLimits()
