"""Label-free supervision (paper 3.2): positives, aspect-specific negatives and comparison tuples.

Every image is content-addressed in the artifact store (`images/<sha[:2]>/<sha>.png`), and every
generation or degradation has a cache entry keyed by what determines its pixels, so:
  * an image of a generator shared by two eras is generated once and reused;
  * a run killed midway resumes: everything finished before the crash is found in the cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from eliq_pipeline.ml.degradations import DEGRADATIONS
from eliq_pipeline.ml.images import decode_image, png_bytes, sha256_bytes
from eliq_pipeline.ml.prompts import Prompt, mismatched_prompt

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


def generate_images(
    store: Store,
    requests: Sequence[GenerationRequest],
    load_generator: Callable[[str], Generator],
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Generate (or reuse) one image per request. Returns manifest rows, generated count, reused count.

    Cache entries are written right after each batch, so a crash loses at most one batch.
    """
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
        generator(request.generator_id)
        text = request.prompt_text or request.prompt.text
        key = "cache/generations/" + stable_hash(
            request.generator_id, revisions[request.generator_id], text, request.params, GENERATION_CODE_VERSION
        ) + ".json"
        keys.append(key)
        entry = _cached(store, key)
        if entry is not None:
            rows[index] = _generation_row(request, revisions, entry["image_sha256"], key, reused=True)
        else:
            pending.setdefault(request.generator_id, []).append(index)

    generated = 0
    done = len(requests) - sum(len(v) for v in pending.values())
    for gid, indices in pending.items():
        for start in range(0, len(indices), max(1, batch_size)):
            chunk = indices[start : start + max(1, batch_size)]
            texts = [requests[i].prompt_text or requests[i].prompt.text for i in chunk]
            seeds = [int(requests[i].params["seed"]) for i in chunk]
            images = generator(gid).generate(texts, seeds)
            for i, image in zip(chunk, images):
                sha = put_image(store, image)
                store.put_bytes(keys[i], json.dumps({"image_sha256": sha, "generator": gid}).encode())
                rows[i] = _generation_row(requests[i], revisions, sha, keys[i], reused=False)
                generated += 1
            done += len(chunk)
            if progress:
                progress(done, len(requests))
    return [row for row in rows if row is not None], generated, len(requests) - generated


def _generation_row(
    request: GenerationRequest, revisions: dict[str, str], sha: str, key: str, reused: bool
) -> dict[str, Any]:
    params = request.params
    return {
        "prompt_id": request.prompt.prompt_id,
        "prompt": request.prompt.text,
        "prompt_used": request.prompt_text or request.prompt.text,
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


def build_negatives(
    store: Store,
    positives: Sequence[dict[str, Any]],
    prompts: Sequence[Prompt],
    low_quality: Sequence[dict[str, Any]],
    seed: int,
    technical_methods: Iterable[str] = TECHNICAL_METHODS,
    aesthetic_methods: Iterable[str] = (AESTHETIC_EDIT_METHOD,),
) -> tuple[list[dict[str, Any]], int, int]:
    """Negatives per positive: technical (conventional degradations), aesthetic (offline edit and
    the era's low-quality generators, AI-specific), and alignment (a shuffled prompt, preferring
    another category). Returns rows, created count, reused count."""
    by_id = {p.prompt_id: i for i, p in enumerate(prompts)}
    low_by_prompt: dict[str, list[dict[str, Any]]] = {}
    for row in low_quality:
        low_by_prompt.setdefault(row["prompt_id"], []).append(row)
    rows: list[dict[str, Any]] = []
    created = reused = 0
    for positive in positives:
        base = {"positive_sha256": positive["image_sha256"], "prompt_id": positive["prompt_id"], "generator": positive["generator"]}
        for method in [*technical_methods, *aesthetic_methods]:
            entry, was_cached = degrade(store, positive["image_sha256"], method)
            reused += was_cached
            created += not was_cached
            meta = DEGRADATIONS.meta(method)
            rows.append({**base, "aspect": meta["aspect"], "family": meta["family"], "method": method,
                         "params": json.dumps(entry["params"], sort_keys=True, default=float),
                         "image_sha256": entry["image_sha256"], "mismatched_prompt_id": None, "mismatched_prompt": None})
        for low in low_by_prompt.get(positive["prompt_id"], []):
            rows.append({**base, "aspect": "aes", "family": "ai_specific", "method": "low_quality_generator",
                         "params": json.dumps({"generator": low["generator"], "seed": low["seed"], "steps": low["steps"]}),
                         "image_sha256": low["image_sha256"], "mismatched_prompt_id": None, "mismatched_prompt": None})
        rng = np.random.default_rng(stable_seed(seed, positive["image_sha256"], "shuffle"))
        other = mismatched_prompt(list(prompts), by_id[positive["prompt_id"]], rng)
        rows.append({**base, "aspect": "ali", "family": "conventional", "method": "shuffled_prompt",
                     "params": json.dumps({"seed": seed}), "image_sha256": None,
                     "mismatched_prompt_id": other.prompt_id, "mismatched_prompt": other.text})
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
) -> list[dict[str, Any]]:
    """(I+, I-tec, I-aes, p, p-ali) rows, cycling through the available negative methods so that
    every family and method is represented."""
    by_positive: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in negatives:
        by_positive.setdefault(row["positive_sha256"], {}).setdefault(row["aspect"], []).append(row)
    heldout = heldout_prompt_ids((p["prompt_id"] for p in positives), heldout_fraction, seed)
    tuples = []
    for positive in positives:
        groups = by_positive.get(positive["image_sha256"], {})
        missing = [aspect for aspect in ("tec", "aes", "ali") if not groups.get(aspect)]
        if missing:
            raise ValueError(f"positive {positive['image_sha256'][:12]} (prompt {positive['prompt_id']}) has no {missing} negatives")
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
                "ali_negative_id": ali["negative_id"],
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
        staging = target.with_name(target.name + ".tmp")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        builder(arch, staging, init_seed)
        (staging / "_COMPLETE").write_text("ok")
        if target.exists():
            import shutil

            shutil.rmtree(target)
        staging.rename(target)
    return str(target)


GENERATION_PARAM_KEYS = ("steps", "guidance", "height", "width", "seed")


def generation_params(entry_params: dict[str, Any], defaults: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
    """Profile defaults, overridden by the generator's params; the seed is per prompt (not per era)
    so that a generator shared by two eras produces the very same image for the same prompt."""
    params = {**defaults, **{k: v for k, v in entry_params.items() if k in GENERATION_PARAM_KEYS}}
    params["seed"] = stable_seed(prompt.text, int(params.get("seed", 0))) % (2**31)
    return params
