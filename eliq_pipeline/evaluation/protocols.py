"""Evaluation protocols of the ELIQ paper (section 4.1): label-free and weak-supervised.

Label-free: the critic's raw scores are correlated with MOS as they are.

Weak-supervised: a linear regressor on the frozen critic's outputs (the QQT scores, or any
per-image feature matrix) is fitted on a small labelled fraction of a benchmark (20% for AIGC
sets, 30% for UGC sets) and evaluated on the remaining images; repeated over seeded random
splits and summarised as mean and standard deviation per metric. Only the linear head is fitted:
nothing else sees the labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eliq_pipeline.evaluation.benchmarks import BenchmarkKind
from eliq_pipeline.evaluation.metrics import ArrayLike, correlation_report, krcc, plcc, plcc_logistic, srcc

# Labelled fraction per benchmark kind (paper 4.1).
TRAIN_FRACTION: dict[str, float] = {"aigc": 0.2, "ugc": 0.3}
DEFAULT_SPLITS = 10
DEFAULT_RIDGE = 1.0
PROTOCOL_METRICS = ("srcc", "plcc", "plcc_logistic", "krcc")
_METRIC_FNS = {"srcc": srcc, "plcc": plcc, "plcc_logistic": plcc_logistic, "krcc": krcc}
# Both sides of a split must be large enough to fit (train) and to correlate (test).
MIN_SIDE = 3


def train_fraction_for(kind: BenchmarkKind) -> float:
    try:
        return TRAIN_FRACTION[kind]
    except KeyError:
        raise ValueError(f"benchmark kind must be one of {sorted(TRAIN_FRACTION)}, got {kind!r}") from None


def split_indices(n: int, train_fraction: float, n_splits: int = DEFAULT_SPLITS,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """n_splits random (train, test) index partitions of range(n), sorted within each side.

    Split i draws from numpy's generator seeded with (seed, i), so any one split can be
    reproduced on its own and adding splits never changes the earlier ones. The train side has
    round(train_fraction * n) items.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    n_train = int(round(train_fraction * n))
    if n_train < MIN_SIDE or n - n_train < MIN_SIDE:
        raise ValueError(
            f"{n} item(s) at train fraction {train_fraction} give {n_train} train / {n - n_train} test; "
            f"each side needs at least {MIN_SIDE}"
        )
    splits = []
    for i in range(n_splits):
        order = np.random.default_rng([seed, i]).permutation(n)
        splits.append((np.sort(order[:n_train]), np.sort(order[n_train:])))
    return splits


@dataclass(frozen=True)
class LinearHead:
    """y = ((x - x_mean) / x_scale) @ weights + bias: a ridge regressor on standardised features."""

    weights: np.ndarray
    bias: float
    x_mean: np.ndarray
    x_scale: np.ndarray

    def predict(self, features: ArrayLike) -> np.ndarray:
        x = _as_matrix(features)
        return ((x - self.x_mean) / self.x_scale) @ self.weights + self.bias


def _as_matrix(features: ArrayLike | np.ndarray) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"features must be (n,) or (n, d), got shape {x.shape}")
    return x


def fit_linear_head(features: ArrayLike | np.ndarray, target: ArrayLike, ridge: float = DEFAULT_RIDGE) -> LinearHead:
    """Least squares with an L2 penalty `ridge` on the standardised weights (0 = plain least
    squares, minimum-norm when under-determined); the intercept is not penalised.

    Features are standardised on the training items so one penalty suits any feature scale; a
    constant feature gets unit scale (its weight is then irrelevant and shrinks to 0).
    """
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    x = _as_matrix(features)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature row(s) but {y.shape[0]} target value(s)")
    x_mean = x.mean(axis=0)
    x_scale = x.std(axis=0)
    x_scale = np.where(x_scale > 0, x_scale, 1.0)
    z = (x - x_mean) / x_scale
    y_mean = float(y.mean())
    # Solved through the SVD so p > n and ridge = 0 both work: w = V diag(s / (s^2 + ridge)) U^T y.
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(z.shape) * np.finfo(np.float64).eps
    shrink = np.zeros_like(s)
    shrink[keep] = s[keep] / (s[keep] ** 2 + ridge)
    weights = vt.T @ (shrink * (u.T @ (y - y_mean)))
    return LinearHead(weights, y_mean, x_mean, x_scale)


@dataclass(frozen=True)
class MetricSummary:
    mean: float
    std: float  # sample standard deviation over splits (0 for a single split)
    values: tuple[float, ...]


@dataclass(frozen=True)
class WeakSupervisedResult:
    n: int
    n_train: int
    n_test: int
    n_splits: int
    train_fraction: float
    seed: int
    ridge: float
    metrics: dict[str, MetricSummary]
    train_indices: tuple[np.ndarray, ...] = field(repr=False)

    def summary(self) -> dict[str, float | int]:
        """Flat dict: n, n_train, n_test, n_splits, train_fraction, <metric>_mean, <metric>_std."""
        out: dict[str, float | int] = {"n": self.n, "n_train": self.n_train, "n_test": self.n_test,
                                       "n_splits": self.n_splits, "train_fraction": self.train_fraction}
        for name, summary in self.metrics.items():
            out[f"{name}_mean"] = summary.mean
            out[f"{name}_std"] = summary.std
        return out

    def rows(self, benchmark: str, aspect: str, protocol: str = "weak-supervised") -> list[dict[str, Any]]:
        """Warehouse rows (evaluation.benchmark_rows' shape): per metric the mean as `value` and,
        as metric '<metric>_std', the spread over splits; n is the test-side size. ci_low/high
        are left empty: split-to-split spread is not a confidence interval."""
        rows: list[dict[str, Any]] = []
        for name, summary in self.metrics.items():
            for metric, value in ((name, summary.mean), (f"{name}_std", summary.std)):
                rows.append({"benchmark": benchmark, "protocol": protocol, "aspect": aspect, "metric": metric,
                             "value": float(value), "n": self.n_test, "ci_low": None, "ci_high": None})
        return rows


def weak_supervised(
    features: ArrayLike | np.ndarray,
    mos: ArrayLike,
    *,
    kind: BenchmarkKind | None = None,
    train_fraction: float | None = None,
    n_splits: int = DEFAULT_SPLITS,
    seed: int = 0,
    ridge: float = DEFAULT_RIDGE,
) -> WeakSupervisedResult:
    """The weak-supervised protocol: fit a linear head on train_fraction of the items (from the
    benchmark kind when not given: 20% AIGC, 30% UGC), report SRCC / PLCC / PLCC after the
    logistic fit / KRCC on the rest, over n_splits seeded splits (see split_indices)."""
    if (kind is None) == (train_fraction is None):
        raise ValueError("pass exactly one of kind (to use the paper's fraction) or train_fraction")
    fraction = train_fraction_for(kind) if kind is not None else float(train_fraction)  # type: ignore[arg-type]
    x = _as_matrix(features)
    y = np.asarray(mos, dtype=np.float64).reshape(-1)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"{x.shape[0]} feature row(s) but {y.shape[0]} MOS value(s)")
    for label, arr in (("features", x), ("mos", y)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{label} contains NaN/inf values")
    splits = split_indices(x.shape[0], fraction, n_splits, seed)
    values: dict[str, list[float]] = {name: [] for name in PROTOCOL_METRICS}
    for train, test in splits:
        head = fit_linear_head(x[train], y[train], ridge)
        pred = head.predict(x[test])
        for name in PROTOCOL_METRICS:
            values[name].append(_METRIC_FNS[name](pred, y[test]))
    metrics = {
        name: MetricSummary(
            mean=float(np.mean(v)),
            std=float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            values=tuple(float(a) for a in v),
        )
        for name, v in values.items()
    }
    n_train = int(splits[0][0].size)
    return WeakSupervisedResult(
        n=int(x.shape[0]), n_train=n_train, n_test=int(x.shape[0]) - n_train, n_splits=n_splits,
        train_fraction=fraction, seed=seed, ridge=ridge, metrics=metrics,
        train_indices=tuple(train for train, _ in splits),
    )


def label_free(pred: ArrayLike, mos: ArrayLike, n_boot: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """The label-free protocol: raw scores against MOS (metrics.correlation_report)."""
    return correlation_report(pred, mos, n_boot=n_boot, seed=seed)


def label_free_rows(benchmark: str, aspect: str, pred: ArrayLike, mos: ArrayLike, *,
                    protocol: str = "label-free", n_boot: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Warehouse rows for any label-free scorer (ELIQ or a classic baseline, told apart by
    `protocol`, e.g. "label-free/niqe"), bootstrap CIs where computed."""
    report = label_free(pred, mos, n_boot=n_boot, seed=seed)
    rows = []
    for metric in PROTOCOL_METRICS:
        low, high = report.get(f"{metric}_ci_low"), report.get(f"{metric}_ci_high")
        rows.append({"benchmark": benchmark, "protocol": protocol, "aspect": aspect, "metric": metric,
                     "value": float(report[metric]), "n": int(report["n"]),
                     "ci_low": _finite_or_none(low), "ci_high": _finite_or_none(high)})
    return rows


def _finite_or_none(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
