"""ScorerConfig.cross_content_weight (each positive also ranked over another tuple's visual negatives)
and the label-free measure it aims at, cross_content_accuracy (held-out positives over other prompts'
negatives)."""

import json

import numpy as np
import pytest
import torch

from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.losses import cross_content_ranking_loss
from eliq_pipeline.critic.head.modules import ELIQScoringHead, score_embeddings
from eliq_pipeline.critic.head.ranking import TupleEmbeddings, TupleScores, cross_content_accuracy
from eliq_pipeline.critic.head.training import train_scoring_head
from eliq_pipeline_tests.critic.test_head import H, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def offset_tuples(n: int, seed: int, directions: np.ndarray, spread: float = 3.0) -> TupleEmbeddings:
    """Like test_head's synthetic tuples, plus a content offset along a fourth direction that a tuple's
    three images share: ranking within a tuple never sees it, ranking across tuples does."""
    rng = np.random.default_rng(seed)
    d_tec, d_aes, d_ali, content = directions
    offset = spread * rng.normal(size=(n, 1)) * content
    base_tec, base_aes, base_ali = (0.3 * rng.normal(size=(n, H)) for _ in range(3))
    base_tec, base_aes = base_tec + offset, base_aes + offset

    def jitter(x: np.ndarray) -> np.ndarray:
        return x + 0.3 * rng.normal(size=x.shape)

    return TupleEmbeddings(
        pos_tec=base_tec + d_tec, pos_aes=base_aes + d_aes, pos_ali=base_ali + d_ali,
        tecneg_tec=jitter(base_tec - d_tec), tecneg_aes=jitter(base_aes + d_aes),
        aesneg_tec=jitter(base_tec + d_tec), aesneg_aes=jitter(base_aes - d_aes),
        neg_ali=jitter(base_ali - d_ali),
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    directions = rng.normal(size=(4, H))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return offset_tuples(256, 1, directions), offset_tuples(128, 2, directions)


def _rows(n: int, prompts: int | None = None) -> list[dict]:
    """One positive per row; ``prompts`` distinct prompts shared round-robin (default: one each)."""
    return [{"positive_sha256": f"{i:064x}", "prompt_id": f"p{i % (prompts or n)}"} for i in range(n)]


def test_config_leaves_the_weight_out_at_its_default_and_refuses_a_negative_one():
    assert "cross_content_weight" not in ScorerConfig().to_dict()  # bundles written before it still verify
    cfg = tiny_cfg(cross_content_weight=0.5)
    assert ScorerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="cross_content_weight must be >= 0"):
        tiny_cfg(cross_content_weight=-0.1)


def test_cross_content_loss_hand_computed():
    scores = TupleScores(pos_vis=torch.tensor([1.0, 0.0, 2.0]), tecneg_vis=torch.tensor([0.0, 0.5, 2.5]),
                         aesneg_vis=torch.tensor([0.8, -1.0, 1.0]), pos_ali=torch.zeros(3), neg_ali=torch.zeros(3))
    # each positive against the previous row's negatives: tec [2.5, 0.0, 0.5], aes [1.0, 0.8, -1.0];
    # margin 0.5 hinges: tec [2.0, 0.5, 0.0], aes [0.5, 1.3, 0.0]
    assert cross_content_ranking_loss(scores, 0.5).item() == pytest.approx((2.0 + 0.5 + 0.5 + 1.3) / 3)
    assert cross_content_ranking_loss(scores, 0.5, aspects=("aes",)).item() == pytest.approx((0.5 + 1.3) / 3)
    # hardest of the two rolled negatives: [2.5, 0.8, 0.5] -> hinges [2.0, 1.3, 0.0]
    assert cross_content_ranking_loss(scores, 0.5, mode="hardest").item() == pytest.approx((2.0 + 1.3) / 3)


def test_accuracy_counts_every_positive_once_against_other_prompts_negatives(data):
    _, heldout = data
    torch.manual_seed(0)
    model = ELIQScoringHead(tiny_cfg()).eval()
    n = 24
    tuples = heldout.subset(range(n))
    # two tuples per positive (rows 2k and 2k+1 share it), three positives per prompt
    rows = [{"positive_sha256": f"{i // 2:064x}", "prompt_id": f"p{i // 6}"} for i in range(n)]
    s_pos = score_embeddings(model, tuples.pos_tec, tuples.pos_aes, tuples.pos_ali)[0]
    got = cross_content_accuracy(model, tuples, rows)
    for aspect, (z_tec, z_aes) in {"tec": (tuples.tecneg_tec, tuples.tecneg_aes),
                                   "aes": (tuples.aesneg_tec, tuples.aesneg_aes)}.items():
        s_neg = score_embeddings(model, z_tec, z_aes, tuples.pos_ali)[0]
        pairs = [(s_pos[p], s_neg[j]) for p in range(0, n, 2) for j in range(n)
                 if rows[p]["prompt_id"] != rows[j]["prompt_id"]]
        assert len(pairs) == 12 * 18
        assert got[aspect] == pytest.approx(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
    assert cross_content_accuracy(model, tuples, _rows(n, prompts=1)) == {}  # one prompt: no pair
    with torch.no_grad():  # a collapsed head scores every image alike: every pair a tie
        for parameter in model.parameters():
            parameter.zero_()
    assert cross_content_accuracy(model, tuples, rows) == {"tec": 0.5, "aes": 0.5}
    assert cross_content_accuracy(model, tuples.subset([]), []) == {}


@pytest.mark.parametrize("seed", [0, 1])
def test_the_term_ranks_positives_over_other_contents_negatives(data, seed):
    # Within-tuple ranking never penalises a score offset per content; the cross-content term does.
    train, heldout = data
    rows = _rows(len(heldout))
    plain = train_scoring_head(train, heldout, tiny_cfg(seed=seed))
    crossed = train_scoring_head(train, heldout, tiny_cfg(seed=seed, cross_content_weight=1.0))
    for result in (plain, crossed):
        assert min(result.heldout_accuracies.values()) >= 0.99  # both learn the tuples
    error = {name: 1.0 - np.mean(list(cross_content_accuracy(result.model, heldout, rows).values()))
             for name, result in (("plain", plain), ("crossed", crossed))}
    assert error["crossed"] <= 0.6 * error["plain"], error
