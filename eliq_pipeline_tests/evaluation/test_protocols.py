import numpy as np
import pytest

from eliq_pipeline.evaluation.metrics import correlation_report
from eliq_pipeline.evaluation.protocols import (
    PROTOCOL_METRICS,
    TRAIN_FRACTION,
    fit_linear_head,
    label_free,
    label_free_rows,
    split_indices,
    train_fraction_for,
    weak_supervised,
)


def test_paper_fractions():
    assert TRAIN_FRACTION == {"aigc": 0.2, "ugc": 0.3}
    assert train_fraction_for("aigc") == 0.2 and train_fraction_for("ugc") == 0.3
    with pytest.raises(ValueError, match="kind"):
        train_fraction_for("video")  # type: ignore[arg-type]


def test_split_indices_honour_fraction_and_seed():
    splits = split_indices(100, 0.2, n_splits=10, seed=7)
    assert len(splits) == 10
    for train, test in splits:
        assert train.size == 20 and test.size == 80
        assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert len({tuple(train) for train, _ in splits}) == 10  # splits differ from each other
    again = split_indices(100, 0.2, n_splits=3, seed=7)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(again, splits))  # prefix-stable
    other = split_indices(100, 0.2, n_splits=3, seed=8)
    assert not np.array_equal(other[0][0], splits[0][0])
    assert split_indices(10, 0.3, n_splits=1)[0][0].size == 3
    with pytest.raises(ValueError, match="each side needs at least 3"):
        split_indices(10, 0.2)
    with pytest.raises(ValueError, match="train_fraction"):
        split_indices(10, 1.0)


def test_linear_head_recovers_exact_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3)) * [1.0, 100.0, 0.01]
    y = x @ np.array([2.0, -0.03, 50.0]) + 4.0
    head = fit_linear_head(x, y, ridge=0.0)
    assert np.allclose(head.predict(x), y)
    # The ridge shrinks weights on standardised features, so the fit degrades gracefully.
    shrunk = fit_linear_head(x, y, ridge=10.0)
    assert np.corrcoef(shrunk.predict(x), y)[0, 1] > 0.999
    assert np.linalg.norm(shrunk.weights) < np.linalg.norm(head.weights)
    # More features than samples and a constant column still give a finite fit.
    wide = fit_linear_head(np.c_[rng.normal(size=(5, 20)), np.ones(5)], np.arange(5.0), ridge=0.0)
    assert np.all(np.isfinite(wide.weights)) and wide.weights[-1] == 0.0


def test_perfectly_linear_feature_scores_one():
    rng = np.random.default_rng(1)
    mos = rng.uniform(1, 5, size=300)
    result = weak_supervised(3.0 * mos - 2.0, mos, kind="aigc", n_splits=5, seed=3)
    for name in PROTOCOL_METRICS:
        assert result.metrics[name].mean == pytest.approx(1.0, abs=1e-9)
        assert result.metrics[name].std == pytest.approx(0.0, abs=1e-9)
        assert len(result.metrics[name].values) == 5
    assert (result.n, result.n_train, result.n_test) == (300, 60, 240)
    assert result.train_fraction == 0.2 and result.n_splits == 5


def test_weak_supervised_uses_kind_fraction_and_seeds():
    rng = np.random.default_rng(2)
    n = 200
    mos = rng.normal(size=n)
    features = np.c_[mos + rng.normal(scale=0.5, size=n), rng.normal(size=n)]  # [s_vis, noise]
    ugc = weak_supervised(features, mos, kind="ugc", seed=11)
    assert ugc.n_train == 60 and ugc.n_splits == 10
    expected = split_indices(n, 0.3, 10, seed=11)
    assert all(np.array_equal(a, b[0]) for a, b in zip(ugc.train_indices, expected))
    assert 0.7 < ugc.metrics["srcc"].mean < 0.95 and ugc.metrics["srcc"].std > 0
    # Same seed, same numbers; another seed, other splits.
    again = weak_supervised(features, mos, kind="ugc", seed=11)
    assert again.metrics["plcc"].values == ugc.metrics["plcc"].values
    other = weak_supervised(features, mos, kind="ugc", seed=12)
    assert other.metrics["plcc"].values != ugc.metrics["plcc"].values
    explicit = weak_supervised(features, mos, train_fraction=0.5, n_splits=2)
    assert explicit.n_train == 100 and explicit.n_test == 100
    # The mean and std are over the per-split values.
    values = np.array(ugc.metrics["krcc"].values)
    assert ugc.metrics["krcc"].mean == pytest.approx(values.mean())
    assert ugc.metrics["krcc"].std == pytest.approx(values.std(ddof=1))
    summary = ugc.summary()
    assert summary["n_test"] == 140 and summary["srcc_mean"] == ugc.metrics["srcc"].mean


def test_weak_supervised_only_sees_train_labels():
    """Labels of test items must not influence the head: changing them leaves predictions alone,
    so the test-side metric moves only through the changed targets themselves."""
    rng = np.random.default_rng(4)
    n = 100
    mos = rng.normal(size=n)
    features = mos[:, None] + rng.normal(scale=0.3, size=(n, 1))
    train = split_indices(n, 0.2, 1, seed=0)[0][0]
    head = fit_linear_head(features[train], mos[train])
    tampered = mos.copy()
    tampered[np.setdiff1d(np.arange(n), train)] *= -1.0
    result = weak_supervised(features, tampered, train_fraction=0.2, n_splits=1, seed=0)
    test = np.setdiff1d(np.arange(n), train)
    expected = correlation_report(head.predict(features[test]), tampered[test], n_boot=0)["srcc"]
    assert result.metrics["srcc"].mean == pytest.approx(expected)
    assert result.metrics["srcc"].mean < 0  # the head was fitted on the untampered train side


def test_weak_supervised_rows_and_validation():
    mos = np.linspace(0, 1, 40)
    result = weak_supervised(np.c_[mos, mos**2], mos, kind="aigc", n_splits=3)
    rows = result.rows("agiqa-3k", "visual")
    assert {r["metric"] for r in rows} == set(PROTOCOL_METRICS) | {f"{m}_std" for m in PROTOCOL_METRICS}
    assert all(r["protocol"] == "weak-supervised" and r["n"] == 32 and r["ci_low"] is None for r in rows)
    with pytest.raises(ValueError, match="exactly one"):
        weak_supervised(mos, mos)
    with pytest.raises(ValueError, match="exactly one"):
        weak_supervised(mos, mos, kind="aigc", train_fraction=0.2)
    with pytest.raises(ValueError, match="NaN"):
        weak_supervised(np.r_[mos[:-1], np.nan], mos, kind="aigc")
    with pytest.raises(ValueError, match="40 feature row"):
        weak_supervised(mos, mos[:-1], kind="aigc")


def test_label_free_helpers():
    rng = np.random.default_rng(5)
    mos = rng.normal(size=60)
    pred = -mos + rng.normal(scale=0.2, size=60)  # a backwards critic stays negative
    report = label_free(pred, mos, n_boot=50)
    assert report == correlation_report(pred, mos, n_boot=50)
    rows = label_free_rows("spaq", "visual", pred, mos, protocol="label-free/niqe", n_boot=50)
    assert [r["metric"] for r in rows] == list(PROTOCOL_METRICS)
    srcc_row = rows[0]
    assert srcc_row["value"] < -0.9 and srcc_row["protocol"] == "label-free/niqe" and srcc_row["n"] == 60
    assert srcc_row["ci_low"] <= srcc_row["value"] <= srcc_row["ci_high"]
    assert rows[1]["ci_low"] is not None and rows[2]["ci_low"] is None  # CIs for srcc/plcc only
