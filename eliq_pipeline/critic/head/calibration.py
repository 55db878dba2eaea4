"""Post-hoc calibration of raw scores to a MOS scale (paper 3.3.6)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LinearCalibration:
    """Monotonic linear map raw score -> MOS scale (paper 3.3.6): mos ~ slope * raw + intercept.

    Fitted by least squares with the slope constrained to slope >= floor > 0, floor being 1e-3 of
    the scale ratio std(mos)/std(raw). An unconstrained fit could flip the ranking when the small
    labelled split disagrees with the critic, and a slope of exactly 0 would collapse all scores
    to one value; the strictly positive floor keeps the map rank-preserving, which is what the
    paper promises for this post-hoc step. slope_at_floor records when the constraint was active.
    """

    slope: float
    intercept: float
    slope_at_floor: bool = False

    @classmethod
    def fit(
        cls, raw: Sequence[float] | np.ndarray, mos: Sequence[float] | np.ndarray
    ) -> LinearCalibration:
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        y = np.asarray(mos, dtype=np.float64).reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"length mismatch: raw has {x.size} values, mos has {y.size}")
        if x.size < 2:
            raise ValueError(f"need at least 2 labelled points to calibrate, got {x.size}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            raise ValueError("raw scores and MOS must be finite to calibrate")
        sx = x.std()
        if sx == 0.0:
            raise ValueError("raw scores are constant; a slope cannot be fitted")
        slope = float(np.mean((x - x.mean()) * (y - y.mean())) / sx**2)
        floor = max(1e-3 * float(y.std()) / float(sx), 1e-12)
        at_floor = slope < floor
        if at_floor:
            slope = floor
        # For a fixed slope the least-squares intercept is mean(y) - slope * mean(x).
        return cls(
            slope=slope, intercept=float(y.mean() - slope * x.mean()), slope_at_floor=bool(at_floor)
        )

    def __call__(self, raw: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.slope * np.asarray(raw, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearCalibration:
        slope = float(data["slope"])
        if not (slope > 0 and math.isfinite(slope)):
            raise ValueError(
                f"LinearCalibration slope must be a positive finite number, got {data['slope']!r}"
            )
        return cls(
            slope=slope,
            intercept=float(data["intercept"]),
            slope_at_floor=bool(data.get("slope_at_floor", False)),
        )
