"""Prompt bank (paper 3.2.1): a seven-category taxonomy, template-built prompts, multi-labels.

Over 400 lines: one cohesive algorithm (compose, label, vary, read user prompt files); its data table lives in data/.

The paper asks GPT-5 for 400 prompts under category-specific rules; offline we compose them from
curated phrase lists instead (realistic content, category-aligned subjects, a length limit), which
keeps the bank deterministic for a seed and reviewable. The taxonomy and phrase lists are data, in
data/prompt_taxonomy.yaml; this module holds the logic. Multi-labels come from rule-based keyword
matching (the paper's first step); the primary category is always a label.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

UNCATEGORISED = "Uncategorized"


@dataclass(frozen=True)
class Category:
    name: str
    # sub-concept -> subject phrases (each a concrete, photographable scene)
    sub_concepts: Mapping[str, tuple[str, ...]]
    # where/when phrases that fit every subject of the category
    settings: tuple[str, ...]
    # lower-case words / phrases whose presence marks a prompt as (also) about this category
    keywords: tuple[str, ...]


# The taxonomy and phrase lists live in data/prompt_taxonomy.yaml (shipped as package data); this
# module holds the logic only. Entry order in that file is part of the seeded sampling: changing it
# changes the bank.
_DATA_PACKAGE = "eliq_pipeline.supervision"
_DATA_FILE = "prompt_taxonomy.yaml"


def _phrases(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw or not all(isinstance(s, str) and s for s in raw):
        raise ValueError(f"{_DATA_FILE}: {where} must be a non-empty list of non-empty strings")
    return tuple(raw)


def _pairs(raw: Any, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw):
        raise ValueError(f"{_DATA_FILE}: {where} must be a list of [word, word] pairs")
    return tuple((a, b) for a, b in (_phrases(p, where) for p in raw))


def _category(raw: Any) -> Category:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ValueError(f"{_DATA_FILE}: every category needs a 'name'")
    name = raw["name"]
    sub_concepts = raw.get("sub_concepts")
    if not isinstance(sub_concepts, dict) or not sub_concepts or not all(isinstance(s, str) for s in sub_concepts):
        raise ValueError(f"{_DATA_FILE}: {name}: 'sub_concepts' must be a non-empty mapping with string keys")
    return Category(
        name=name,
        sub_concepts={s: _phrases(v, f"{name} / {s}") for s, v in sub_concepts.items()},
        settings=_phrases(raw.get("settings"), f"{name}: settings"),
        keywords=_phrases(raw.get("keywords"), f"{name}: keywords"),
    )


@functools.cache
def _prompt_data() -> dict[str, Any]:
    """The parsed data file, read once. safe_load keeps mapping and list order, which sampling relies on."""
    text = (resources.files(_DATA_PACKAGE) / "data" / _DATA_FILE).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{_DATA_FILE}: expected a mapping at the top level")
    return data


def _load_categories() -> dict[str, Category]:
    raw = _prompt_data().get("categories")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{_DATA_FILE}: 'categories' must be a non-empty list")
    categories = [_category(c) for c in raw]
    by_name = {c.name: c for c in categories}
    if len(by_name) != len(categories):
        raise ValueError(f"{_DATA_FILE}: duplicate category names")
    return by_name


CATEGORIES: dict[str, Category] = _load_categories()
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

# Generic phrases shared by every category (no category keyword in them, so the multi-labels of a
# prompt come from its subject and setting only).
LIGHTING: tuple[str, ...] = _phrases(_prompt_data().get("lighting"), "lighting")
CAMERA: tuple[str, ...] = _phrases(_prompt_data().get("camera"), "camera")
DETAIL: tuple[str, ...] = _phrases(_prompt_data().get("detail"), "detail")
# {subject}, {setting}, {lighting}, {camera}, {detail}; camera/detail are dropped first to fit the limit.
TEMPLATES: tuple[str, ...] = _phrases(_prompt_data().get("templates"), "templates")
# Cues for AI-specific technical / aesthetic negatives (3.2.3); quality boosters are stripped first.
LOW_FIDELITY_CUES: tuple[str, ...] = _phrases(_prompt_data().get("low_fidelity_cues"), "low_fidelity_cues")
LOW_AESTHETIC_CUES: tuple[str, ...] = _phrases(_prompt_data().get("low_aesthetic_cues"), "low_aesthetic_cues")
_QUALITY_BOOSTERS: tuple[str, ...] = _phrases(_prompt_data().get("quality_boosters"), "quality_boosters")


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    category: str
    sub_concept: str
    labels: list[str] = field(default_factory=list)
    # the subject phrase inside `text` when known (bank prompts); used to build alignment variants
    subject: str = ""


def prompt_id_for(text: str) -> str:
    """Stable id from the normalised text, so the same prompt gets the same id in every era."""
    return "p_" + hashlib.sha256(_normalise(text).encode("utf-8")).hexdigest()[:16]


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    # whole words, optional plural; "-" and "'" count as word characters so "hand-thrown" != "thrown"
    escaped = re.escape(keyword).replace(r"\ ", r"\s+")
    return re.compile(rf"(?<![\w'-]){escaped}(?:s|es)?(?![\w'-])", re.IGNORECASE)


_KEYWORD_PATTERNS: dict[str, tuple[re.Pattern[str], ...]] = {
    name: tuple(_keyword_pattern(k) for k in cat.keywords) for name, cat in CATEGORIES.items()
}


def keyword_labels(text: str, primary: str | None = None) -> list[str]:
    """Rule-based multi-label assignment: every category with a keyword in the text.

    `primary` (when given) is always included and listed first; the rest follow taxonomy order.
    """
    matched = [name for name, patterns in _KEYWORD_PATTERNS.items() if any(p.search(text) for p in patterns)]
    if primary is None:
        return matched
    return [primary] + [name for name in matched if name != primary]


def _count_words(text: str) -> int:
    return len(text.split())


def _capitalise(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


def _compose(template: str, parts: dict[str, str]) -> str:
    text = template
    for key in ("camera", "detail"):
        if parts.get(key) is None:
            # drop the optional clause together with its separator
            text = re.sub(r"(,|;)?\s*\{%s\}" % key, "", text)
    values = {k: v for k, v in parts.items() if v is not None}
    values.update({k.capitalize(): _capitalise(v) for k, v in values.items()})
    return _normalise(text.format(**values))


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def build_prompt_bank(n: int, seed: int, max_words: int = 40) -> list[Prompt]:
    """`n` distinct prompts, deterministic for `seed`.

    Categories are visited round-robin (and sub-concepts round-robin within a category), so any
    n >= 7 covers every category and n >= 35 covers every sub-concept.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if max_words < 8:
        raise ValueError(f"max_words={max_words} is too small for a meaningful prompt (need >= 8)")
    rng = np.random.default_rng(seed)
    seen: set[str] = set()
    bank: list[Prompt] = []
    for i in range(n):
        category = CATEGORIES[CATEGORY_NAMES[i % len(CATEGORY_NAMES)]]
        sub_names = list(category.sub_concepts)
        sub_concept = sub_names[(i // len(CATEGORY_NAMES)) % len(sub_names)]
        for _attempt in range(200):
            subject = _pick(rng, category.sub_concepts[sub_concept])
            parts: dict[str, str | None] = {
                "subject": subject,
                "setting": _pick(rng, category.settings),
                "lighting": _pick(rng, LIGHTING),
                "camera": _pick(rng, CAMERA),
                "detail": _pick(rng, DETAIL),
            }
            template = _pick(rng, TEMPLATES)
            text = _compose(template, parts)
            for optional in ("detail", "camera"):  # shorten to the limit, least important first
                if _count_words(text) <= max_words:
                    break
                parts[optional] = None
                text = _compose(template, parts)
            if _count_words(text) > max_words or text in seen:
                continue
            seen.add(text)
            bank.append(
                Prompt(
                    prompt_id=prompt_id_for(text),
                    text=text,
                    category=category.name,
                    sub_concept=sub_concept,
                    labels=keyword_labels(text, primary=category.name),
                    subject=subject,
                )
            )
            break
        else:
            raise ValueError(
                f"could not build {n} distinct prompts within {max_words} words "
                f"(stuck at #{i}, {category.name} / {sub_concept}); lower n or raise max_words"
            )
    return bank


def _canonical_category(raw: str) -> str:
    """Map a user category onto the taxonomy when it names one (case, '&' vs 'and'); else keep it."""
    def key(s: str) -> str:
        return re.sub(r"[^a-z]+", " ", s.lower().replace("&", " and ")).strip()

    for name in CATEGORY_NAMES:
        if key(raw) == key(name):
            return name
    return _normalise(raw)


def _prompt_from_row(text: object, category: object, where: str) -> Prompt:
    if not isinstance(text, str) or not _normalise(text):
        raise ValueError(f"{where}: empty or missing prompt")
    text = _normalise(text)
    if category is not None and not isinstance(category, str):
        raise ValueError(f"{where}: category must be a string, got {type(category).__name__}")
    if category and category.strip():
        primary = _canonical_category(category)
        labels = keyword_labels(text, primary=primary)
    else:
        labels = keyword_labels(text)
        primary = labels[0] if labels else UNCATEGORISED
        if not labels:
            labels = [UNCATEGORISED]
    return Prompt(prompt_id=prompt_id_for(text), text=text, category=primary, sub_concept="", labels=labels)


def load_prompt_file(path: str | Path) -> list[Prompt]:
    """Read a user prompt list: CSV (column `prompt`, optional `category`) or JSONL objects.

    Errors name the file and the line, so a bad row in a 400-row file is found at once.
    Duplicate prompts are rejected because prompt ids (text hashes) must be unique downstream.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        raw_text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path}: prompt file not found") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from exc

    rows: list[tuple[str, Prompt]] = []
    if suffix == ".csv":
        reader = csv.DictReader(raw_text.splitlines())
        header = [h.strip() for h in (reader.fieldnames or [])]
        if "prompt" not in header:
            raise ValueError(f"{path}: line 1: missing column 'prompt' (columns: {', '.join(header) or 'none'})")
        reader.fieldnames = header
        for record in reader:
            where = f"{path}: line {reader.line_num}"
            if None in record:
                raise ValueError(f"{where}: more fields than the header has columns")
            rows.append((where, _prompt_from_row(record.get("prompt"), record.get("category"), where)))
    elif suffix in (".jsonl", ".ndjson"):
        for line_no, line in enumerate(raw_text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path}: line {line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: bad JSON: {exc.msg}") from exc
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with key 'prompt'")
            if "prompt" not in record:
                raise ValueError(f"{where}: missing key 'prompt'")
            rows.append((where, _prompt_from_row(record["prompt"], record.get("category"), where)))
    else:
        raise ValueError(f"{path}: unsupported prompt file type {suffix!r}; use .csv or .jsonl")

    if not rows:
        raise ValueError(f"{path}: no prompts found")
    first_seen: dict[str, str] = {}
    for where, prompt in rows:
        if prompt.prompt_id in first_seen:
            raise ValueError(f"{where}: duplicate prompt (same text as {first_seen[prompt.prompt_id]})")
        first_seen[prompt.prompt_id] = where
    return [prompt for _, prompt in rows]


IMPORTED_CATEGORY = "imported"  # the category of an imported prompt whose manifest gives none


def prompts_from_import(entries: list[dict[str, Any]]) -> list[Prompt]:
    """A prompt bank from the prompts of import sources (`ImportGenerator.manifest_prompts()`):
    each entry {"prompt": text, "category": comma list or ""}; the first occurrence of a text wins.
    The category is the first item of the comma list, lower-cased ("imported" when there is none);
    it is the only label. Such prompts have no known subject (alignment variants keep their tail)."""
    bank: dict[str, Prompt] = {}
    for index, entry in enumerate(entries):
        text = entry.get("prompt")
        if not isinstance(text, str) or not _normalise(text):
            raise ValueError(f"imported prompt #{index}: empty or missing prompt text")
        text = _normalise(text)
        raw_category = entry.get("category") or ""
        if not isinstance(raw_category, str):
            raise ValueError(f"imported prompt #{index}: category must be a string, got {type(raw_category).__name__}")
        category = _normalise(raw_category.split(",")[0]).lower() or IMPORTED_CATEGORY
        prompt_id = prompt_id_for(text)
        if prompt_id not in bank:
            bank[prompt_id] = Prompt(prompt_id=prompt_id, text=text, category=category, sub_concept="",
                                     labels=[category], subject="")
    return list(bank.values())


def mismatched_prompt(prompts: list[Prompt], index: int, rng: np.random.Generator) -> Prompt:
    """Alignment negative by shuffling (3.2.3): another prompt, preferably about something else.

    Preference: no shared label > different primary category > any other prompt text.
    """
    if len(prompts) < 2:
        raise ValueError("need at least two prompts to build a mismatched pair")
    anchor = prompts[index]
    others = [p for i, p in enumerate(prompts) if i != index and p.text != anchor.text]
    if not others:
        raise ValueError("every prompt has the same text; cannot build a mismatched pair")
    anchor_labels = set(anchor.labels) | {anchor.category}
    disjoint = [p for p in others if not (set(p.labels) | {p.category}) & anchor_labels]
    different = [p for p in others if p.category != anchor.category]
    pool = disjoint or different or others
    return pool[int(rng.integers(len(pool)))]


def _strip_boosters(text: str) -> str:
    for booster in sorted(_QUALITY_BOOSTERS, key=len, reverse=True):
        text = re.sub(rf"(,\s*)?{re.escape(booster)}", "", text, flags=re.IGNORECASE)
    return _normalise(text.strip(" ,;."))


def _with_cues(text: str, cues: tuple[str, ...], rng: np.random.Generator | None, n_cues: int) -> str:
    base = _strip_boosters(text)
    if rng is None:
        chosen = list(cues[:n_cues])
    else:
        order = rng.permutation(len(cues))[:n_cues]
        chosen = [cues[int(i)] for i in sorted(order)]
    return f"{base}, {', '.join(chosen)}"


def degraded_prompt(text: str, rng: np.random.Generator | None = None, n_cues: int = 4) -> str:
    """Prompt for an AI-specific technical negative: same content plus low-fidelity cues.

    Without `rng` the first `n_cues` cues are used ("blurry, low resolution, jpeg artifacts,
    distorted"), so the result is a pure function of the text.
    """
    return _with_cues(text, LOW_FIDELITY_CUES, rng, max(1, min(n_cues, len(LOW_FIDELITY_CUES))))


def aesthetic_degraded_prompt(text: str, rng: np.random.Generator | None = None, n_cues: int = 3) -> str:
    """Prompt for an AI-specific aesthetic negative: same content, poor composition and colour cues."""
    return _with_cues(text, LOW_AESTHETIC_CUES, rng, max(1, min(n_cues, len(LOW_AESTHETIC_CUES))))


def prompt_variant(prompt: Prompt, rng: np.random.Generator) -> Prompt:
    """Alignment variant (3.2.3 AI-specific): same wording and style, a subject from another category.

    An image generated from the variant and paired with the original prompt is misaligned while
    being as well made as the positive.
    """
    other_categories = [name for name in CATEGORY_NAMES if name != prompt.category and name not in prompt.labels]
    category = CATEGORIES[other_categories[int(rng.integers(len(other_categories)))]]
    sub_concept = list(category.sub_concepts)[int(rng.integers(len(category.sub_concepts)))]
    new_subject = _pick(rng, category.sub_concepts[sub_concept])
    if prompt.subject and prompt.text.startswith(_capitalise(prompt.subject)):
        text = _capitalise(new_subject) + prompt.text[len(prompt.subject):]
    elif prompt.subject and prompt.subject in prompt.text:
        text = prompt.text.replace(prompt.subject, new_subject, 1)
    else:
        # user prompt without a known subject: keep the style tail after the first comma
        _, _, tail = prompt.text.partition(",")
        text = f"A photo of {new_subject}" + (f",{tail}" if tail else ".")
    text = _normalise(text)
    return Prompt(
        prompt_id=prompt_id_for(text),
        text=text,
        category=category.name,
        sub_concept=sub_concept,
        labels=keyword_labels(text, primary=category.name),
        subject=new_subject,
    )


def prompt_vocabulary() -> list[str]:
    """Every lower-case word the bank can produce (used to give tiny tokenizers whole-word tokens)."""
    phrases: list[str] = list(LIGHTING + CAMERA + DETAIL + TEMPLATES + LOW_FIDELITY_CUES + LOW_AESTHETIC_CUES)
    for category in CATEGORIES.values():
        phrases.extend(category.settings)
        phrases.extend(category.keywords)
        for subjects in category.sub_concepts.values():
            phrases.extend(subjects)
    words: set[str] = set()
    for phrase in phrases:
        phrase = re.sub(r"\{\w+\}", " ", phrase)
        words.update(re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", phrase.lower()))
    return sorted(words)


# Word swaps for the alignment variants of paper 3.2.3 (attribute, count, relation): each pair is
# swapped both ways, whole words only, so a variant differs from its prompt in exactly one fact.
_ATTRIBUTE_SWAPS: tuple[tuple[str, str], ...] = _pairs(_prompt_data().get("attribute_swaps"), "attribute_swaps")
_COUNT_SWAPS: tuple[tuple[str, str], ...] = _pairs(_prompt_data().get("count_swaps"), "count_swaps")
_RELATION_SWAPS: tuple[tuple[str, str], ...] = _pairs(_prompt_data().get("relation_swaps"), "relation_swaps")
VARIANT_KINDS = ("object", "attribute", "count", "relation")


def _swap_first(text: str, pairs: tuple[tuple[str, str], ...], rng: np.random.Generator) -> str | None:
    """Swap one whole-word occurrence of a listed word (either direction), or None if none occurs."""
    candidates = []
    for a, b in pairs:
        for old, new in ((a, b), (b, a)):
            match = re.search(rf"\b{re.escape(old)}\b", text, flags=re.IGNORECASE)
            if match:
                candidates.append((match, new))
    if not candidates:
        return None
    match, new = candidates[int(rng.integers(len(candidates)))]
    if match.group(0)[0].isupper():
        new = new[0].upper() + new[1:]
    return text[: match.start()] + new + text[match.end():]


def prompt_variants(prompt: Prompt, rng: np.random.Generator) -> dict[str, Prompt]:
    """Alignment variants of a prompt, by kind: "object" (another category's subject, always),
    "attribute", "count" and "relation" (one word swapped, when the prompt has one to swap)."""
    variants = {"object": prompt_variant(prompt, rng)}
    for kind, pairs in (("attribute", _ATTRIBUTE_SWAPS), ("count", _COUNT_SWAPS), ("relation", _RELATION_SWAPS)):
        text = _swap_first(prompt.text, pairs, rng)
        if text is not None and text != prompt.text:
            variants[kind] = Prompt(prompt_id=prompt_id_for(text), text=text, category=prompt.category,
                                    sub_concept=prompt.sub_concept, labels=keyword_labels(text, primary=prompt.category),
                                    subject=prompt.subject)
    return variants
