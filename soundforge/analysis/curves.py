"""Per-frame features downsampled to about two points per second, for plots (the dashboard):
energy, spectral centroid and roll-off, chroma and MFCCs, each the mean over consecutive frames.
With the beat times already in the report, that is what a page needs to draw a track's
analysis without the per-frame arrays (an hour of audio: about 7,000 points per curve).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FRAMES_PER_POINT = 22  # 22 x 512 / 22050 = 0.51 s


def _points(values: npt.NDArray[np.floating], decimals: int) -> list[Any]:
    """Means of every `FRAMES_PER_POINT` rows (the last group may be shorter), rounded."""
    if values.shape[0] == 0:
        return []
    starts = np.arange(0, values.shape[0], FRAMES_PER_POINT)
    sums = np.add.reduceat(values.astype(np.float64), starts, axis=0)
    sizes = np.diff(np.append(starts, values.shape[0]))
    means = sums / (sizes if values.ndim == 1 else sizes[:, None])
    rounded: list[Any] = np.round(means, decimals).tolist()
    return rounded


def feature_curves(frame_seconds: float, curves: dict[str, npt.NDArray[np.floating]],
                   decimals: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """{"hop_s": seconds per point, name: points...}; 2-D inputs give a list per point."""
    document: dict[str, Any] = {"hop_s": round(FRAMES_PER_POINT * frame_seconds, 6)}
    for name, values in curves.items():
        document[name] = _points(values, decimals.get(name, 4))
    return document
