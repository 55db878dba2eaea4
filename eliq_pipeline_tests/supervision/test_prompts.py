from __future__ import annotations

import collections
import hashlib
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from eliq_pipeline.supervision.prompts import (
    CAMERA,
    CATEGORIES,
    CATEGORY_NAMES,
    DETAIL,
    LIGHTING,
    LOW_FIDELITY_CUES,
    UNCATEGORISED,
    Prompt,
    aesthetic_degraded_prompt,
    build_prompt_bank,
    degraded_prompt,
    keyword_labels,
    load_prompt_file,
    mismatched_prompt,
    prompt_id_for,
    prompt_variant,
    prompt_vocabulary,
)

SEVEN = [
    "Indoor Scenes",
    "Urban Scenes",
    "Natural Scenes",
    "People & Activities",
    "Objects & Artifacts",
    "Food",
    "Events",
]


@pytest.fixture(scope="module")
def bank() -> list[Prompt]:
    return build_prompt_bank(400, seed=0)


def test_taxonomy_is_the_papers_seven_categories() -> None:
    assert list(CATEGORY_NAMES) == SEVEN
    for category in CATEGORIES.values():
        assert len(category.sub_concepts) >= 3
        assert all(len(subjects) >= 2 for subjects in category.sub_concepts.values())
        assert len(category.keywords) >= 10
        assert category.settings


# sha256 of the 32-prompt bank for seed 0 (texts, categories, labels), computed from the taxonomy as it
# was written inline in prompts.py before it moved to data/prompt_taxonomy.yaml. Any edit to the data
# file (or the sampling code) that changes the generated bank fails here; update it only on purpose.
TINY_BANK_SHA256 = "f915857ee977f1b7d426a541e7cea9c7f059ddc295c5719453097b6574463ae9"


def test_tiny_bank_is_pinned() -> None:
    tiny = build_prompt_bank(32, seed=0)
    payload = json.dumps([[p.text, p.category, p.labels] for p in tiny], ensure_ascii=False, separators=(",", ":"))
    assert hashlib.sha256(payload.encode("utf-8")).hexdigest() == TINY_BANK_SHA256


def test_taxonomy_data_ships_inside_the_package() -> None:
    data = resources.files("eliq_pipeline.supervision") / "data" / "prompt_taxonomy.yaml"
    assert data.is_file()


def test_bank_is_deterministic_distinct_and_within_the_length_limit(bank: list[Prompt]) -> None:
    assert [p.text for p in bank] == [p.text for p in build_prompt_bank(400, seed=0)]
    assert [p.text for p in bank] != [p.text for p in build_prompt_bank(400, seed=1)]
    assert len({p.text for p in bank}) == 400
    assert len({p.prompt_id for p in bank}) == 400
    assert all(len(p.text.split()) <= 40 for p in bank)
    short = build_prompt_bank(50, seed=3, max_words=20)
    assert all(len(p.text.split()) <= 20 for p in short)
    assert len({p.text for p in short}) == 50


def test_round_robin_covers_every_category_and_sub_concept(bank: list[Prompt]) -> None:
    assert {p.category for p in build_prompt_bank(7, seed=5)} == set(SEVEN)
    counts = collections.Counter(p.category for p in bank)
    assert max(counts.values()) - min(counts.values()) <= 1
    first_35 = build_prompt_bank(35, seed=2)
    pairs = {(p.category, p.sub_concept) for p in first_35}
    expected = {(c.name, s) for c in CATEGORIES.values() for s in c.sub_concepts}
    assert pairs == expected


def test_prompt_ids_are_text_hashes(bank: list[Prompt]) -> None:
    p = bank[0]
    assert p.prompt_id == prompt_id_for(p.text)
    assert p.prompt_id.startswith("p_") and len(p.prompt_id) == 18
    assert prompt_id_for("  a   cat ") == prompt_id_for("a cat")


def test_labels_primary_first_and_keywords_recover_the_category(bank: list[Prompt]) -> None:
    for p in bank:
        assert p.labels[0] == p.category
        assert len(set(p.labels)) == len(p.labels)
        # the subjects/settings are written so the rules alone find the primary category
        assert p.category in keyword_labels(p.text), p.text
        assert p.subject and p.subject.lower() in p.text.lower()
    assert any(len(p.labels) > 1 for p in bank), "some prompts should be multi-label"


def test_generic_style_phrases_carry_no_category_keyword() -> None:
    for phrase in LIGHTING + CAMERA + DETAIL + LOW_FIDELITY_CUES:
        assert keyword_labels(phrase) == [], phrase


def test_keyword_labels_multi_label_and_primary() -> None:
    text = "A chef serving pasta salad in a restaurant kitchen during a wedding"
    assert keyword_labels(text) == ["Indoor Scenes", "Food", "Events"]
    assert keyword_labels(text, primary="Events") == ["Events", "Indoor Scenes", "Food"]
    assert keyword_labels("an abstract swirl") == []
    assert keyword_labels("two mountains and a lake") == ["Natural Scenes"]  # plurals match
    assert "Objects & Artifacts" not in keyword_labels("a hand-thrown mug")  # 'thrown' is not 'throw'


def test_load_csv_with_and_without_category(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text(
        'prompt,category\n"A bowl of ramen, steaming",food\nA cat on a sofa,\nSomething abstract,My Own Theme\n',
        encoding="utf-8",
    )
    prompts = load_prompt_file(path)
    assert [p.text for p in prompts] == ["A bowl of ramen, steaming", "A cat on a sofa", "Something abstract"]
    assert prompts[0].category == "Food" and prompts[0].labels[0] == "Food"
    assert prompts[1].category == "Indoor Scenes"  # inferred from keywords
    assert prompts[2].category == "My Own Theme" and prompts[2].labels == ["My Own Theme"]
    only_prompt = tmp_path / "bare.csv"
    only_prompt.write_text("prompt\nan abstract swirl\n", encoding="utf-8")
    (p,) = load_prompt_file(only_prompt)
    assert p.category == UNCATEGORISED and p.labels == [UNCATEGORISED]


def test_load_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": "A wedding ceremony in a garden", "category": "Events"}, {"prompt": "A loaf of bread"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    prompts = load_prompt_file(path)
    assert [p.category for p in prompts] == ["Events", "Food"]
    assert prompts[0].prompt_id == prompt_id_for("A wedding ceremony in a garden")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "prompt,category\nA cat,\n   ,Food\n", r"empty\.csv: line 3: empty or missing prompt"),
        ("nocol.csv", "text,category\nA cat,Food\n", r"nocol\.csv: line 1: missing column 'prompt'"),
        ("dup.csv", "prompt\nA cat\nA  cat\n", r"dup\.csv: line 3: duplicate prompt .*line 2"),
        ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": "broken"\n', r"bad\.jsonl: line 2: bad JSON"),
        ("nokey.jsonl", '{"prompt": "ok"}\n{"text": "x"}\n', r"nokey\.jsonl: line 2: missing key 'prompt'"),
        ("list.jsonl", '["a cat"]\n', r"list\.jsonl: line 1: expected a JSON object"),
        ("blank.jsonl", '{"prompt": ""}\n', r"blank\.jsonl: line 1: empty or missing prompt"),
        ("prompts.txt", "a cat\n", r"prompts\.txt: unsupported prompt file type"),
        ("none.csv", "prompt\n", r"none\.csv: no prompts found"),
    ],
)
def test_load_errors_name_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_prompt_file(path)


def test_mismatched_prompt_prefers_unrelated_content(bank: list[Prompt]) -> None:
    rng = np.random.default_rng(0)
    for index in range(30):
        other = mismatched_prompt(bank, index, rng)
        assert other.text != bank[index].text
        assert not set(other.labels) & set(bank[index].labels)
    a = [mismatched_prompt(bank, 3, np.random.default_rng(7)).prompt_id for _ in range(3)]
    assert len(set(a)) == 1  # deterministic for a seeded rng
    same_category = [Prompt("a", "x kitchen", "Indoor Scenes", "", ["Indoor Scenes"]),
                     Prompt("b", "y kitchen", "Indoor Scenes", "", ["Indoor Scenes"])]
    assert mismatched_prompt(same_category, 0, rng).prompt_id == "b"  # falls back to any other prompt
    with pytest.raises(ValueError, match="at least two"):
        mismatched_prompt(same_category[:1], 0, rng)


def test_degraded_prompts_keep_content_and_add_cues(bank: list[Prompt]) -> None:
    text = "A photo of a quiet lake at dawn, sharp focus, natural colours."
    degraded = degraded_prompt(text)
    assert degraded.startswith("A photo of a quiet lake at dawn")
    assert degraded.endswith("blurry, low resolution, jpeg artifacts, distorted")
    assert "sharp focus" not in degraded
    sampled = degraded_prompt(text, np.random.default_rng(1), n_cues=3)
    assert sum(cue in sampled for cue in LOW_FIDELITY_CUES) >= 3
    assert degraded_prompt(text, np.random.default_rng(1), n_cues=3) == sampled
    assert "amateur snapshot" in aesthetic_degraded_prompt(bank[0].text, np.random.default_rng(0), n_cues=6)


def test_prompt_variant_swaps_the_subject_for_another_category(bank: list[Prompt]) -> None:
    rng = np.random.default_rng(0)
    for p in bank[:21]:
        variant = prompt_variant(p, rng)
        assert variant.text != p.text
        assert variant.category != p.category and variant.category not in p.labels
        assert variant.subject.lower() in variant.text.lower()
        assert p.subject.lower() not in variant.text.lower()
    user = Prompt(prompt_id_for("A cat on a sofa, soft light"), "A cat on a sofa, soft light", "Indoor Scenes", "",
                  ["Indoor Scenes"])
    assert prompt_variant(user, rng).text.endswith(", soft light")


def test_vocabulary_covers_bank_words(bank: list[Prompt]) -> None:
    vocab = set(prompt_vocabulary())
    words = {w for p in bank for w in re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", p.text.lower())}
    assert words <= vocab


def test_alignment_variants_swap_exactly_one_fact():
    import numpy as np

    from eliq_pipeline.supervision.prompts import Prompt, prompt_variants

    text = "A red bicycle next to two wooden chairs, soft light."
    prompt = Prompt(prompt_id="p", text=text, category="Objects & Artifacts", sub_concept="x", labels=[], subject="red bicycle")
    variants = prompt_variants(prompt, np.random.default_rng(0))
    assert set(variants) == {"object", "attribute", "count", "relation"}
    for kind, variant in variants.items():
        assert variant.text != text, kind
    assert variants["count"].text == "A red bicycle next to four wooden chairs, soft light."
    assert variants["relation"].text == "A red bicycle far from two wooden chairs, soft light."
    assert variants["attribute"].text in {"A blue bicycle next to two wooden chairs, soft light.",
                                          "A red bicycle next to two metal chairs, soft light."}
    plain = Prompt(prompt_id="q", text="A calm lake.", category="Natural Scenes", sub_concept="x", labels=[], subject="")
    assert set(prompt_variants(plain, np.random.default_rng(0))) == {"object"}


def test_prompts_from_import_take_the_first_occurrence_and_the_first_category():
    from eliq_pipeline.supervision.generation import variants_for
    from eliq_pipeline.supervision.prompts import prompts_from_import

    entries = [
        {"prompt": "style of Slim Aarons", "category": "Fashion , People"},
        {"prompt": "a pool party in Palm Springs, 1970, kodachrome", "category": ""},
        {"prompt": " style of  Slim Aarons", "category": "Travel"},  # same prompt (another source): first wins
        {"prompt": "8k", "category": "STILL LIFE"},
    ]
    bank = prompts_from_import(entries)
    assert [(p.text, p.category, p.labels) for p in bank] == [
        ("style of Slim Aarons", "fashion", ["fashion"]),
        ("a pool party in Palm Springs, 1970, kodachrome", "imported", ["imported"]),
        ("8k", "still life", ["still life"]),
    ]
    assert bank[0].prompt_id == prompt_id_for("style of Slim Aarons")
    assert (bank[0].sub_concept, bank[0].subject) == ("", "")
    for prompt in bank:  # what the `prompts` asset computes for every prompt must work for arbitrary text
        variants = variants_for(prompt)
        assert "object" in variants and all(v.text != prompt.text for v in variants.values())
        assert degraded_prompt(prompt.text) and aesthetic_degraded_prompt(prompt.text)
    assert mismatched_prompt(bank, 0, np.random.default_rng(0)).text != bank[0].text
    with pytest.raises(ValueError, match="#0: empty"):
        prompts_from_import([{"prompt": "  ", "category": ""}])
