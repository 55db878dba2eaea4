import math

import numpy as np
import pytest
from scipy import stats

from eliq_pipeline.evaluation import metrics


def test_perfect_monotone_and_reversed():
    x = np.arange(10, dtype=float)
    y = x**3  # monotone but not linear
    assert metrics.srcc(x, y) == pytest.approx(1.0)
    assert metrics.krcc(x, y) == pytest.approx(1.0)
    assert metrics.srcc(x, -y) == pytest.approx(-1.0)
    assert metrics.krcc(x, -y) == pytest.approx(-1.0)
    assert metrics.plcc(x, 2 * x + 1) == pytest.approx(1.0)
    assert metrics.plcc(x, -x) == pytest.approx(-1.0)


def test_plcc_hand_example():
    # x = [1,2,3], y = [1,3,2]: centred x = [-1,0,1], y = [-1,1,0];
    # cov = 1, var_x = 2, var_y = 2 -> r = 1 / 2.
    assert metrics.plcc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    # Spearman on the same ranks equals Pearson on ranks = 0.5; Kendall: 2 concordant,
    # 1 discordant of 3 pairs -> 1/3.
    assert metrics.srcc([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert metrics.krcc([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_matches_scipy_on_random_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = 0.6 * x + rng.normal(size=200)
    assert metrics.srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert metrics.krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_plcc_logistic_recovers_sigmoidal_relation():
    rng = np.random.default_rng(1)
    x = rng.uniform(-10, 30, size=300)  # arbitrary raw scale
    mos = metrics.logistic4(x, 5.0, 1.0, 10.0, 4.0) + rng.normal(scale=0.05, size=300)
    raw = metrics.plcc(x, mos)
    fitted = metrics.plcc_logistic(x, mos)
    assert fitted > 0.99
    assert fitted > raw + 0.02
    params = metrics.fit_logistic4(x, mos)
    assert params is not None
    assert params[2] == pytest.approx(10.0, abs=0.5)  # centre, in raw units


def test_plcc_logistic_negative_relation_and_fallback():
    x = np.linspace(0, 1, 50)
    assert metrics.plcc_logistic(x, 5 - 3 * x) == pytest.approx(-1.0, abs=1e-3)
    # Constant predictions: the fit cannot run; falls back to raw PLCC, which is NaN.
    assert math.isnan(metrics.plcc_logistic(np.ones(5), np.arange(5.0)))


def test_constant_input_gives_nan_not_error():
    assert math.isnan(metrics.srcc([1, 1, 1, 1], [1, 2, 3, 4]))
    assert math.isnan(metrics.plcc([1, 2, 3, 4], [2, 2, 2, 2]))


@pytest.mark.parametrize(
    ("pred", "mos", "message"),
    [
        ([1, 2, 3], [1, 2], "length mismatch"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, float("nan"), 3, 4], [1, 2, 3, 4], "pred contains 1 NaN"),
        ([1, 2, 3, 4], [1, 2, float("inf"), 4], "mos contains 1 NaN/inf value(s) at index 2"),
    ],
)
def test_input_validation(pred, mos, message):
    for fn in (metrics.srcc, metrics.plcc, metrics.krcc, metrics.plcc_logistic):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            fn(pred, mos)


def test_bootstrap_ci_contains_point_estimate_and_is_reproducible():
    rng = np.random.default_rng(2)
    x = rng.normal(size=150)
    y = 0.7 * x + rng.normal(scale=0.7, size=150)
    low, high = metrics.bootstrap_ci(metrics.srcc, x, y, n_boot=300, seed=3)
    assert low < metrics.srcc(x, y) < high
    assert 0.0 < high - low < 0.4
    assert metrics.bootstrap_ci(metrics.srcc, x, y, n_boot=300, seed=3) == (low, high)
    assert metrics.bootstrap_ci(metrics.srcc, x, y, n_boot=300, seed=4) != (low, high)


def test_bootstrap_ci_perfect_correlation_is_degenerate_at_one():
    x = np.arange(20.0)
    low, high = metrics.bootstrap_ci(metrics.plcc, x, 2 * x, n_boot=50)
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)


def test_correlation_report_keys_and_values():
    rng = np.random.default_rng(5)
    x = rng.normal(size=80)
    y = x + rng.normal(scale=0.5, size=80)
    report = metrics.correlation_report(x, y, n_boot=100)
    assert report["n"] == 80
    assert set(report) == {
        "n",
        "srcc",
        "plcc",
        "plcc_logistic",
        "krcc",
        "srcc_ci_low",
        "srcc_ci_high",
        "plcc_ci_low",
        "plcc_ci_high",
    }
    assert report["srcc"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert report["srcc_ci_low"] < report["srcc"] < report["srcc_ci_high"]
    assert report["plcc_ci_low"] < report["plcc"] < report["plcc_ci_high"]
    no_ci = metrics.correlation_report(x, y, n_boot=0)
    assert math.isnan(no_ci["srcc_ci_low"]) and no_ci["srcc"] == report["srcc"]
