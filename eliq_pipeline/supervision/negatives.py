"""Aspect-specific negatives of each positive (paper 3.2.3): conventional degradations and edits,
low-quality generators, AI-specific renders and shuffled prompts, and what could not be made."""

from __future__ import annotations

import json
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np

from eliq_pipeline.core.compute import Compute, raise_failures
from eliq_pipeline.supervision.degradations import DEGRADATIONS
from eliq_pipeline.supervision.generation import AI_SPECIFIC_METHODS
from eliq_pipeline.supervision.image_cache import Store, cached_entry, get_image, put_image, stable_hash, stable_seed
from eliq_pipeline.supervision.prompts import Prompt, mismatched_prompt

if TYPE_CHECKING:  # editors pull in torch; negatives themselves do not need it
    from eliq_pipeline.supervision.editors import Editor

# Bump when the way pixels are produced changes: old cache entries then no longer match.
DEGRADATION_CODE_VERSION = "deg-1"
TECHNICAL_METHODS = ("jpeg_recompress", "gaussian_noise")
AESTHETIC_EDIT_METHOD = "offline_aesthetic_edit"


def degrade(store: Store, positive_sha: str, method: str, level: int | None = None) -> tuple[dict[str, Any], bool]:
    """Apply a registered degradation to a stored positive; deterministic per (positive, method,
    level). `level` picks a graded severity (see degradations.LEVELS); None: the method's own range."""
    graded = () if level is None else (int(level),)  # None keeps the keys and draws of ungraded runs
    key = "cache/degradations/" + stable_hash(positive_sha, method, *graded, DEGRADATION_CODE_VERSION) + ".json"
    entry = cached_entry(store, key)
    if entry is not None:
        return entry, True
    rng = np.random.default_rng(stable_seed(positive_sha, method, *graded))
    image, params = DEGRADATIONS.get(method)(get_image(store, positive_sha), rng, **_level_kwargs(level))
    sha = put_image(store, image)
    entry = {"image_sha256": sha, "params": params}
    store.put_bytes(key, json.dumps(entry, sort_keys=True, default=float).encode())
    return entry, False


def _level_kwargs(level: int | None) -> dict[str, int]:
    return {} if level is None else {"level": int(level)}


def _conventional_plan(positive_sha: str, technical: Sequence[str], aesthetic: Sequence[str],
                       levels: Sequence[int | None], per_aspect: int) -> list[tuple[list[tuple[str, int | None]], int]]:
    """Per aspect: the (method, level) candidates for one positive in the order they are tried, and
    how many to make (all of them, or `per_aspect`). Candidates are method-major and start at a
    method picked per positive, so `per_aspect` = number of levels gives the positive one method's
    whole severity series (mild and strong of the same degradation on the same content), the
    methods cycling across positives. On supagruen-sd15 (cpu profile, same era, seed and split) the
    held-out tec label accuracy after SFT was 0.77 with severity series, 0.56 with (method, level)
    pairs drawn independently per positive."""
    plan = []
    for methods in (technical, aesthetic):
        pairs = [(method, level) for method in methods for level in levels]
        if per_aspect and len(pairs) > per_aspect:
            offset = (stable_seed(positive_sha, "conventional-pairs") % len(methods)) * len(levels)
            plan.append(([pairs[(offset + k) % len(pairs)] for k in range(len(pairs))], per_aspect))
        elif pairs:
            plan.append((pairs, len(pairs)))
    return plan


def check_methods(technical: Iterable[str], aesthetic: Iterable[str], levels: Iterable[int | None]) -> None:
    """Fail before any work when a profile names a degradation that is not registered for its
    aspect, or a severity level that does not exist."""
    from eliq_pipeline.supervision.degradations import LEVELS

    for aspect, names in (("tec", technical), ("aes", aesthetic)):
        for name in names:
            if name not in DEGRADATIONS:
                raise ValueError(f"unknown degradation {name!r} in the profile's {aspect} methods; "
                                 f"registered: {', '.join(DEGRADATIONS.names())}")
            if DEGRADATIONS.meta(name).get("aspect") != aspect:
                raise ValueError(f"degradation {name!r} degrades aspect {DEGRADATIONS.meta(name).get('aspect')!r}, "
                                 f"not {aspect!r}")
    bad = [level for level in levels if level is not None and level not in LEVELS]
    if bad:
        raise ValueError(f"unknown severity level(s) {bad}; known: {list(LEVELS)} (or None: ungraded)")


def sampler_skips(positives: Sequence[dict[str, Any]], no_sampler: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The AI-specific negatives that cannot be made because the positive's generator has no
    sampler (`no_sampler`: generator id -> reason), as 'ai_specific/<method>' -> count, reason and
    count per generator: one per method for every positive of such a generator."""
    per_generator: dict[str, int] = {}
    for positive in positives:
        if positive["generator"] in no_sampler:
            per_generator[positive["generator"]] = per_generator.get(positive["generator"], 0) + 1
    if not per_generator:
        return {}
    reason = "; ".join(no_sampler[gid] for gid in sorted(per_generator))
    return {f"ai_specific/{method}": {"count": sum(per_generator.values()), "reason": reason,
                                      "per_generator": dict(sorted(per_generator.items()))}
            for method in AI_SPECIFIC_METHODS}


def low_quality_skips(positives: Sequence[dict[str, Any]], skipped: Sequence[dict[str, str]]) -> dict[str, dict[str, Any]]:
    """Low-quality-generator negatives missing for a positive because that generator (an `import`
    source) had no usable image for the prompt, as 'ai_specific/low_quality_generator' -> count,
    reason and count per generator. Prompts without a positive are not counted: no negative was due."""
    positives_of: dict[str, int] = {}  # prompt -> positives that would have had the negative
    for positive in positives:
        key = _normalise_text(positive["prompt"])
        positives_of[key] = positives_of.get(key, 0) + 1
    per_generator: dict[str, int] = {}
    for skip in skipped:
        count = positives_of.get(_normalise_text(skip["prompt"]), 0)
        if count:
            per_generator[skip["generator"]] = per_generator.get(skip["generator"], 0) + count
    if not per_generator:
        return {}
    reason = "; ".join(f"low-quality generator {gid!r} (import backend) has no usable image for the prompt"
                       for gid in sorted(per_generator))
    return {"ai_specific/low_quality_generator": {"count": sum(per_generator.values()), "reason": reason,
                                                  "per_generator": dict(sorted(per_generator.items()))}}


def _normalise_text(text: str) -> str:
    return " ".join(text.split())


def _negative_row(positive: dict[str, Any], aspect: str, family: str, method: str, params: dict[str, Any],
                  image_sha: str | None, prompt_id: str | None = None, prompt: str | None = None,
                  severity: int | None = None) -> dict[str, Any]:
    """One negative. Alignment negatives are an (image, prompt) pair: image None means I+ itself.
    `severity` is the graded level of a conventional degradation (None: ungraded)."""
    return {"positive_sha256": positive["image_sha256"], "prompt_id": positive["prompt_id"],
            "generator": positive["generator"], "aspect": aspect, "family": family, "method": method,
            "params": json.dumps(params, sort_keys=True, default=float), "image_sha256": image_sha,
            "mismatched_prompt_id": prompt_id, "mismatched_prompt": prompt, "severity": severity}


EDIT_CODE_VERSION = "edit-1"


def _edit_key(positive_sha: str, editor_id: str, revision: str) -> str:
    return "cache/edits/" + stable_hash(positive_sha, editor_id, revision, EDIT_CODE_VERSION) + ".json"


def _edit_instruction(positive_sha: str, instructions: list[str] | None) -> tuple[str, int]:
    """The instruction and seed of a positive's edit: a function of the positive only."""
    from eliq_pipeline.supervision.editors import choose_instruction

    seed = stable_seed(positive_sha, "edit") % (2**31)
    return choose_instruction(seed, instructions), seed


def _put_edit(store: Store, key: str, editor_id: str, image: Any, params: dict[str, Any]) -> dict[str, Any]:
    entry = {"image_sha256": put_image(store, image), "params": {"editor": editor_id, **params}}
    store.put_bytes(key, json.dumps(entry, sort_keys=True, default=float).encode())
    return entry


def edit_negative(store: Store, positive_sha: str, editor: Editor, editor_id: str) -> tuple[dict[str, Any], bool]:
    """Conventional aesthetic negative: an instruction edit degrading composition or colour while
    keeping the content; the instruction and seed are a function of the positive (cached)."""
    key = _edit_key(positive_sha, editor_id, editor.model_revision())
    entry = cached_entry(store, key)
    if entry is not None:
        return entry, True
    instruction, seed = _edit_instruction(positive_sha, getattr(editor, "instructions", None))
    image, params = editor.edit(get_image(store, positive_sha), instruction, seed)
    return _put_edit(store, key, editor_id, image, params), False


def edit_shard(editor: Editor, items: list[tuple[Any, str, int]]) -> list[tuple[Any, dict[str, Any]]]:
    """One shard of model edits: items (image, instruction, seed) -> (edited image, params)."""
    return [editor.edit(image, instruction, seed) for image, instruction, seed in items]


def precompute_edits(store: Store, positive_shas: Iterable[str], editor_id: str, revision: str,
                     load_editor: Callable[[], Editor], compute: Compute, shard_size: int = 4) -> int:
    """Render the model edits that `edit_negative` would make and are not cached yet, on `compute`
    (a Ray cluster: the driver never loads the editor), into the same cache entries; then
    `build_negatives` with a :class:`PrecomputedEditor` finds every one cached. Returns how many
    were rendered. A positive whose edit fails is named after all others are stored."""
    todo = [(sha, _edit_key(sha, editor_id, revision)) for sha in dict.fromkeys(positive_shas)]
    todo = [(sha, key) for sha, key in todo if cached_entry(store, key) is None]
    keys = [key for _, key in todo]

    def shards():  # positives are decoded when their shard is sent
        for start in range(0, len(todo), shard_size):
            yield [(start + k, get_image(store, sha), *_edit_instruction(sha, None))
                   for k, (sha, _) in enumerate(todo[start : start + shard_size])]

    def store_edits(_shard: int, items: list, results: list) -> None:
        for (position, *_), (image, params) in zip(items, results):
            _put_edit(store, keys[position], editor_id, image, params)

    failures = compute.map_shards(load_editor, partial(_strip_position, edit_shard), shards(), store_edits,
                                  describe=lambda item: f"positive {todo[item[0]][0]}")
    raise_failures(failures, f"model edits ({editor_id})")
    return len(todo)


def _strip_position(work: Callable[[Any, list], list], model: Any, items: list[tuple]) -> list:
    return work(model, [item[1:] for item in items])


class PrecomputedEditor:
    """An editor whose edits `precompute_edits` already cached: it has a revision (the cache key)
    and never edits (the model lives on the compute workers, not here)."""

    instructions = None  # as the diffusers editor: the default instruction list

    def __init__(self, revision: str) -> None:
        self.revision = revision

    def model_revision(self) -> str:
        return self.revision

    def edit(self, image: Any, instruction: str, seed: int) -> tuple[Any, dict[str, Any]]:
        raise RuntimeError("this edit was not precomputed (precompute_edits runs before build_negatives)")


def build_negatives(
    store: Store,
    positives: Sequence[dict[str, Any]],
    prompts: Sequence[Prompt],
    low_quality: Sequence[dict[str, Any]],
    seed: int,
    ai_generated: Sequence[dict[str, Any]] = (),
    technical_methods: Iterable[str] = TECHNICAL_METHODS,
    aesthetic_methods: Iterable[str] | None = None,
    editors: Sequence[tuple[str, str, Editor]] = (),
    levels: Sequence[int | None] = (None,),
    per_aspect: int = 0,
    no_effect: list[dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Negatives per positive, tagged aspect x family x method x params:
    conventional technical (repeated JPEG, Gaussian noise), conventional aesthetic (the editor),
    conventional alignment (a shuffled prompt, preferring another category); AI-specific:
    the era's low-quality generators (aes) and the rows of `ai_generated` (see AI_SPECIFIC_METHODS).
    With `editors` (method, id, editor), the conventional aesthetic negatives are their instruction
    edits, plus `aesthetic_methods` only when those are given explicitly (default: the offline edit
    without editors, nothing with them). Every conventional degradation is made once per severity
    of `levels` (None: the method's ungraded range); with `per_aspect` > 0 only that many
    (method, level) pairs per positive and aspect, cycling through them from a per-positive offset
    so that every pair is used equally across positives (the tuples use a few per positive; making
    all of them is most of the supervision time on CPU). A degradation that leaves the positive
    unchanged (desaturating a black-and-white image) is no negative: it is dropped, appended to
    `no_effect`, and the next (method, level) of that aspect is made instead.
    `progress(done, total)` is called after each positive.
    Returns rows, created count, reused count (degradations; generated images are counted upstream)."""
    if aesthetic_methods is None:
        aesthetic_methods = () if editors else (AESTHETIC_EDIT_METHOD,)
    technical_methods, aesthetic_methods = tuple(technical_methods), tuple(aesthetic_methods)
    check_methods(technical_methods, aesthetic_methods, levels)
    by_id = {p.prompt_id: i for i, p in enumerate(prompts)}
    low_by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in low_quality:
        low_by_prompt.setdefault(row["prompt_id"], []).append(row)
    ai_by_positive: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in ai_generated:
        ai_by_positive.setdefault((row["prompt_id"], row["generator"]), []).append(row)
    rows: list[dict[str, Any]] = []
    created = reused = 0
    for done, positive in enumerate(positives, 1):
        for candidates, wanted in _conventional_plan(positive["image_sha256"], technical_methods, aesthetic_methods,
                                                     levels, per_aspect):
            made = 0
            for method, level in candidates:
                if made == wanted:
                    break
                entry, was_cached = degrade(store, positive["image_sha256"], method, level)
                reused += was_cached
                created += not was_cached
                if entry["image_sha256"] == positive["image_sha256"]:
                    if no_effect is not None:
                        no_effect.append({"positive_sha256": positive["image_sha256"], "method": method, "level": level})
                    continue
                meta = DEGRADATIONS.meta(method)
                rows.append(_negative_row(positive, meta["aspect"], meta["family"], method, entry["params"],
                                          entry["image_sha256"], severity=level))
                made += 1
        for method, editor_id, editor in editors:
            entry, was_cached = edit_negative(store, positive["image_sha256"], editor, editor_id)
            reused += was_cached
            created += not was_cached
            rows.append(_negative_row(positive, "aes", "conventional", method, entry["params"], entry["image_sha256"]))
        for low in low_by_prompt.get(positive["prompt_id"], []):
            rows.append(_negative_row(positive, "aes", "ai_specific", "low_quality_generator",
                                      {"generator": low["generator"], "seed": low["seed"], "steps": low["steps"]},
                                      low["image_sha256"]))
        for generated in ai_by_positive.get((positive["prompt_id"], positive["generator"]), []):
            method = generated["method"]
            params = {"prompt_used": generated["prompt_used"], **json.loads(generated.get("method_params") or "{}")}
            if AI_SPECIFIC_METHODS[method] == "ali":  # (I', p): the variant's image with the original prompt
                rows.append(_negative_row(positive, "ali", "ai_specific", method, params, generated["image_sha256"],
                                          positive["prompt_id"], positive["prompt"]))
            else:
                rows.append(_negative_row(positive, AI_SPECIFIC_METHODS[method], "ai_specific", method, params,
                                          generated["image_sha256"]))
        rng = np.random.default_rng(stable_seed(seed, positive["image_sha256"], "shuffle"))
        other = mismatched_prompt(list(prompts), by_id[positive["prompt_id"]], rng)
        rows.append(_negative_row(positive, "ali", "conventional", "shuffled_prompt", {"seed": seed}, None,
                                  other.prompt_id, other.text))
        if progress is not None:
            progress(done, len(positives))
    for row in rows:
        graded = () if row["severity"] is None else (row["severity"],)  # ungraded ids stay as they were
        row["negative_id"] = stable_hash(row["positive_sha256"], row["method"], row["image_sha256"],
                                         row["mismatched_prompt_id"], *graded, length=16)
    return rows, created, reused
