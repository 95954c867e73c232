"""The analysis as pictures, drawn here as SVG markup (no script, so the page's CSP holds):
the chroma heat map over time, the beat grid, the energy curve, the spectral centroid and
rolloff curves and the MFCC heat map. They read the downsampled per-frame curves the analysis
keeps in `features["curves"]` (about two points a second); a report without curves still
gets its beat grid and bar charts of the mean chroma and MFCCs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from soundforge.keys import PITCHES

WIDTH = 720
HEIGHT = 120


def _colour(value: float) -> str:
    """A dark-blue -> orange -> yellow ramp for a value in 0..1."""
    v = min(max(value, 0.0), 1.0)
    red = int(255 * min(1.0, v * 1.6))
    green = int(220 * max(0.0, v - 0.35) / 0.65)
    blue = int(110 * (1.0 - v))
    return f"#{red:02x}{green:02x}{blue:02x}"


def _svg(body: str, height: int = HEIGHT, label: str = "") -> str:
    return (f'<svg class="picture" viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" '
            f'height="{height}" role="img" aria-label="{label}" '
            f'xmlns="http://www.w3.org/2000/svg">{body}</svg>')  # fmt: skip


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) if isinstance(v, int | float) else 0.0 for v in values]


def heat_map(rows_over_time: Sequence[Sequence[Any]], label: str,
             row_names: Sequence[str] = ()) -> str:  # fmt: skip
    """Frames (time) across, one band per coefficient, each cell scaled to the band's range."""
    frames = [_finite(frame) for frame in rows_over_time]
    if not frames or not frames[0]:
        return ""
    bands = len(frames[0])
    low = min(min(frame) for frame in frames)
    high = max(max(frame) for frame in frames)
    span = (high - low) or 1.0
    cell_w = WIDTH / len(frames)
    cell_h = HEIGHT / bands
    cells = []
    for x, frame in enumerate(frames):
        for band, value in enumerate(frame[:bands]):
            y = HEIGHT - (band + 1) * cell_h
            fill = _colour((value - low) / span)
            cells.append(f'<rect x="{x * cell_w:.2f}" y="{y:.2f}" width="{cell_w + 0.3:.2f}" '
                         f'height="{cell_h:.2f}" fill="{fill}"/>')  # fmt: skip
    names = "".join(
        f'<text x="2" y="{HEIGHT - band * cell_h - 2:.1f}" class="axis">{name}</text>'
        for band, name in enumerate(row_names)
    )
    return _svg("".join(cells) + names, label=label)


def bars(values: Sequence[Any], label: str, names: Sequence[str] = ()) -> str:
    """One bar per value (e.g. the 12 mean chroma levels), scaled to the largest magnitude."""
    numbers = _finite(values)
    if not numbers:
        return ""
    top = max(abs(v) for v in numbers) or 1.0
    width = WIDTH / len(numbers)
    middle = HEIGHT / 2 if min(numbers) < 0 else HEIGHT - 14
    parts = []
    for index, value in enumerate(numbers):
        size = abs(value) / top * (middle - 2)
        y = middle - size if value >= 0 else middle
        parts.append(f'<rect x="{index * width + 2:.1f}" y="{y:.1f}" width="{width - 4:.1f}" '
                     f'height="{size:.1f}" class="bar"/>')  # fmt: skip
        if index < len(names):
            parts.append(f'<text x="{index * width + width / 2:.1f}" y="{HEIGHT - 2}" '
                         f'class="axis" text-anchor="middle">{names[index]}</text>')  # fmt: skip
    return _svg("".join(parts), label=label)


def curves(series: dict[str, Sequence[Any]], duration_s: float, label: str) -> str:
    """Lines over time, each scaled to its own range (centroid and rolloff share one)."""
    lines = []
    present = {name: _finite(values) for name, values in series.items() if values}
    if not present or duration_s <= 0:
        return ""
    high = max(max(values) for values in present.values()) or 1.0
    for index, (name, values) in enumerate(present.items()):
        step = WIDTH / max(1, len(values) - 1)
        points = " ".join(f"{i * step:.1f},{HEIGHT - 4 - v / high * (HEIGHT - 8):.1f}"
                          for i, v in enumerate(values))  # fmt: skip
        lines.append(f'<polyline points="{points}" class="line line{index}"/>'
                     f'<text x="{WIDTH - 4}" y="{14 + 14 * index}" class="axis legend{index}" '
                     f'text-anchor="end">{name}</text>')  # fmt: skip
    return _svg("".join(lines), label=label)


def beat_grid(beats: Sequence[Any], duration_s: float) -> str:
    """A tick per beat over the track's length, every fourth one taller."""
    times = _finite(beats)
    if not times or duration_s <= 0:
        return ""
    height = 40
    ticks = []
    for index, at in enumerate(times):
        x = at / duration_s * WIDTH
        top = 4 if index % 4 == 0 else 16
        ticks.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - 4}" '
                     f'class="beat"/>')  # fmt: skip
    return _svg("".join(ticks), height=height, label="beat grid")


def analysis_pictures(features: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(title, SVG markup) for each picture the stored features allow."""
    if not features:
        return []
    duration = float(features.get("duration") or 0.0)
    found: dict[str, Any] = features.get("curves") or {}
    pictures = []
    if found.get("chroma"):
        pictures.append(("Chroma over time", heat_map(found["chroma"], "chroma", PITCHES)))
    elif features.get("chroma"):
        pictures.append(("Chroma (mean)", bars(features["chroma"], "mean chroma", PITCHES)))
    if features.get("beats"):
        pictures.append(("Beat grid", beat_grid(features["beats"], duration)))
    if found.get("rms"):
        pictures.append(("Energy (RMS) over time", curves({"rms": found["rms"]}, duration,
                                                          "energy")))  # fmt: skip
    if found.get("centroid") or found.get("rolloff"):
        pictures.append(("Spectral centroid and rolloff", curves(
            {"centroid": found.get("centroid") or [], "rolloff": found.get("rolloff") or []},
            duration, "spectral centroid and rolloff")))  # fmt: skip
    if found.get("mfcc"):
        pictures.append(("MFCC over time", heat_map(found["mfcc"], "mfcc")))
    elif features.get("mfcc"):
        pictures.append(("MFCC (mean)", bars(features["mfcc"], "mean mfcc",
                                             [str(i) for i in range(1, 14)])))  # fmt: skip
    return [(title, svg) for title, svg in pictures if svg]
