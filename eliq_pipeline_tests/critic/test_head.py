import json

import numpy as np
import pytest
import torch

from eliq_pipeline.critic.head.calibration import LinearCalibration
from eliq_pipeline.critic.head.checkpoints import load_scoring_head, save_scoring_head
from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.losses import alignment_ranking_loss, visual_ranking_loss
from eliq_pipeline.critic.head.modules import (
    ELIQScoringHead, GatedFusion, QualityQueryTransformer, score_embeddings,
)
from eliq_pipeline.critic.head.ranking import ranking_accuracies, TupleEmbeddings
from eliq_pipeline.critic.head.training import train_scoring_head

H = 16


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(**overrides) -> ScorerConfig:
    base = dict(
        hidden_size=H, d_model=32, depth=1, heads=2, ff_dim=64, dropout=0.0,
        lr=3e-3, epochs=12, batch_size=32, patience=6, margin=0.5,
    )  # fmt: skip
    base.update(overrides)
    return ScorerConfig(**base)


def synthetic_tuples(n: int, seed: int, directions: np.ndarray, noise: float = 0.3) -> TupleEmbeddings:
    """Positives and negatives differ along one fixed direction per aspect, plus noise; the
    non-primary aspect of a visual negative is the positive's plus noise (not degraded)."""
    rng = np.random.default_rng(seed)
    d_tec, d_aes, d_ali = directions

    def jitter(x: np.ndarray) -> np.ndarray:
        return x + noise * rng.normal(size=x.shape)

    base_tec, base_aes, base_ali = (rng.normal(size=(n, H)) for _ in range(3))
    pos_tec, pos_aes, pos_ali = base_tec + d_tec, base_aes + d_aes, base_ali + d_ali
    return TupleEmbeddings(
        pos_tec=pos_tec,
        pos_aes=pos_aes,
        pos_ali=pos_ali,
        tecneg_tec=jitter(base_tec - d_tec),
        tecneg_aes=jitter(pos_aes),
        aesneg_tec=jitter(pos_tec),
        aesneg_aes=jitter(base_aes - d_aes),
        neg_ali=jitter(base_ali - d_ali),
    )


def synthetic_splits() -> tuple[TupleEmbeddings, TupleEmbeddings]:
    """256 train and 128 held-out tuples along the same three directions."""
    rng = np.random.default_rng(123)
    directions = rng.normal(size=(3, H))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return synthetic_tuples(256, 1, directions), synthetic_tuples(128, 2, directions)


@pytest.fixture(scope="module")
def data():
    return synthetic_splits()


@pytest.fixture(scope="module")
def trained(data):
    train, heldout = data
    return train_scoring_head(train, heldout, tiny_cfg())


# ------------------------------------------------------------------------- config


def test_config_round_trip_and_validation():
    cfg = tiny_cfg(visual_loss="hardest", max_steps=10, patience=None)
    assert ScorerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        ScorerConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="visual_representation"):
        tiny_cfg(visual_representation="concat")
    with pytest.raises(ValueError, match="divisible"):
        tiny_cfg(d_model=30, heads=4)


# ------------------------------------------------------------------------- modules


def test_gated_fusion_matches_equations():
    torch.manual_seed(0)
    fusion = GatedFusion(4)
    z_tec, z_aes = torch.randn(5, 4), torch.randn(5, 4)
    both = torch.cat([z_tec, z_aes], -1)
    g_tec = torch.sigmoid(both @ fusion.w_tec.weight.T + fusion.w_tec.bias)
    g_aes = torch.sigmoid(both @ fusion.w_aes.weight.T + fusion.w_aes.bias)
    expected = fusion.phi(torch.cat([z_tec * g_tec, z_aes * g_aes], -1))
    out = fusion(z_tec, z_aes)
    assert out.shape == (5, 4)
    torch.testing.assert_close(out, expected)


def test_qqt_shapes_and_tokens():
    torch.manual_seed(0)
    qqt = QualityQueryTransformer(h=4, d_model=8, depth=2, heads=2, ff_dim=16, dropout=0.0)
    assert qqt.q_vis.shape == (8,) and qqt.q_ali.shape == (8,) and qqt.pos.shape == (3, 8)
    s_vis, s_ali = qqt(torch.randn(6, 8))
    assert s_vis.shape == (6,) and s_ali.shape == (6,)


def test_head_rejects_wrong_hidden_size():
    model = ELIQScoringHead(tiny_cfg())
    with pytest.raises(ValueError, match=r"z_aes must have shape \[batch, 16\]"):
        model(torch.randn(2, H), torch.randn(2, H + 1), torch.randn(2, H))


@pytest.mark.parametrize("head", ["qqt", "mlp"])
def test_eval_scores_are_batch_size_independent(head):
    torch.manual_seed(0)
    model = ELIQScoringHead(tiny_cfg(head=head, depth=2, dropout=0.1))
    z = [torch.randn(7, H) * 3 for _ in range(3)]
    ref_vis, ref_ali = score_embeddings(model, *z, batch_size=7)
    for bs in (1, 3, 7):
        vis, ali = score_embeddings(model, *z, batch_size=bs)
        np.testing.assert_allclose(vis, ref_vis, atol=1e-6, rtol=0)
        np.testing.assert_allclose(ali, ref_ali, atol=1e-6, rtol=0)
    assert model.training  # score_embeddings restores the caller's mode
    # Repeated calls (dropout configured, but eval mode) are identical.
    again = score_embeddings(model, *z, batch_size=3)
    np.testing.assert_array_equal(again[0], score_embeddings(model, *z, batch_size=3)[0])


# ------------------------------------------------------------------------- losses


def test_visual_ranking_loss_hand_computed():
    s_pos = torch.tensor([1.0, 0.0, 2.0])
    s_tec = torch.tensor([0.0, 0.5, 2.5])
    s_aes = torch.tensor([0.8, -1.0, 1.0])
    # margin 0.5 hinges: tec: [0, 1.0, 1.0]; aes: [0.3, 0, 0]
    pairwise = visual_ranking_loss(s_pos, s_tec, s_aes, margin=0.5)
    assert pairwise.item() == pytest.approx((0.0 + 0.3 + 1.0 + 0.0 + 1.0 + 0.0) / 3)
    # hardest negative: max(tec, aes) = [0.8, 0.5, 2.5] -> hinges [0.3, 1.0, 1.0]
    hardest = visual_ranking_loss(s_pos, s_tec, s_aes, margin=0.5, mode="hardest")
    assert hardest.item() == pytest.approx((0.3 + 1.0 + 1.0) / 3)
    with pytest.raises(ValueError, match="visual loss mode"):
        visual_ranking_loss(s_pos, s_tec, s_aes, 0.5, mode="mean")


def test_alignment_ranking_loss_hand_computed():
    loss = alignment_ranking_loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.25]), margin=1.0)
    # hinges: max(0, 1 - 2 + 1) = 0; max(0, 1 - 0 + 0.25) = 1.25
    assert loss.item() == pytest.approx(0.625)


# ------------------------------------------------------------------------- tuples


def test_tuple_embeddings_validation_and_subset(data):
    train, _ = data
    assert len(train) == 256 and train.hidden_size == H
    assert train.tecneg_ali is None and train.tecneg_ali_or_pos is train.pos_ali
    sub = train.subset([3, 1])
    torch.testing.assert_close(sub.pos_tec[0], train.pos_tec[3])
    names = ["pos_tec", "pos_aes", "pos_ali", "tecneg_tec", "tecneg_aes"]
    names += ["aesneg_tec", "aesneg_aes", "neg_ali"]
    fields = {k: np.zeros((4, H)) for k in names}
    with pytest.raises(ValueError, match="neg_ali has shape"):
        TupleEmbeddings(**{**fields, "neg_ali": np.zeros((3, H))})
    with pytest.raises(ValueError, match="NaN"):
        TupleEmbeddings(**{**fields, "pos_aes": np.full((4, H), np.nan)})
    explicit = TupleEmbeddings(**fields, tecneg_ali=np.ones((4, H)))
    assert explicit.tecneg_ali_or_pos is explicit.tecneg_ali


# ------------------------------------------------------------------------- training


def test_training_learns_synthetic_directions(data, trained):
    _, heldout = data
    acc = trained.heldout_accuracies
    assert acc["vis_vs_tec"] > 0.9 and acc["vis_vs_aes"] > 0.9 and acc["ali"] > 0.9, acc
    assert ranking_accuracies(trained.model, heldout) == acc  # the kept model is the best epoch
    assert trained.loss_history[-1] < trained.loss_history[0]
    assert 1 <= trained.best_epoch <= len(trained.history)
    assert not trained.model.training


def test_untrained_model_is_near_chance(data):
    _, heldout = data
    torch.manual_seed(0)
    acc = ranking_accuracies(ELIQScoringHead(tiny_cfg()), heldout)
    assert acc["mean"] < 0.8


def test_training_is_deterministic_and_respects_max_steps(data):
    train, heldout = data
    cfg = tiny_cfg(max_steps=5, epochs=10)
    messages: list[str] = []
    first = train_scoring_head(train, heldout, cfg, log=messages.append)
    second = train_scoring_head(train, heldout, cfg)
    assert first.steps == 5 and len(first.history) == 1  # 8 steps/epoch, so epoch 1 is cut short
    assert first.history == second.history
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(value, second.model.state_dict()[key], rtol=0, atol=0)
    assert messages and messages[0].startswith("epoch 1:")


def test_early_stopping_keeps_best_epoch(data):
    train, heldout = data
    # A learning rate of 0 never improves after epoch 1, so patience 2 stops at epoch 3.
    result = train_scoring_head(train, heldout, tiny_cfg(lr=1e-12, epochs=20, patience=2))
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_training_rejects_mismatched_hidden_size(data):
    train, heldout = data
    with pytest.raises(ValueError, match="hidden size 16, config expects 32"):
        train_scoring_head(train, heldout, tiny_cfg(hidden_size=32))


@pytest.mark.parametrize(
    "overrides",
    [
        {"visual_representation": "tec_only"},
        {"visual_representation": "aes_only"},
        {"head": "mlp"},
        {"visual_loss": "hardest"},
        {"input_norm": False},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_ablations_build_and_train(data, overrides):
    train, heldout = data
    result = train_scoring_head(
        train.subset(range(64)), heldout.subset(range(32)), tiny_cfg(epochs=3, **overrides)
    )
    assert len(result.history) == 3
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    vis, ali = score_embeddings(
        result.model, heldout.pos_tec[:4], heldout.pos_aes[:4], heldout.pos_ali[:4]
    )
    assert vis.shape == (4,) and np.all(np.isfinite(vis)) and np.all(np.isfinite(ali))


# ------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_gives_identical_scores(tmp_path, data, trained):
    _, heldout = data
    out = save_scoring_head(trained.model, trained.config, tmp_path / "qqt")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded, cfg = load_scoring_head(out, expected_hidden_size=H)
    assert cfg == trained.config and not loaded.training
    z = (heldout.pos_tec, heldout.pos_aes, heldout.pos_ali)
    before, after = score_embeddings(trained.model, *z), score_embeddings(loaded, *z)
    np.testing.assert_array_equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    again = ELIQScoringHead.from_pretrained(out)
    np.testing.assert_array_equal(score_embeddings(again, *z)[0], before[0])


def test_load_refuses_other_hidden_size_and_bad_dirs(tmp_path):
    model = ELIQScoringHead(tiny_cfg())
    model.save_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match="hidden size 16, but the backbone gives 4096"):
        load_scoring_head(tmp_path / "ok", expected_hidden_size=4096)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_scoring_head(tmp_path / "missing")
    # Weights that do not match the config are refused with a clear message.
    other = ELIQScoringHead(tiny_cfg(head="mlp"))
    save_scoring_head(other, None, tmp_path / "other")
    (tmp_path / "ok" / "model.safetensors").write_bytes(
        (tmp_path / "other" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="does not match its config"):
        load_scoring_head(tmp_path / "ok")
    # No temp files are left behind by the atomic writes.
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["config.json", "model.safetensors"]


# ------------------------------------------------------------------------- calibration


def test_linear_calibration_fit_and_round_trip():
    raw = np.array([-1.0, 0.0, 1.0, 2.0])
    mos = 2.0 * raw + 3.0
    cal = LinearCalibration.fit(raw, mos)
    assert (
        cal.slope == pytest.approx(2.0)
        and cal.intercept == pytest.approx(3.0)
        and not cal.slope_at_floor
    )
    np.testing.assert_allclose(cal([0.5]), [4.0])
    assert LinearCalibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal


def test_linear_calibration_keeps_ranking_when_labels_disagree():
    raw = np.array([0.0, 1.0, 2.0, 3.0])
    mos = np.array([4.0, 3.0, 2.0, 1.0])  # the labelled split says the critic is backwards
    cal = LinearCalibration.fit(raw, mos)
    assert cal.slope_at_floor and cal.slope > 0
    mapped = cal(raw)
    assert np.all(np.diff(mapped) > 0)  # still rank-preserving
    assert mapped.mean() == pytest.approx(mos.mean())  # optimal intercept for the floored slope
    with pytest.raises(ValueError, match="constant"):
        LinearCalibration.fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        LinearCalibration.from_dict({"slope": -1.0, "intercept": 0.0})


def test_aspect_subsets_keep_only_their_ranking_terms():
    """Table 5 ablations: only the ranking terms of the selected aspects contribute."""
    import torch

    from eliq_pipeline.critic.head.config import ScorerConfig
    from eliq_pipeline.critic.head.losses import total_ranking_loss
    from eliq_pipeline.critic.head.ranking import TupleScores

    scores = TupleScores(pos_vis=torch.tensor([1.0]), tecneg_vis=torch.tensor([0.9]), aesneg_vis=torch.tensor([0.0]),
                         pos_ali=torch.tensor([0.0]), neg_ali=torch.tensor([0.2]))
    # margin 0.5: hinge(tec) = 0.4, hinge(aes) = 0.0, hinge(ali) = 0.7
    assert float(total_ranking_loss(scores, 0.5)[0]) == pytest.approx(1.1)
    assert float(total_ranking_loss(scores, 0.5, aspects=("tec",))[0]) == pytest.approx(0.4)
    assert float(total_ranking_loss(scores, 0.5, aspects=("aes", "ali"))[0]) == pytest.approx(0.7)
    assert float(total_ranking_loss(scores, 0.5, "hardest", aspects=("tec", "aes"))[0]) == pytest.approx(0.4)
    config = ScorerConfig(aspects=["tec", "ali"])
    assert config.aspects == ("tec", "ali") and config.to_dict()["aspects"] == ["tec", "ali"]
    assert ScorerConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict() == config.to_dict()
    with pytest.raises(ValueError, match="aspects"):
        ScorerConfig(aspects=())
