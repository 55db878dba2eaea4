"""The report layout: one compact table per benchmark, held-out accuracy against chance."""

from __future__ import annotations

from eliq_pipeline.evaluation.report import TOY_CAVEAT, report_markdown


def _row(era, benchmark, protocol, aspect, metric, value, n, low=None, high=None):
    return {"era": era, "benchmark": benchmark, "protocol": protocol, "aspect": aspect, "metric": metric,
            "value": value, "n": n, "ci_low": low, "ci_high": high}


def _rows(era="era-a"):
    rows = [_row(era, "heldout-tuples", "label-free", "visual", "ranking_accuracy_vis_vs_tec", 0.9375, 16),
            _row(era, "heldout-tuples", "label-free", "visual", "ranking_accuracy_vis_vs_aes", 0.5, 16),
            _row(era, "heldout-tuples", "label-free", "alignment", "ranking_accuracy_ali", 0.375, 16),
            _row(era, "heldout-tuples", "label-free", "mean", "ranking_accuracy_mean", 0.6, 16)]
    for metric in ("srcc", "plcc", "plcc_logistic", "krcc"):
        for aspect in ("visual", "alignment"):
            rows.append(_row(era, "agiqa-3k", "label-free", aspect, metric, 0.36, 2982, 0.328, 0.391))
            rows.append(_row(era, "agiqa-3k", "weak-supervised", aspect, metric, 0.5, 2386))
            rows.append(_row(era, "agiqa-3k", "weak-supervised", aspect, f"{metric}_std", 0.02, 2386))
        rows.append(_row(era, "agiqa-3k", "label-free/niqe", "visual", metric, 0.058, 2979, 0.02, 0.09))
        rows.append(_row(era, "agiqa-3k", "label-free/piqe", "visual", metric, 0.343, 2982, 0.311, 0.374))
    return rows


def test_one_row_per_method_and_aspect_with_intervals_spread_and_n():
    text = report_markdown(_rows(), profile="cpu")
    lines = text.splitlines()
    assert lines[0] == "## era-a" and TOY_CAVEAT not in text
    table = [line for line in lines if line.startswith("| ") and "agiqa" not in line]
    header = lines.index("| method | aspect | SRCC | PLCC | KRCC | n |")
    body = lines[header + 2:header + 8]
    assert body == [
        "| **ELIQ, label-free** | visual | 0.360 [0.328, 0.391] | 0.360 [0.328, 0.391] | 0.360 [0.328, 0.391] | 2,982 |",
        "| **ELIQ, label-free** | alignment | 0.360 [0.328, 0.391] | 0.360 [0.328, 0.391] | 0.360 [0.328, 0.391] | 2,982 |",
        "| ELIQ, weak-supervised | visual | 0.500 ± 0.020 | 0.500 ± 0.020 | 0.500 ± 0.020 | 2,386 |",
        "| ELIQ, weak-supervised | alignment | 0.500 ± 0.020 | 0.500 ± 0.020 | 0.500 ± 0.020 | 2,386 |",
        "| NIQE (fitted on era positives) | visual | 0.058 [0.020, 0.090] | 0.058 [0.020, 0.090] | 0.058 [0.020, 0.090] | 2,979 |",
        "| PIQE | visual | 0.343 [0.311, 0.374] | 0.343 [0.311, 0.374] | 0.343 [0.311, 0.374] | 2,982 |",
    ]
    assert "agiqa-3k (2,982 images; [95% bootstrap interval])" in lines
    assert not any("_std" in line or "None" in line or "plcc_logistic" in line for line in table)
    # held-out accuracy: the three comparisons, chance marked, no mean mixing visual and alignment
    assert "Held-out tuples: 16 tuples of prompts never trained on; chance = 0.5" in lines
    assert "| s_vis: positive over its aesthetic negative | 0.500 (chance) |" in lines
    assert "| s_ali: its prompt over a mismatched prompt | 0.375 (below chance) |" in lines
    assert not any("mean" in line for line in table)


def test_toy_profile_caveat_toy_niqe_label_and_dropped_images_named():
    dropped = {("era-a", "agiqa-3k", "label-free/niqe"): ["AttnGAN_normal_001.jpg", "b.jpg", "c.jpg"]}
    text = report_markdown(_rows() + _rows("era-b"), profile="tiny", dropped=dropped)
    lines = text.splitlines()
    assert lines[0] == f"> {TOY_CAVEAT}"
    assert [line for line in lines if line.startswith("## ")] == ["## era-a", "## era-b"]
    assert sum(line.startswith("| NIQE fitted on this era's toy positives | visual |") for line in lines) == 2
    note = "NIQE fitted on this era's toy positives is undefined on 3 of 2,982 images (left out): AttnGAN_normal_001.jpg, b.jpg, c.jpg"
    assert lines.count(note) == 1  # era-a only
    assert report_markdown([], profile="tiny") == "no scores yet"


def test_baselines_read_at_the_critic_input_size_follow_their_native_row():
    rows = _rows()
    for metric in ("srcc", "plcc", "krcc"):
        rows.append(_row("era-a", "agiqa-3k", "label-free/niqe-at-critic-input", "visual", metric, 0.489, 2977, 0.46, 0.51))
        rows.append(_row("era-a", "agiqa-3k", "label-free/piqe-at-critic-input", "visual", metric, 0.227, 2982, 0.19, 0.26))
    methods = [line.split(" | ")[0] for line in report_markdown(rows, profile="cpu").splitlines()
               if line.startswith("| ") and " | visual | " in line and "ELIQ" not in line]
    assert methods == ["| NIQE (fitted on era positives)", "| NIQE (fitted on era positives), at the critic's input size",
                       "| PIQE", "| PIQE, at the critic's input size"]
    toy = report_markdown(rows, profile="tiny")
    assert "| NIQE fitted on this era's toy positives, at the critic's input size | visual | 0.489 [0.460, 0.510] |" in toy
