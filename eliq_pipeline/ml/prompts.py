"""Prompt bank (paper 3.2.1): a seven-category taxonomy, template-built prompts, multi-labels.

The paper asks GPT-5 for 400 prompts under category-specific rules; offline we compose them from
curated phrase lists instead (realistic content, category-aligned subjects, a length limit), which
keeps the bank deterministic for a seed and reviewable in code. Multi-labels come from rule-based
keyword matching (the paper's first step); the primary category is always a label.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

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


CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category(
            name="Indoor Scenes",
            sub_concepts={
                "living room": (
                    "a cozy living room with a grey linen sofa and a wool rug",
                    "a bright living room with a fireplace and tall bookshelves",
                    "a minimalist living room with a low wooden coffee table",
                ),
                "kitchen": (
                    "a tidy farmhouse kitchen with copper pans hanging above the counter",
                    "a modern kitchen with white cabinets and a marble island",
                    "a small apartment kitchen with herbs growing on the counter",
                ),
                "bedroom": (
                    "a calm bedroom with an unmade bed and linen curtains",
                    "a child's bedroom with a bunk bed and a toy shelf",
                    "a hotel bedroom with a neatly made bed and a reading chair",
                ),
                "library and study": (
                    "a quiet library reading room with long oak desks",
                    "a home study with a leather armchair and crowded bookshelves",
                    "a university library hallway lined with bookshelves",
                ),
                "workspace": (
                    "an open-plan office with standing desks and potted plants",
                    "a woodworking workshop interior with tools on a pegboard",
                    "a classroom with rows of desks and a green chalkboard",
                ),
            },
            settings=(
                "inside a renovated apartment",
                "in an old stone farmhouse interior",
                "inside a quiet house on a rainy day",
                "in a sunlit room with large windows",
                "in a spacious loft interior",
            ),
            keywords=(
                "living room", "kitchen", "bedroom", "library", "study", "office", "classroom",
                "workshop interior", "interior", "indoor", "sofa", "fireplace", "bookshelf", "bookshelves",
                "bed", "bunk bed", "cabinet", "counter", "desk", "armchair", "hallway", "room", "loft",
                "apartment", "house", "curtain", "rug", "chalkboard",
            ),
        ),
        Category(
            name="Urban Scenes",
            sub_concepts={
                "streets": (
                    "a narrow cobblestone street lined with cafes and bicycles",
                    "a busy downtown crosswalk with yellow taxis waiting at the light",
                    "a quiet residential street with brick townhouses",
                ),
                "skylines": (
                    "a city skyline of glass skyscrapers seen from a rooftop",
                    "a harbor skyline with cranes and office towers",
                    "a dense skyline of apartment blocks on a hillside city",
                ),
                "transit": (
                    "a subway platform with a train arriving",
                    "a historic train station hall with an arched glass roof",
                    "a red tram crossing a city bridge",
                ),
                "public spaces": (
                    "a city plaza with a fountain and pigeons",
                    "a covered market street with hanging lanterns and shop signs",
                    "a riverside promenade with benches and street lamps",
                ),
                "architecture": (
                    "a brutalist concrete building facade with repeating windows",
                    "a row of colourful storefronts with striped awnings",
                    "a graffiti-covered alley between old warehouses",
                ),
            },
            settings=(
                "in a large European city",
                "in a busy Asian metropolis",
                "in a small downtown district",
                "in an old port city",
                "on a weekday in the city centre",
            ),
            keywords=(
                "city", "street", "downtown", "crosswalk", "taxi", "skyline", "skyscraper", "rooftop",
                "harbor", "office tower", "apartment block", "subway", "train station", "tram", "bridge",
                "plaza", "fountain", "market street", "promenade", "street lamp", "building", "facade",
                "storefront", "awning", "alley", "warehouse", "townhouse", "metropolis", "port city",
                "shop sign", "city centre",
            ),
        ),
        Category(
            name="Natural Scenes",
            sub_concepts={
                "mountains": (
                    "a snow-capped mountain range above a pine forest",
                    "a rocky mountain pass with a winding trail",
                    "an alpine meadow full of wildflowers below jagged peaks",
                ),
                "water": (
                    "a calm lake reflecting the surrounding hills",
                    "a waterfall tumbling into a mossy gorge",
                    "a wide river bend through a green valley",
                ),
                "coasts": (
                    "a sandy beach with gentle waves and driftwood",
                    "rugged sea cliffs above a turquoise ocean",
                    "a rocky coastline with tide pools",
                ),
                "forests": (
                    "a misty beech forest with a carpet of fallen leaves",
                    "a tall redwood forest with ferns on the ground",
                    "a birch woodland with a narrow dirt path",
                ),
                "open land": (
                    "a desert with wind-shaped sand dunes",
                    "rolling farmland fields with a lone oak tree",
                    "a frozen tundra plain under low clouds",
                ),
            },
            settings=(
                "far from any town",
                "in a national park",
                "in early autumn",
                "on a calm spring morning",
                "in the remote wilderness",
            ),
            keywords=(
                "mountain", "peak", "alpine", "meadow", "wildflower", "forest", "woodland", "pine",
                "redwood", "birch", "beech", "fern", "lake", "hill", "waterfall", "gorge", "river",
                "valley", "beach", "wave", "ocean", "sea cliff", "coastline", "tide pool", "desert",
                "sand dune", "dune", "farmland", "oak tree", "tundra", "national park",
                "wilderness", "trail", "driftwood",
            ),
        ),
        Category(
            name="People & Activities",
            sub_concepts={
                "sports": (
                    "a young woman jogging along a path",
                    "a cyclist in a red jersey climbing a steep road",
                    "two teenagers playing basketball",
                ),
                "work and crafts": (
                    "a potter shaping clay on a spinning wheel",
                    "a carpenter measuring a plank of wood",
                    "a fisherman mending nets on a wooden dock",
                ),
                "leisure": (
                    "an elderly man reading a newspaper on a bench",
                    "a family having a picnic on a blanket",
                    "a group of friends playing chess at a folding table",
                ),
                "portraits": (
                    "a portrait of a smiling woman with curly hair",
                    "a portrait of an old farmer wearing a straw hat",
                    "a close portrait of a boy holding a kite",
                ),
                "performers": (
                    "a street musician playing an acoustic guitar",
                    "a ballet dancer stretching at the barre",
                    "a juggler performing for a small crowd",
                ),
            },
            settings=(
                "during a relaxed afternoon",
                "on an ordinary weekend",
                "with people passing in the background",
                "surrounded by friends",
                "on a breezy day",
            ),
            keywords=(
                "woman", "man", "men", "women", "boy", "girl", "child", "children", "teenager", "family",
                "friends", "people", "person", "crowd", "cyclist", "jogging", "playing", "potter",
                "carpenter", "fisherman", "farmer", "musician", "dancer", "juggler", "portrait", "smiling",
                "reading", "performing", "shaping", "measuring", "mending", "picnic",
            ),
        ),
        Category(
            name="Objects & Artifacts",
            sub_concepts={
                "everyday objects": (
                    "a ceramic teapot and two cups on a wooden tray",
                    "a pair of worn leather boots by the door",
                    "an old brass alarm clock",
                ),
                "antiques": (
                    "a vintage typewriter with a sheet of paper",
                    "an antique globe on a carved wooden stand",
                    "a collection of old pocket watches in a glass case",
                ),
                "instruments": (
                    "a violin resting on sheet music",
                    "an upright piano with a candlestick on top",
                    "a set of brass trumpets on display",
                ),
                "crafts": (
                    "a hand-thrown ceramic vase with a blue glaze",
                    "a woven basket filled with balls of yarn",
                    "a silver necklace with a green pendant",
                ),
                "tools and gadgets": (
                    "a vintage film camera with a leather strap",
                    "a set of chisels laid out on a canvas roll",
                    "a mechanical wristwatch with an open caseback",
                ),
            },
            settings=(
                "on a wooden table",
                "on a museum display shelf",
                "on a plain linen backdrop",
                "on a weathered workbench",
                "in a small antique shop",
            ),
            keywords=(
                "teapot", "cup", "tray", "boots", "clock", "typewriter", "globe", "pocket watch", "watch",
                "wristwatch", "violin", "piano", "trumpet", "sheet music", "candlestick", "vase", "glaze",
                "basket", "yarn", "necklace", "pendant", "film camera", "chisel", "antique", "vintage",
                "museum display", "display", "relic", "heirloom", "object", "ceramic", "workbench", "tool",
            ),
        ),
        Category(
            name="Food",
            sub_concepts={
                "home cooking": (
                    "a bowl of tomato soup with fresh basil and crusty bread",
                    "a plate of spaghetti with meatballs and parmesan",
                    "a roast chicken with potatoes in a cast iron pan",
                ),
                "street food": (
                    "a paper tray of tacos with lime wedges",
                    "a steaming bowl of ramen with a soft-boiled egg",
                    "skewers of grilled meat with chili sauce",
                ),
                "baking and desserts": (
                    "a freshly baked loaf of sourdough bread",
                    "a slice of strawberry cake on a porcelain plate",
                    "a basket of golden croissants",
                ),
                "fruit and vegetables": (
                    "a pile of ripe oranges and lemons",
                    "a colourful salad with avocado and cherry tomatoes",
                    "a crate of freshly picked carrots and beets",
                ),
                "drinks": (
                    "a cup of cappuccino with latte art",
                    "a glass of iced lemonade with mint leaves",
                    "a pot of green tea with small ceramic cups",
                ),
            },
            settings=(
                "served on a rustic table",
                "at a small family restaurant",
                "at a busy food market",
                "on a kitchen counter",
                "on a cafe table",
            ),
            keywords=(
                "food", "soup", "bread", "spaghetti", "meatballs", "parmesan", "chicken", "potatoes",
                "tacos", "lime", "ramen", "egg", "skewers", "grilled meat", "sauce", "sourdough", "loaf",
                "cake", "croissant", "oranges", "lemons", "salad", "avocado", "tomato", "tomatoes",
                "carrots", "beets", "cappuccino", "latte", "lemonade", "tea", "basil", "restaurant",
                "food market", "cafe", "served", "baked", "dessert", "meal",
            ),
        ),
        Category(
            name="Events",
            sub_concepts={
                "weddings": (
                    "a wedding ceremony under a flower arch",
                    "a bride and groom cutting a wedding cake",
                    "wedding guests throwing rice at the newlyweds",
                ),
                "concerts": (
                    "a rock concert with a cheering audience",
                    "a jazz band performing at an evening concert",
                    "an orchestra performing in a concert hall",
                ),
                "festivals and parades": (
                    "a lantern festival with paper lanterns floating upward",
                    "a carnival parade with costumed dancers and floats",
                    "a harvest festival with decorated stalls",
                ),
                "sports events": (
                    "runners crossing the finish line of a city marathon",
                    "a packed stadium during a football match",
                    "a sailing regatta with spectators on the shore",
                ),
                "celebrations": (
                    "a birthday party with balloons and a candle-lit cake",
                    "a graduation ceremony with caps thrown in the air",
                    "a fireworks display over a crowd celebrating the new year",
                ),
            },
            settings=(
                "during the celebration",
                "at the height of the event",
                "as the ceremony begins",
                "on the night of the festival",
                "on a festive evening",
            ),
            keywords=(
                "wedding", "bride", "groom", "newlyweds", "ceremony", "concert", "audience", "band",
                "orchestra", "festival", "lantern festival", "carnival", "parade", "floats", "marathon",
                "finish line", "stadium", "match", "regatta", "spectators", "birthday", "party",
                "balloons", "graduation", "fireworks", "celebrating", "celebration", "event", "festive",
            ),
        ),
    )
}

CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

# Generic phrases shared by every category. They deliberately contain no category keyword, so the
# multi-labels of a prompt come from its subject and setting only.
LIGHTING: tuple[str, ...] = (
    "soft morning light",
    "golden hour light",
    "overcast daylight",
    "warm late afternoon light",
    "clear midday sun",
    "blue hour twilight",
    "soft diffused light",
    "dramatic side light",
)
CAMERA: tuple[str, ...] = (
    "shot on a 35mm lens",
    "50mm lens at f/2.8",
    "wide-angle view",
    "eye-level framing",
    "shallow depth of field",
    "medium format photograph",
    "handheld documentary style",
    "telephoto compression",
)
DETAIL: tuple[str, ...] = (
    "natural colours",
    "sharp focus",
    "fine texture detail",
    "balanced composition",
    "realistic proportions",
    "true-to-life tones",
)
# {subject}, {setting}, {lighting}, {camera}, {detail}; camera/detail are dropped first to fit the limit.
TEMPLATES: tuple[str, ...] = (
    "A photo of {subject} {setting}, {lighting}, {camera}, {detail}.",
    "{Subject} {setting}, {lighting}, {detail}, {camera}.",
    "Realistic photograph of {subject} {setting}; {lighting}, {camera}.",
    "{Lighting} on {subject} {setting}, {camera}, {detail}.",
    "Documentary-style image: {subject} {setting}, {lighting}, {detail}.",
    "High-resolution photo, {subject} {setting}, {camera}, {lighting}.",
)

# Cues for AI-specific technical negatives (3.2.3: "explicitly degraded prompts that induce
# low-fidelity structures"). Quality boosters are stripped first so the prompt does not contradict itself.
LOW_FIDELITY_CUES: tuple[str, ...] = (
    "blurry",
    "low resolution",
    "jpeg artifacts",
    "distorted",
    "noisy",
    "pixelated",
    "out of focus",
    "smeared details",
)
LOW_AESTHETIC_CUES: tuple[str, ...] = (
    "awkward cropped composition",
    "dull washed-out colours",
    "cluttered background",
    "tilted horizon",
    "harsh flat lighting",
    "amateur snapshot",
)
_QUALITY_BOOSTERS: tuple[str, ...] = ("high-resolution", "sharp focus", "fine texture detail", "high-resolution photo")


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
_ATTRIBUTE_SWAPS = (("red", "blue"), ("green", "purple"), ("wooden", "metal"), ("old", "new"),
                    ("small", "huge"), ("narrow", "wide"), ("leather", "plastic"), ("glass", "concrete"),
                    ("rustic", "modern"), ("antique", "futuristic"), ("warm", "cold"), ("tidy", "messy"))
_COUNT_SWAPS = (("a pair of", "five"), ("one", "three"), ("two", "four"), ("three", "six"),
                ("a single", "a dozen"))
_RELATION_SWAPS = (("on top of", "underneath"), ("above", "below"), ("inside", "outside"),
                   ("in front of", "behind"), ("left of", "right of"), ("next to", "far from"),
                   ("hanging above", "lying under"), ("by the door", "on the roof"))
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
