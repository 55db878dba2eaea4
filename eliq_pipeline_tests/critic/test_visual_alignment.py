"""ScorerConfig.shuffle_visual_alignment (s_vis trained with other tuples' alignment tokens) and
fixed_visual_alignment (s_vis always reads the train mean z_ali), and the label-free measure of how
much a head's s_vis leans on z_ali (visual_alignment_invariance)."""

import json

import numpy as np
import pytest
import torch

from eliq_pipeline.critic.head.checkpoints import load_scoring_head, save_scoring_head
from eliq_pipeline.critic.head.config import ScorerConfig
from eliq_pipeline.critic.head.modules import ELIQScoringHead
from eliq_pipeline.critic.head.modules import score_embeddings
from eliq_pipeline.critic.head.ranking import score_tuples, visual_alignment_invariance
from eliq_pipeline.critic.head.training import train_scoring_head
from eliq_pipeline_tests.critic.test_head import synthetic_splits, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    """test_head's synthetic tuples: visual negatives share I+'s z_ali, as the cpu profile's do."""
    return synthetic_splits()


def _rows(n: int) -> list[dict]:
    return [{"positive_sha256": f"{i:064x}"} for i in range(n)]


@pytest.mark.parametrize("switch", ["shuffle_visual_alignment", "fixed_visual_alignment"])
def test_config_leaves_the_switch_out_at_its_default(switch):
    assert switch not in ScorerConfig().to_dict()  # bundles written before it still verify
    cfg = tiny_cfg(**{switch: True})
    assert cfg.to_dict()[switch] is True
    assert ScorerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_config_refuses_a_fixed_token_that_is_also_shuffled():
    with pytest.raises(ValueError, match="exclude each other"):
        tiny_cfg(shuffle_visual_alignment=True, fixed_visual_alignment=True)


def test_visual_rows_take_the_given_alignment_tokens_and_s_ali_keeps_its_own(data):
    train, _ = data
    torch.manual_seed(0)
    model = ELIQScoringHead(tiny_cfg()).eval()
    index = torch.arange(10, 20)
    visual_ali = torch.tensor([[3] * 10, list(range(100, 110)), [7] * 10])
    plain, shuffled = score_tuples(model, train, index), score_tuples(model, train, index, visual_ali)
    with torch.no_grad():
        expected = [model(tec[index], aes[index], train.pos_ali[rows])[0]
                    for (tec, aes), rows in zip(((train.pos_tec, train.pos_aes), (train.tecneg_tec, train.tecneg_aes),
                                                 (train.aesneg_tec, train.aesneg_aes)), visual_ali)]
    for got, want in zip((shuffled.pos_vis, shuffled.tecneg_vis, shuffled.aesneg_vis), expected):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(shuffled.pos_vis, plain.pos_vis)
    torch.testing.assert_close(shuffled.pos_ali, plain.pos_ali)  # s_ali(I+, p) on I+'s own z_ali
    torch.testing.assert_close(shuffled.neg_ali, plain.neg_ali)
    with pytest.raises(ValueError, match=r"shape \(3, 10\)"):
        score_tuples(model, train, index, visual_ali[:2])


@pytest.mark.parametrize("seed", [0, 2])
def test_shuffling_keeps_s_vis_off_the_alignment_token(data, seed):
    # The synthetic visual negatives share I+'s z_ali, as the cpu profile's do: the visual pairs then
    # leave s_vis free to vary with z_ali across images, and held-out tuple accuracy cannot tell.
    train, heldout = data
    rows = _rows(len(heldout))
    free = train_scoring_head(train, heldout, tiny_cfg(seed=seed))
    shuffled = train_scoring_head(train, heldout, tiny_cfg(seed=seed, shuffle_visual_alignment=True))
    for result in (free, shuffled):
        assert result.heldout_accuracies["vis_vs_tec"] >= 0.99 and result.heldout_accuracies["ali"] >= 0.99
    assert visual_alignment_invariance(free.model, heldout, rows) < 0.75
    assert visual_alignment_invariance(shuffled.model, heldout, rows) > 0.93


def test_invariance_counts_each_positive_once_and_needs_three(data):
    _, heldout = data
    torch.manual_seed(0)
    model = ELIQScoringHead(tiny_cfg()).eval()
    # two tuples per positive (as eras build them): the duplicate rows add nothing
    rows = [{"positive_sha256": f"{i // 2:064x}"} for i in range(len(heldout))]
    unique = heldout.subset(np.arange(0, len(heldout), 2))
    assert visual_alignment_invariance(model, heldout, rows) == pytest.approx(
        visual_alignment_invariance(model, unique, _rows(len(unique))))
    assert visual_alignment_invariance(model, heldout, rows[:4]) is None  # two positives



class _FixedHead(torch.nn.Module):
    """s_vis from z_tec alone (ignores_ali) or from z_ali alone; s_ali from z_ali."""

    def __init__(self, ignores_ali: bool) -> None:
        super().__init__()
        self.ignores_ali = ignores_ali

    def forward(self, z_tec, z_aes, z_ali):
        return (z_tec if self.ignores_ali else z_ali).sum(-1), z_ali.sum(-1)


def test_invariance_is_one_when_s_vis_ignores_z_ali_and_low_when_it_is_z_ali(data):
    _, heldout = data
    rows = _rows(len(heldout))
    assert visual_alignment_invariance(_FixedHead(ignores_ali=True), heldout, rows) == pytest.approx(1.0)
    assert abs(visual_alignment_invariance(_FixedHead(ignores_ali=False), heldout, rows)) < 0.3  # own vs others' z_ali


def test_fixed_token_makes_s_vis_a_function_of_z_vis_alone_and_leaves_s_ali_as_the_paper_head(data):
    train, _ = data
    torch.manual_seed(0)
    fixed = ELIQScoringHead(tiny_cfg(fixed_visual_alignment=True)).eval()
    fixed.visual_alignment_token.copy_(train.pos_ali[5])
    paper = ELIQScoringHead(tiny_cfg()).eval()
    paper.load_state_dict({k: v for k, v in fixed.state_dict().items() if k != "visual_alignment_token"})
    z_tec, z_aes, z_ali = train.pos_tec[:20], train.pos_aes[:20], train.pos_ali[:20]
    with torch.no_grad():
        s_vis, s_ali = fixed(z_tec, z_aes, z_ali)
        s_vis_other, s_ali_other = fixed(z_tec, z_aes, train.neg_ali[:20])
        paper_vis, paper_ali = paper(z_tec, z_aes, z_ali)
        token_vis, _ = paper(z_tec, z_aes, train.pos_ali[5].expand(20, -1))
    torch.testing.assert_close(s_vis, s_vis_other)  # another z_ali: the same s_vis
    assert not torch.allclose(s_ali, s_ali_other)  # s_ali does read it
    torch.testing.assert_close(s_ali, paper_ali)
    torch.testing.assert_close(s_vis, token_vis)  # s_vis is the paper head's at the fixed token
    assert not torch.allclose(s_vis, paper_vis)


def test_fixed_token_is_the_train_mean_and_travels_with_the_checkpoint(data, tmp_path):
    train, heldout = data
    result = train_scoring_head(train, heldout, tiny_cfg(fixed_visual_alignment=True))
    torch.testing.assert_close(result.model.visual_alignment_token, train.pos_ali.mean(dim=0))
    assert result.heldout_accuracies["vis_vs_tec"] >= 0.99 and result.heldout_accuracies["ali"] >= 0.99
    assert visual_alignment_invariance(result.model, heldout, _rows(len(heldout))) == pytest.approx(1.0)
    loaded, cfg = load_scoring_head(save_scoring_head(result.model, None, tmp_path / "head"))
    assert cfg.fixed_visual_alignment
    torch.testing.assert_close(loaded.visual_alignment_token, result.model.visual_alignment_token)
    z = (heldout.pos_tec, heldout.pos_aes, heldout.pos_ali)
    for got, want in zip(score_embeddings(loaded, *z), score_embeddings(result.model, *z)):
        np.testing.assert_allclose(got, want)
