"""Severity series: which tuples pair up, the held-out order measure, and the SFT's severity-ranking
term (its pairs, its sampler groups, its loss, and that training with it orders a series)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from eliq_pipeline.critic.instruction_tuning import (
    SFTConfig,
    _label_logits,
    _label_loss,
    example_groups,
    label_probabilities,
    pseudo_label_examples,
    severity_rank_pairs,
    strongest_level_examples,
    tune_backbone,
)
from eliq_pipeline.critic.backbone import label_token_ids, load_backbone
from eliq_pipeline.critic.data import sft_tuples
from eliq_pipeline.critic.severity import severity_order_accuracy, severity_pairs
from eliq_pipeline.tiny.backbone import build_tiny_backbone


def _row(pos: str, tec: tuple[str, int | None], aes: tuple[str, int | None]) -> dict:
    return {"positive_sha256": pos, "tec_method": tec[0], "tec_severity": tec[1], "tec_sha256": f"{pos}-{tec}",
            "aes_method": aes[0], "aes_severity": aes[1], "aes_sha256": f"{pos}-{aes}"}


ROWS = [
    _row("p1", ("gaussian_blur", 1), ("desaturate", 2)),
    _row("p1", ("gaussian_blur", 2), ("desaturate", 1)),
    _row("p2", ("jpeg_recompress", 2), ("colour_cast", 1)),
    _row("p2", ("downscale_upscale", 1), ("colour_cast", 1)),  # other method; the same aes negative twice
    _row("p3", ("jpeg_recompress", None), ("colour_cast", None)),  # ungraded
    _row("p3", ("jpeg_recompress", 1), ("colour_cast", 2)),
]


def test_severity_pairs_are_same_method_same_positive_mild_first() -> None:
    assert severity_pairs(ROWS, "tec") == [(0, 1)]
    assert severity_pairs(ROWS, "aes") == [(1, 0)]
    with pytest.raises(ValueError, match="not 'ali'"):
        severity_pairs(ROWS, "ali")


def test_severity_order_accuracy_counts_wins_and_half_ties() -> None:
    rows = ROWS + [_row("p4", ("gaussian_blur", 1), ("desaturate", 1)), _row("p4", ("gaussian_blur", 2), ("desaturate", 2))]
    tec = [0.9, 0.1, 0, 0, 0, 0, 0.3, 0.3]  # p1 right, p4 a tie
    aes = [0.2, 0.8, 0, 0, 0, 0, 0.1, 0.5]  # p1 right (row 1 is the mild one), p4 wrong
    assert severity_order_accuracy(rows, {"tec": tec, "aes": aes}) == {"tec": 0.75, "aes": 0.5}
    assert severity_order_accuracy(ROWS[2:4], {"tec": [1, 2]}) == {}  # no pair: aspect left out
    with pytest.raises(ValueError, match="3 tec scores for 6 rows"):
        severity_order_accuracy(ROWS, {"tec": [1, 2, 3]})


def _image(seed: int, blur: float = 0.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return image.filter(ImageFilter.GaussianBlur(blur)) if blur else image


def _series_tuples(n_positives: int, seed: int = 0) -> list[dict]:
    """Two tuples per positive: tec negatives are its mild and strong blur, aes ones mild/strong too."""
    rows = []
    for k in range(n_positives):
        images = {"pos": _image(seed * 100 + k), **{lv: _image(seed * 100 + k, blur=2.0 * lv) for lv in (1, 2)}}
        for level in (1, 2):
            rows.append({
                "positive_sha256": f"p{seed}-{k}", "prompt": f"a cat {k}", "mismatched_prompt": "a boat",
                "tec_sha256": f"p{seed}-{k}-tec{level}", "tec_method": "gaussian_blur", "tec_severity": level,
                "aes_sha256": f"p{seed}-{k}-aes{level}", "aes_method": "gaussian_blur", "aes_severity": 3 - level,
                "_images": {f"p{seed}-{k}": images["pos"], f"p{seed}-{k}-tec{level}": images[level],
                            f"p{seed}-{k}-aes{level}": images[3 - level]},
            })
    return rows


def _examples(rows: list[dict]):
    images = {sha: image for row in rows for sha, image in row["_images"].items()}
    return pseudo_label_examples(sft_tuples(rows, images.__getitem__))


def test_rank_pairs_order_positive_mild_strong_within_a_series() -> None:
    examples = _examples(_series_tuples(1))  # 2 tuples x 6 questions
    assert [(e.aspect, e.label, e.rank and e.rank[2]) for e in examples[:6]] == [
        ("tec", "high", 0), ("aes", "high", 0), ("ali", "high", None), ("ali", "low", None),
        ("tec", "low", 1), ("aes", "low", 2)]
    pairs = severity_rank_pairs(examples)
    # tec: I+ (0, 6) over mild 4 and strong 10, mild 4 over strong 10; aes: I+ (1, 7) over 5 and 11, 11 over 5
    assert sorted(pairs) == sorted([(0, 4), (0, 10), (6, 4), (6, 10), (4, 10),
                                    (1, 5), (1, 11), (7, 5), (7, 11), (11, 5)])
    # another positive's examples never pair with these
    assert len(severity_rank_pairs(_examples(_series_tuples(2)))) == 2 * len(pairs)


def test_series_sampler_groups_keep_a_positives_tuples_together() -> None:
    examples = _examples(_series_tuples(2))
    assert example_groups(examples) == [list(range(0, 6)), list(range(6, 12)), list(range(12, 18)), list(range(18, 24))]
    assert example_groups(examples, by_series=True) == [list(range(0, 12)), list(range(12, 24))]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_backbone(tmp_path_factory.mktemp("severity") / "tiny", seed=0)


def test_label_loss_adds_the_logistic_severity_term(tiny_dir: Path) -> None:
    model, processor = load_backbone(str(tiny_dir))
    batch = _examples(_series_tuples(1))
    weights = [1.0] * len(batch)
    ids = label_token_ids(processor.tokenizer)
    with torch.no_grad():
        logits = _label_logits(model, processor, batch, "cpu", True).float()
        plain = _label_loss(model, processor, batch, weights, "cpu")
        ranked = _label_loss(model, processor, batch, weights, "cpu", severity_weight=0.5)
    margin = logits[:, ids["high"]] - logits[:, ids["low"]]
    term = np.mean([float(torch.nn.functional.softplus(margin[j] - margin[i])) for i, j in severity_rank_pairs(batch)])
    target = torch.tensor([ids[e.label] for e in batch])
    assert float(plain) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)), abs=1e-5)
    assert float(ranked) == pytest.approx(float(plain) + 0.5 * term, abs=1e-5)


def test_training_with_the_severity_term_orders_the_series(tiny_dir: Path, tmp_path: Path) -> None:
    train = _examples(_series_tuples(3))
    tec = [e for e in train if e.aspect == "tec" and e.label == "low"]  # per positive: mild, strong
    assert "severity_ranking_weight" not in SFTConfig.tiny().run_key()  # earlier checkpoints stay resumable
    gaps = {}
    for weight in (0.0, 2.0):
        cfg = SFTConfig.tiny(max_steps=40, batch_size=12, checkpoint_every=100, severity_ranking_weight=weight)
        result = tune_backbone(str(tiny_dir), train, train, cfg, tmp_path / str(weight))
        p_high = label_probabilities(result.model, result.processor, tec)
        gaps[weight] = (p_high[0::2] - p_high[1::2]).tolist()  # mild minus strong, per positive
        # the result's severity order is the same reading, over tec and aes series
        assert result.heldout_severity_order["tec"] == np.mean([g > 0 for g in gaps[weight]])
        assert set(result.heldout_severity_order) == {"tec", "aes"}
    assert cfg.run_key()["severity_ranking_weight"] == 2.0
    assert result.heldout_severity_order == {"tec": 1.0, "aes": 1.0}
    # labels alone push mild and strong to "low" alike; the ranking term keeps them apart, in order
    assert all(g > 0.05 for g in gaps[2.0]), gaps
    assert np.mean(gaps[2.0]) > np.mean(gaps[0.0]) + 0.05, gaps


# ------------------------------------------------------------------ the QQT's severity term

H = 16


def _graded_embeddings(n_positives: int, seed: int, d: np.ndarray, e: np.ndarray):
    """Two tuples per positive: negatives lie along -d (what binary ranking learns); the strong one
    also along +e, as are half the positives, so e tells positives from negatives nothing and only
    the severity order can teach it. Rows name each tuple's series."""
    rng = np.random.default_rng(seed)
    fields: dict[str, list] = {k: [] for k in ("pos_tec", "pos_aes", "pos_ali", "tecneg_tec", "tecneg_aes",
                                               "aesneg_tec", "aesneg_aes", "neg_ali")}
    rows = []
    for k in range(n_positives):
        base = rng.normal(size=(3, H))
        base[0] += 2.0 * e * (k % 2)
        for level in (1, 2):
            jitter = lambda x: x + 0.2 * rng.normal(size=H)  # noqa: E731
            neg = base[0] - 2.0 * e * (k % 2) - d + (2.0 * e if level == 2 else 0.0)
            for name, value in (("pos_tec", base[0] + d), ("pos_aes", base[1] + d), ("pos_ali", base[2]),
                                ("tecneg_tec", jitter(neg)), ("tecneg_aes", jitter(base[1] + d)),
                                ("aesneg_tec", jitter(base[0] + d)), ("aesneg_aes", jitter(base[1] - d)),
                                ("neg_ali", jitter(base[2]))):
                fields[name].append(value)
            rows.append({"positive_sha256": f"{seed}-{k}", "tec_method": "gaussian_blur", "tec_severity": level,
                         "aes_method": "desaturate", "aes_severity": None})
    from eliq_pipeline.critic.head.ranking import TupleEmbeddings

    return TupleEmbeddings(**{k: np.stack(v) for k, v in fields.items()}), rows


def test_qqt_severity_term_orders_graded_negatives_binary_ranking_does_not() -> None:
    from eliq_pipeline.critic.head.config import ScorerConfig
    from eliq_pipeline.critic.head.ranking import ranking_accuracies, severity_order
    from eliq_pipeline.critic.head.training import train_scoring_head

    rng = np.random.default_rng(7)
    d, e = np.linalg.qr(rng.normal(size=(H, 2)))[0].T  # orthonormal
    train, train_rows = _graded_embeddings(128, 1, d, e)
    heldout, heldout_rows = _graded_embeddings(64, 2, d, e)
    pairs = {a: severity_pairs(train_rows, a) for a in ("tec", "aes")}
    assert len(pairs["tec"]) == 128 and pairs["aes"] == []
    order = {}
    for weight in (0.0, 1.0):
        cfg = ScorerConfig(hidden_size=H, d_model=32, depth=1, heads=2, ff_dim=64, dropout=0.0, lr=3e-3, epochs=15,
                           batch_size=32, patience=None, severity_ranking_weight=weight)
        head = train_scoring_head(train, heldout, cfg, severity_pairs=pairs).model
        assert ranking_accuracies(head, heldout)["vis_vs_tec"] > 0.95
        order[weight] = severity_order(head, heldout, heldout_rows)
    assert set(order[1.0]) == {"tec"}  # ungraded aes negatives: no pairs, no figure
    assert order[1.0]["tec"] > 0.95 and order[1.0]["tec"] > order[0.0]["tec"] + 0.2, order
    with pytest.raises(ValueError, match="not 'ali'"):
        heldout.negative("ali")  # alignment negatives pair a prompt, not an image
    with pytest.raises(ValueError, match="needs severity_pairs"):
        train_scoring_head(train, heldout, cfg)
    with pytest.raises(ValueError, match="outside the 256 train tuples"):
        train_scoring_head(train, heldout, cfg, severity_pairs={"tec": [(0, 256)]})
    # the setting is written only when used, so bundles written before it still verify
    assert "severity_ranking_weight" not in ScorerConfig().to_dict()
    assert ScorerConfig.from_dict(cfg.to_dict()) == cfg


def test_strongest_level_examples_leave_out_a_milder_negative_with_its_tuples_positive_question() -> None:
    examples = _examples(_series_tuples(2))  # per positive: tuple (tec 1, aes 2), then (tec 2, aes 1)
    kept = strongest_level_examples(examples)
    # tuple questions: tec I+, aes I+, ali high, ali low, tec negative, aes negative
    per_positive = [1, 2, 3, 5, 6 + 0, 6 + 2, 6 + 3, 6 + 4]
    assert kept == per_positive + [12 + i for i in per_positive]
    for aspect in ("tec", "aes", "ali"):  # each aspect still as often "high" as "low"
        labels = [examples[i].label for i in kept if examples[i].aspect == aspect]
        assert labels.count("high") == labels.count("low") > 0
    assert all(examples[i].rank is None or examples[i].rank[2] in (0, 2) for i in kept)
    # nothing graded (or one level only): every example stays
    ungraded = pseudo_label_examples(sft_tuples([{k: v for k, v in row.items() if not k.endswith("_severity")}
                                                 for row in _series_tuples(1)],
                                                {sha: im for row in _series_tuples(1)
                                                 for sha, im in row["_images"].items()}.__getitem__))
    assert strongest_level_examples(ungraded) == list(range(len(ungraded)))


def test_a_curriculum_trains_on_the_strongest_level_first_then_on_the_mix_and_resumes(
        tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eliq_pipeline.critic import instruction_tuning

    train = _examples(_series_tuples(3))
    start = set(strongest_level_examples(train))
    index_of = {id(e): i for i, e in enumerate(train)}
    seen: list[list[int]] = []
    original = instruction_tuning._label_loss

    def recording(model, processor, batch, *args, **kwargs):
        seen.append([index_of[id(e)] for e in batch])
        return original(model, processor, batch, *args, **kwargs)

    monkeypatch.setattr(instruction_tuning, "_label_loss", recording)
    cfg = SFTConfig.tiny(max_steps=6, batch_size=6, checkpoint_every=1, curriculum_steps=3)
    straight = tune_backbone(str(tiny_dir), train, [], cfg, tmp_path / "straight")
    assert len(seen) == 6
    assert all(i in start for batch in seen[:3] for i in batch)
    assert any(i not in start for batch in seen[3:] for i in batch)  # then the milder negatives too
    plain = tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "curriculum_steps": 0}),
                          tmp_path / "plain")
    assert any(i not in start for batch in seen[6:9] for i in batch)  # without it, from the first step
    assert plain.loss_curve[:3] != straight.loss_curve[:3]

    # stopped inside the curriculum and resumed: the uninterrupted run's trajectory
    work = tmp_path / "interrupted"
    tune_backbone(str(tiny_dir), train, [], SFTConfig.tiny(**{**vars(cfg), "max_steps": 2}), work)
    resumed = tune_backbone(str(tiny_dir), train, [], cfg, work)
    assert resumed.resumed_from_step == 2
    assert np.allclose(resumed.loss_curve, straight.loss_curve, atol=1e-6)

    # part of the trajectory key only when used (earlier checkpoints stay resumable); negative refused
    assert "curriculum_steps" not in SFTConfig.tiny().run_key() and cfg.run_key()["curriculum_steps"] == 3
    with pytest.raises(ValueError, match="curriculum_steps must be >= 0"):
        SFTConfig.tiny(curriculum_steps=-1)
