"""Label-free supervision (paper 3.2): positives, aspect-specific negatives and comparison tuples.

Every image is content-addressed in the artifact store (`images/<sha[:2]>/<sha>.png`), and every
generation or degradation has a cache entry keyed by what determines its pixels, so:
  * an image of a generator shared by two eras is generated once and reused;
  * a run killed midway resumes: everything finished before the crash is found in the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from eliq_pipeline.ml.atomic import staged_dir
from eliq_pipeline.ml.degradations import DEGRADATIONS
from eliq_pipeline.ml.images import decode_image, png_bytes, sha256_bytes
from eliq_pipeline.ml.prompts import (
    Prompt, aesthetic_degraded_prompt, degraded_prompt, mismatched_prompt, prompt_variants,
)

if TYPE_CHECKING:  # editors pull in torch; supervision itself does not need it
    from eliq_pipeline.ml.editors import Editor

# Bump when the way pixels are produced changes: old cache entries then no longer match.
GENERATION_CODE_VERSION = "gen-1"
DEGRADATION_CODE_VERSION = "deg-1"
TECHNICAL_METHODS = ("jpeg_recompress", "gaussian_noise")
AESTHETIC_EDIT_METHOD = "offline_aesthetic_edit"


class Store(Protocol):
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...


class Generator(Protocol):
    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...
    def model_revision(self) -> str: ...


def stable_hash(*parts: Any, length: int = 32) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:length]


def stable_seed(*parts: Any) -> int:
    return int(stable_hash(*parts, length=8), 16)


def image_key(sha: str) -> str:
    return f"images/{sha[:2]}/{sha}.png"


def put_image(store: Store, image: Image.Image) -> str:
    data = png_bytes(image)
    sha = sha256_bytes(data)
    if not store.exists(image_key(sha)):
        store.put_bytes(image_key(sha), data)
    return sha


def get_image(store: Store, sha: str) -> Image.Image:
    return decode_image(store.get_bytes(image_key(sha)), name=image_key(sha))


def _cached(store: Store, cache_key: str) -> dict[str, Any] | None:
    """A cache entry counts only if the image it points to is really there."""
    if not store.exists(cache_key):
        return None
    entry = json.loads(store.get_bytes(cache_key))
    return entry if store.exists(image_key(entry["image_sha256"])) else None


@dataclass(frozen=True)
class GenerationRequest:
    generator_id: str
    prompt: Prompt
    params: dict[str, Any]  # steps, guidance, height, width, seed (+ anything backend-specific)
    prompt_text: str | None = None  # defaults to prompt.text (degraded-prompt variants override it)
    stop_step: int | None = None  # decode the latents after this many steps (premature decoding)

    @property
    def text(self) -> str:
        return self.prompt_text or self.prompt.text


def generate_images(
    store: Store,
    requests: Sequence[GenerationRequest],
    load_generator: Callable[[str], Generator],
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Generate (or reuse) one image per request. Returns manifest rows, generated count, reused count.

    Cache entries are written right after each batch, so a crash loses at most one batch. A
    backend that cannot serve a prompt (an `import` manifest without a usable image for it) is
    skipped, not fatal: the request is appended to `skipped` with the reason.
    """
    rows, generated = _generate_aligned(store, requests, load_generator, batch_size, progress, skipped)
    done_rows = [row for row in rows if row is not None]
    return done_rows, generated, len(done_rows) - generated


def _generate_aligned(
    store: Store,
    requests: Sequence[GenerationRequest],
    load_generator: Callable[[str], Generator],
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any] | None], int]:
    """`generate_images`, with one entry per request (None where the request was skipped)."""
    rows: list[dict[str, Any] | None] = [None] * len(requests)
    pending: dict[str, list[int]] = {}
    revisions: dict[str, str] = {}
    generators: dict[str, Generator] = {}
    keys: list[str] = []

    def generator(gid: str) -> Generator:
        if gid not in generators:
            generators[gid] = load_generator(gid)
            revisions[gid] = generators[gid].model_revision()
        return generators[gid]

    for index, request in enumerate(requests):
        backend = generator(request.generator_id)
        if hasattr(backend, "has_image") and not backend.has_image(request.text):
            if skipped is not None:
                reason = backend.skip_reason(request.text) if hasattr(backend, "skip_reason") else None
                skipped.append({"generator": request.generator_id, "prompt": request.text,
                                "reason": reason or "not in the import manifest"})
            keys.append("")
            continue
        parts = [request.generator_id, revisions[request.generator_id], request.text, request.params]
        if request.stop_step is not None:
            parts.append({"stop_step": request.stop_step})
        key = "cache/generations/" + stable_hash(*parts, GENERATION_CODE_VERSION) + ".json"
        keys.append(key)
        entry = _cached(store, key)
        if entry is not None:
            rows[index] = _generation_row(request, revisions, entry["image_sha256"], key, reused=True)
        else:
            pending.setdefault((request.generator_id, request.stop_step), []).append(index)

    generated = 0
    done = len(requests) - sum(len(v) for v in pending.values())
    for (gid, stop_step), indices in pending.items():
        for start in range(0, len(indices), max(1, batch_size)):
            chunk = indices[start : start + max(1, batch_size)]
            texts = [requests[i].text for i in chunk]
            seeds = [int(requests[i].params["seed"]) for i in chunk]
            extra = {} if stop_step is None else {"stop_step": stop_step}
            images = generator(gid).generate(texts, seeds, **extra)
            for i, image in zip(chunk, images):
                sha = put_image(store, image)
                store.put_bytes(keys[i], json.dumps({"image_sha256": sha, "generator": gid}).encode())
                rows[i] = _generation_row(requests[i], revisions, sha, keys[i], reused=False)
                generated += 1
            done += len(chunk)
            if progress:
                progress(done, len(requests))
    return rows, generated


def _generation_row(
    request: GenerationRequest, revisions: dict[str, str], sha: str, key: str, reused: bool
) -> dict[str, Any]:
    params = request.params
    return {
        "prompt_id": request.prompt.prompt_id,
        "prompt": request.prompt.text,
        "prompt_used": request.text,
        "stop_step": request.stop_step,
        "category": request.prompt.category,
        "generator": request.generator_id,
        "model_revision": revisions[request.generator_id],
        "seed": int(params["seed"]),
        "steps": int(params.get("steps", 0)),
        "guidance": float(params.get("guidance", 0.0)),
        "height": int(params.get("height", 0)),
        "width": int(params.get("width", 0)),
        "image_sha256": sha,
        "cache_key": key,
        "reused": reused,
    }


def degrade(store: Store, positive_sha: str, method: str) -> tuple[dict[str, Any], bool]:
    """Apply a registered degradation to a stored positive; deterministic per (positive, method)."""
    key = "cache/degradations/" + stable_hash(positive_sha, method, DEGRADATION_CODE_VERSION) + ".json"
    entry = _cached(store, key)
    if entry is not None:
        return entry, True
    rng = np.random.default_rng(stable_seed(positive_sha, method))
    image, params = DEGRADATIONS.get(method)(get_image(store, positive_sha), rng)
    sha = put_image(store, image)
    entry = {"image_sha256": sha, "params": params}
    store.put_bytes(key, json.dumps(entry, sort_keys=True, default=float).encode())
    return entry, False


# AI-specific negatives rendered by the positive's own generator (paper 3.2.3), as
# method -> aspect. Same generator and seed as the positive: only the prompt or the schedule differs.
AI_SPECIFIC_METHODS = {
    "degraded_prompt": "tec",     # explicitly degraded prompt -> low-fidelity structures
    "premature_decode": "tec",    # intermediate latents decoded early
    "appearance_prompt": "aes",   # prompt modified towards poor composition / colour
    "variant_prompt": "ali",      # a prompt variant rendered, paired with the original prompt
}
FAMILIES = ("conventional", "ai_specific")


def variants_for(prompt: Prompt) -> dict[str, Prompt]:
    """The alignment variants of a prompt (object / attribute / count / relation), deterministic."""
    return prompt_variants(prompt, np.random.default_rng(stable_seed(prompt.prompt_id, "variants")))


def ai_specific_requests(
    positive_requests: Sequence[GenerationRequest], premature_fraction: float = 0.34
) -> list[tuple[GenerationRequest, str, dict[str, Any]]]:
    """For every positive request: (request, method, params) of each AI-specific negative."""
    out: list[tuple[GenerationRequest, str, dict[str, Any]]] = []
    for request in positive_requests:
        rng = np.random.default_rng(stable_seed(request.prompt.prompt_id, request.generator_id, "ai_specific"))
        text = request.prompt.text
        steps = int(request.params.get("steps") or 1)
        variants = variants_for(request.prompt)
        kind = sorted(variants)[int(rng.integers(len(variants)))]
        variant = variants[kind]
        out += [
            (replace(request, prompt_text=degraded_prompt(text, rng)), "degraded_prompt", {}),
            (replace(request, stop_step=max(1, round(steps * premature_fraction))), "premature_decode",
             {"stop_step": max(1, round(steps * premature_fraction)), "steps": steps}),
            (replace(request, prompt_text=aesthetic_degraded_prompt(text, rng)), "appearance_prompt", {}),
            (replace(request, prompt_text=variant.text), "variant_prompt",
             {"variant_prompt_id": variant.prompt_id, "variant_kind": kind}),
        ]
    return out


def generate_ai_specific(
    store: Store,
    planned: Sequence[tuple[GenerationRequest, str, dict[str, Any]]],
    load_generator: Callable[[str], Generator],
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Render the planned AI-specific negatives (see `ai_specific_requests`); each row carries its
    `method` and `method_params`. A skipped request drops only its own row (rows stay matched to
    their methods). Returns rows, generated count, reused count."""
    aligned, generated = _generate_aligned(store, [r for r, _, _ in planned], load_generator, batch_size,
                                           progress, skipped)
    rows = []
    for row, (_, method, params) in zip(aligned, planned):
        if row is not None:
            rows.append({**row, "method": method, "method_params": json.dumps(params)})
    return rows, generated, len(rows) - generated


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
                  image_sha: str | None, prompt_id: str | None = None, prompt: str | None = None) -> dict[str, Any]:
    """One negative. Alignment negatives are an (image, prompt) pair: image None means I+ itself."""
    return {"positive_sha256": positive["image_sha256"], "prompt_id": positive["prompt_id"],
            "generator": positive["generator"], "aspect": aspect, "family": family, "method": method,
            "params": json.dumps(params, sort_keys=True, default=float), "image_sha256": image_sha,
            "mismatched_prompt_id": prompt_id, "mismatched_prompt": prompt}


EDIT_CODE_VERSION = "edit-1"


def edit_negative(store: Store, positive_sha: str, editor: Editor, editor_id: str) -> tuple[dict[str, Any], bool]:
    """Conventional aesthetic negative: an instruction edit degrading composition or colour while
    keeping the content; the instruction and seed are a function of the positive (cached)."""
    from eliq_pipeline.ml.editors import choose_instruction

    key = "cache/edits/" + stable_hash(positive_sha, editor_id, editor.model_revision(), EDIT_CODE_VERSION) + ".json"
    entry = _cached(store, key)
    if entry is not None:
        return entry, True
    seed = stable_seed(positive_sha, "edit") % (2**31)
    instruction = choose_instruction(seed, getattr(editor, "instructions", None))
    image, params = editor.edit(get_image(store, positive_sha), instruction, seed)
    entry = {"image_sha256": put_image(store, image), "params": {"editor": editor_id, **params}}
    store.put_bytes(key, json.dumps(entry, sort_keys=True, default=float).encode())
    return entry, False


def build_negatives(
    store: Store,
    positives: Sequence[dict[str, Any]],
    prompts: Sequence[Prompt],
    low_quality: Sequence[dict[str, Any]],
    seed: int,
    ai_generated: Sequence[dict[str, Any]] = (),
    technical_methods: Iterable[str] = TECHNICAL_METHODS,
    aesthetic_methods: Iterable[str] = (AESTHETIC_EDIT_METHOD,),
    editors: Sequence[tuple[str, str, Editor]] = (),
) -> tuple[list[dict[str, Any]], int, int]:
    """Negatives per positive, tagged aspect x family x method x params:
    conventional technical (repeated JPEG, Gaussian noise), conventional aesthetic (the editor),
    conventional alignment (a shuffled prompt, preferring another category); AI-specific:
    the era's low-quality generators (aes) and the rows of `ai_generated` (see AI_SPECIFIC_METHODS).
    With `editors` (method, id, editor), the conventional aesthetic negatives are their instruction
    edits instead of `aesthetic_methods`.
    Returns rows, created count, reused count (degradations; generated images are counted upstream)."""
    if editors:
        aesthetic_methods = ()
    by_id = {p.prompt_id: i for i, p in enumerate(prompts)}
    low_by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in low_quality:
        low_by_prompt.setdefault(row["prompt_id"], []).append(row)
    ai_by_positive: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in ai_generated:
        ai_by_positive.setdefault((row["prompt_id"], row["generator"]), []).append(row)
    rows: list[dict[str, Any]] = []
    created = reused = 0
    for positive in positives:
        for method in [*technical_methods, *aesthetic_methods]:
            entry, was_cached = degrade(store, positive["image_sha256"], method)
            reused += was_cached
            created += not was_cached
            meta = DEGRADATIONS.meta(method)
            rows.append(_negative_row(positive, meta["aspect"], meta["family"], method, entry["params"], entry["image_sha256"]))
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
    for row in rows:
        row["negative_id"] = stable_hash(row["positive_sha256"], row["method"], row["image_sha256"], row["mismatched_prompt_id"], length=16)
    return rows, created, reused


def heldout_prompt_ids(prompt_ids: Iterable[str], fraction: float, seed: int) -> set[str]:
    """A prompt-disjoint held-out split, deterministic for the era seed."""
    ordered = sorted(set(prompt_ids), key=lambda pid: stable_hash(seed, pid))
    count = max(1, round(len(ordered) * fraction)) if ordered else 0
    return set(ordered[:count])


def build_tuples(
    positives: Sequence[dict[str, Any]],
    negatives: Sequence[dict[str, Any]],
    heldout_fraction: float,
    seed: int,
    tuples_per_positive: int,
    families: Iterable[str] = FAMILIES,
    exclude_methods: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """(I+, I-tec, I-aes, p, p-ali) rows, cycling through the available negative methods so that
    every family and method is represented. `families` selects conventional-only / AI-specific-only
    supervision (the ablation of Table 4); `exclude_methods` drops single methods."""
    families, excluded = set(families), set(exclude_methods)
    by_positive: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in negatives:
        if row["family"] in families and row["method"] not in excluded:
            by_positive.setdefault(row["positive_sha256"], {}).setdefault(row["aspect"], []).append(row)
    heldout = heldout_prompt_ids((p["prompt_id"] for p in positives), heldout_fraction, seed)
    tuples = []
    for positive in positives:
        groups = by_positive.get(positive["image_sha256"], {})
        missing = [aspect for aspect in ("tec", "aes", "ali") if not groups.get(aspect)]
        if missing:
            raise ValueError(f"positive {positive['image_sha256'][:12]} (prompt {positive['prompt_id']}) has no "
                             f"{missing} negatives in families {sorted(families)}")
        offset = stable_seed(seed, positive["image_sha256"])
        for k in range(tuples_per_positive):
            tec = groups["tec"][(offset + k) % len(groups["tec"])]
            aes = groups["aes"][(offset // 7 + k) % len(groups["aes"])]
            ali = groups["ali"][k % len(groups["ali"])]
            tuples.append({
                "tuple_id": stable_hash(positive["image_sha256"], tec["negative_id"], aes["negative_id"], ali["negative_id"], length=16),
                "split": "heldout" if positive["prompt_id"] in heldout else "train",
                "prompt_id": positive["prompt_id"],
                "prompt": positive["prompt"],
                "generator": positive["generator"],
                "positive_sha256": positive["image_sha256"],
                "tec_negative_id": tec["negative_id"], "tec_sha256": tec["image_sha256"],
                "tec_method": tec["method"], "tec_family": tec["family"],
                "aes_negative_id": aes["negative_id"], "aes_sha256": aes["image_sha256"],
                "aes_method": aes["method"], "aes_family": aes["family"],
                "ali_negative_id": ali["negative_id"], "ali_method": ali["method"], "ali_family": ali["family"],
                # the alignment-negative pair (ali_sha256, mismatched_prompt): I+ with a shuffled
                # prompt, or (AI-specific) a prompt variant's image with the original prompt
                "ali_sha256": ali["image_sha256"] or positive["image_sha256"],
                "mismatched_prompt_id": ali["mismatched_prompt_id"], "mismatched_prompt": ali["mismatched_prompt"],
            })
    return tuples


def count_by(rows: Iterable[dict[str, Any]], *fields: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        key = "/".join(str(row[f]) for f in fields)
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def resolve_local_model(model: str, models_dir: Path, builder: Callable[[str, Path, int], Path], init_seed: int = 0) -> str:
    """'tiny:<arch>' -> a toy model saved once under models_dir (then loaded like any local path)."""
    if not model.startswith("tiny:"):
        return model
    arch = model.split(":", 1)[1]
    target = Path(models_dir) / f"tiny-{arch}-{init_seed}"
    if not (target / "_COMPLETE").exists():
        with staged_dir(target) as staging:
            builder(arch, staging, init_seed)  # builders publish atomically onto the (empty) staging folder
            (staging / "_COMPLETE").write_text("ok")
    return str(target)


GENERATION_PARAM_KEYS = ("steps", "guidance", "height", "width", "seed")


def generation_params(entry_params: dict[str, Any], defaults: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
    """Profile defaults, overridden by the generator's params; the seed is per prompt (not per era)
    so that a generator shared by two eras produces the very same image for the same prompt."""
    params = {**defaults, **{k: v for k, v in entry_params.items() if k in GENERATION_PARAM_KEYS}}
    params["seed"] = stable_seed(prompt.text, int(params.get("seed", 0))) % (2**31)
    return params


def preview_png(store: Store, positive: dict[str, Any], negatives: Sequence[dict[str, Any]], size: int = 128) -> bytes:
    """A strip: the positive, then each image negative of it, labelled aspect/method."""
    from PIL import ImageDraw

    tiles = [(get_image(store, positive["image_sha256"]), "positive")]
    tiles += [(get_image(store, n["image_sha256"]), f"{n['aspect']}/{n['method']}") for n in negatives if n["image_sha256"]]
    strip = Image.new("RGB", (size * len(tiles), size + 14), "white")
    draw = ImageDraw.Draw(strip)
    for index, (image, label) in enumerate(tiles):
        strip.paste(image.resize((size, size)), (index * size, 14))
        draw.text((index * size + 2, 1), label[:22], fill="black")
    return png_bytes(strip)


def preview_markdown(png: bytes, prompt: str) -> str:
    import base64

    return f"Prompt: {prompt}\n\n![negatives of one positive](data:image/png;base64,{base64.b64encode(png).decode()})"
