"""The analysis result: one dataclass whose `to_dict()` is the `--json` output and the
`analysis_results.features` document, and whose `result_columns()` fills that table's columns.

Every number is a plain finite float (or None): a value that is not finite is a bug upstream, so
`sanitised()` replaces it with None and records a warning rather than emitting NaN into JSON or
PostgreSQL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

RESULT_COLUMNS = (
    "tempo", "key", "energy", "spectral_centroid", "spectral_rolloff", "zero_crossing_rate",
)  # fmt: skip


@dataclass(frozen=True)
class AnalysisReport:
    """Features of one file. Scalars are means over frames (n_fft 2048, hop 512 at 22.05 kHz);
    `sample_rate` is the file's own rate; `energy*` describe the frames' RMS."""

    duration: float  # seconds
    sample_rate: int
    tempo: float | None  # BPM, from the inter-beat intervals
    beats: list[float]  # beat times, seconds
    beat_count: int
    key: str | None  # like "F# minor"
    key_confidence: float | None
    energy: float
    energy_variance: float
    energy_max: float
    energy_min: float
    spectral_centroid: float  # Hz
    spectral_rolloff: float  # Hz (85 %)
    spectral_bandwidth: float  # Hz
    spectral_flatness: float
    spectral_contrast: list[float]  # 7 octave-band means, dB
    zero_crossing_rate: float
    mfcc: list[float]  # 13 means
    mfcc_variance: list[float]  # 13 variances
    chroma: list[float]  # 12 means, C..B (librosa's chroma_stft)
    tempo_confidence: float | None = None  # 0..1: how clear the pulse is (None: no tempo)
    key_chroma: list[float] = field(default_factory=list)  # 12, C..B: transcribed notes, sum 1
    tuning: float | None = None  # semitones from A440
    warnings: list[str] = field(default_factory=list)
    curves: dict[str, Any] = field(default_factory=dict)
    """Per-frame features downsampled to about two points a second, for pictures: `step_s`,
    `rms`, `centroid`, `rolloff` (one value a point), `chroma` (12 a point), `mfcc` (13)."""

    def to_dict(self) -> dict[str, Any]:
        """Every field by its name: the JSON report and the stored `features` document."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def result_columns(self) -> dict[str, Any]:
        """The six `analysis_results` column values, by column name."""
        return {name: getattr(self, name) for name in RESULT_COLUMNS}

    def sanitised(self) -> AnalysisReport:
        """A copy with every non-finite number replaced by None (lists: by 0.0), each noted in
        `warnings`."""
        changes: dict[str, Any] = {}
        notes: list[str] = []
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, float) and not math.isfinite(value):
                changes[item.name] = None
                notes.append(f"{item.name} was not finite and is left out")
            elif isinstance(value, list | dict) and _has_non_finite(value):
                changes[item.name] = _finite(value)
                notes.append(f"{item.name} held non-finite values, set to 0")
        if not changes:
            return self
        return replace(self, **changes, warnings=[*self.warnings, *notes])


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list):
        return any(_has_non_finite(entry) for entry in value)
    if isinstance(value, dict):
        return any(_has_non_finite(entry) for entry in value.values())
    return False


def _finite(value: Any) -> Any:
    """`value` with every non-finite float inside it (lists and dicts, nested) set to 0.0."""
    if isinstance(value, float):
        return value if math.isfinite(value) else 0.0
    if isinstance(value, list):
        return [_finite(entry) for entry in value]
    if isinstance(value, dict):
        return {key: _finite(entry) for key, entry in value.items()}
    return value
