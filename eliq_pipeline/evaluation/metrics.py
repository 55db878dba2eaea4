"""Correlation metrics between predicted scores and mean opinion scores (MOS).

SRCC / KRCC measure monotonic agreement, PLCC linear agreement. IQA papers (the ELIQ paper
included) usually report PLCC after fitting the standard 4-parameter logistic (VQEG) from
predictions to MOS, because a critic's raw scale need not be linear in MOS; we report both.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import optimize, stats

ArrayLike = Sequence[float] | np.ndarray
MetricFn = Callable[[np.ndarray, np.ndarray], float]

MIN_POINTS = 3


def _validate(pred: ArrayLike, mos: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return both inputs as 1-D float64 arrays, or raise ValueError saying what is wrong."""
    p = np.asarray(pred, dtype=np.float64).reshape(-1) if np.ndim(pred) <= 1 else None
    m = np.asarray(mos, dtype=np.float64).reshape(-1) if np.ndim(mos) <= 1 else None
    if p is None or m is None:
        raise ValueError(f"pred and mos must be 1-D; got shapes {np.shape(pred)} and {np.shape(mos)}")
    if p.shape[0] != m.shape[0]:
        raise ValueError(f"length mismatch: pred has {p.shape[0]} values, mos has {m.shape[0]}")
    if p.shape[0] < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} points to correlate, got {p.shape[0]}")
    for label, arr in (("pred", p), ("mos", m)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            shown = ", ".join(str(i) for i in bad[:5])
            more = f" (and {bad.size - 5} more)" if bad.size > 5 else ""
            raise ValueError(f"{label} contains {bad.size} NaN/inf value(s) at index {shown}{more}")
    return p, m


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


def _safe(value: float) -> float:
    return float(value) if math.isfinite(value) else float("nan")


def srcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Spearman rank correlation. NaN (not an exception) when either side is constant,
    since a collapsed critic is a legitimate, reportable outcome."""
    p, m = _validate(pred, mos)
    if _is_constant(p) or _is_constant(m):
        return float("nan")
    return _safe(stats.spearmanr(p, m).statistic)


def plcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Pearson linear correlation on raw predictions. NaN when either side is constant."""
    p, m = _validate(pred, mos)
    if _is_constant(p) or _is_constant(m):
        return float("nan")
    return _safe(stats.pearsonr(p, m).statistic)


def krcc(pred: ArrayLike, mos: ArrayLike) -> float:
    """Kendall rank correlation (tau-b, which handles ties). NaN when either side is constant."""
    p, m = _validate(pred, mos)
    if _is_constant(p) or _is_constant(m):
        return float("nan")
    return _safe(stats.kendalltau(p, m).statistic)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic: b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500.0, 500.0)  # keep exp finite
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def fit_logistic4(pred: ArrayLike, mos: ArrayLike) -> np.ndarray | None:
    """Fit logistic4 from pred to mos; returns the parameters, or None if the fit fails.

    Predictions are z-scored before fitting (an affine change the logistic family absorbs) so
    the same initial guess works whatever the critic's raw scale. Init: asymptotes at the MOS
    extremes, ordered by the sign of the raw correlation, centre at the mean, slope of 1 std.
    """
    p, m = _validate(pred, mos)
    if _is_constant(p) or _is_constant(m):
        return None
    mu, sd = p.mean(), p.std()
    x = (p - mu) / sd
    sign = 1.0 if np.corrcoef(x, m)[0, 1] >= 0 else -1.0
    hi, lo = float(m.max()), float(m.min())
    p0 = [hi, lo, 0.0, 1.0] if sign > 0 else [lo, hi, 0.0, 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # OptimizeWarning / overflow: judged by the result
            params, _ = optimize.curve_fit(logistic4, x, m, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning):
        return None
    if not np.all(np.isfinite(params)):
        return None
    # Express the centre and slope back in raw prediction units.
    return np.array([params[0], params[1], params[2] * sd + mu, abs(params[3]) * sd])


def plcc_logistic(pred: ArrayLike, mos: ArrayLike) -> float:
    """PLCC between MOS and the 4-parameter logistic fitted from predictions to MOS.

    The sign follows the fitted curve's direction (negative when the curve decreases in pred), so
    a critic that ranks backwards shows up as negative here just as it does in SRCC; the usual
    unsigned corr(fitted, mos) would hide that. Falls back to raw PLCC when the fit fails or
    degenerates (non-finite parameters, or a constant fitted curve): a failed nonlinear fit must
    not turn a usable report into an error, and raw PLCC is the closest well-defined quantity.
    """
    p, m = _validate(pred, mos)
    params = fit_logistic4(p, m)
    if params is None:
        return plcc(p, m)
    fitted = logistic4(p, *params)
    if not np.all(np.isfinite(fitted)) or _is_constant(fitted) or np.ptp(fitted) < 1e-12:
        return plcc(p, m)
    direction = 1.0 if params[0] >= params[1] else -1.0  # b1 > b2: increasing curve
    return _safe(direction * stats.pearsonr(fitted, m).statistic)


def bootstrap_ci(
    metric_fn: MetricFn,
    pred: ArrayLike,
    mos: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) confidence interval of metric_fn(pred, mos).

    Resamples (pred, mos) pairs with replacement using a seeded generator, so the interval is
    reproducible. Resamples where the metric is undefined (e.g. all-tied) are dropped; if none
    remain the interval is (nan, nan).
    """
    p, m = _validate(pred, mos)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    rng = np.random.default_rng(seed)
    n = p.shape[0]
    values = np.empty(n_boot, dtype=np.float64)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        values[b] = metric_fn(p[idx], m[idx])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def correlation_report(
    pred: ArrayLike,
    mos: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float | int]:
    """All correlations for one (prediction, MOS) set, flat so it drops into a table row.

    Keys: n, srcc, plcc, plcc_logistic, krcc, srcc_ci_low/high, plcc_ci_low/high. With
    n_boot=0 the CI values are NaN (skips the resampling cost when only point values matter).
    """
    p, m = _validate(pred, mos)
    report: dict[str, float | int] = {
        "n": int(p.shape[0]),
        "srcc": srcc(p, m),
        "plcc": plcc(p, m),
        "plcc_logistic": plcc_logistic(p, m),
        "krcc": krcc(p, m),
    }
    for name, fn in (("srcc", srcc), ("plcc", plcc)):
        if n_boot > 0:
            low, high = bootstrap_ci(fn, p, m, n_boot=n_boot, seed=seed, alpha=alpha)
        else:
            low, high = float("nan"), float("nan")
        report[f"{name}_ci_low"] = low
        report[f"{name}_ci_high"] = high
    return report
