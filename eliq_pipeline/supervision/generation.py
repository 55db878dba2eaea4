"""Positives and AI-specific negatives rendered by a generator (paper 3.2.2-3.2.3), through the
image cache: one image per request, reused when the generator, prompt and parameters repeat.

An import source may hold several images of one prompt (several seeds per prompt in a real
export): `generate_images` turns such a request into one request per image (`image_index`), so
each becomes its own positive; all of them keep the prompt's id, so prompt-disjoint splits stay
prompt-disjoint."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from eliq_pipeline.core.compute import Compute, InProcessCompute, ItemFailure, raise_failures
from eliq_pipeline.supervision.backends import GeneratorFactory
from eliq_pipeline.supervision.image_cache import Store, cached_entry, put_image, stable_hash, stable_seed
from eliq_pipeline.supervision.prompts import Prompt, aesthetic_degraded_prompt, degraded_prompt, prompt_variants

# Bump when the way pixels are produced changes: old cache entries then no longer match.
GENERATION_CODE_VERSION = "gen-1"


class Generator(Protocol):
    def generate(self, prompts: list[str], seeds: list[int]) -> list[Image.Image]: ...
    def model_revision(self) -> str: ...


@runtime_checkable
class ImageSource(Protocol):
    """A backend serving images made elsewhere (the `import` backend) instead of sampling them:
    it may have no usable image for a prompt, and says why; `report()` counts what it skipped.
    A prompt may have several images (`image_count`); `generate` takes the index of each."""

    def generate(self, prompts: list[str], seeds: list[int], indices: list[int] | None = None) -> list[Image.Image]: ...
    def model_revision(self) -> str: ...
    def image_count(self, prompt: str) -> int: ...
    def has_image(self, prompt: str) -> bool: ...
    def skip_reason(self, prompt: str) -> str | None: ...
    def report(self) -> Any: ...


@dataclass(frozen=True)
class GenerationRequest:
    generator_id: str
    prompt: Prompt
    params: dict[str, Any]  # steps, guidance, height, width, seed (+ anything backend-specific)
    prompt_text: str | None = None  # defaults to prompt.text (degraded-prompt variants override it)
    stop_step: int | None = None  # decode the latents after this many steps (premature decoding)
    image_index: int = 0  # which image of the prompt an `ImageSource` serves (several seeds per prompt)

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
    compute: Compute | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Generate (or reuse) one image per request. Returns manifest rows, generated count, reused count.

    Cache entries are written right after each batch, so a crash loses at most one batch. A
    backend that cannot serve a prompt (an `import` manifest without a usable image for it) is
    skipped, not fatal: the request is appended to `skipped` with the reason.

    A request to an `ImageSource` holding k > 1 images of its prompt becomes k requests
    (`image_index` 0..k-1), each its own row; a request that already names an image_index other
    than 0 is kept as is. Rows of one generator with the same image content (the same file listed
    twice) are kept once: the later ones go to `skipped` with reason "duplicate image content".
    Each generator is loaded once.

    ``compute`` (core/compute.py): where the missing images are rendered, in shards of
    ``batch_size`` requests; None: in this process. A Ray backend needs a `GeneratorFactory`
    (picklable; plans cache keys without loading a sampler on the driver).
    """
    load = _memoized(load_generator)
    rows, generated = _generate_aligned(store, _expand_images(requests, load), load, batch_size, progress, skipped,
                                        compute)
    done_rows = _drop_duplicate_content([row for row in rows if row is not None], skipped)
    return done_rows, generated, sum(1 for row in done_rows if row["reused"])


def _memoized(load_generator: Callable[[str], Generator]) -> Callable[[str], Generator]:
    if isinstance(load_generator, GeneratorFactory):  # memoizes itself, and must stay picklable
        return load_generator
    loaded: dict[str, Generator] = {}

    def load(gid: str) -> Generator:
        if gid not in loaded:
            loaded[gid] = load_generator(gid)
        return loaded[gid]

    return load


def _expand_images(requests: Sequence[GenerationRequest], load: Callable[[str], Generator]) -> list[GenerationRequest]:
    """One request per image of each prompt an `ImageSource` holds several images of."""
    out: list[GenerationRequest] = []
    for request in requests:
        if isinstance(load, GeneratorFactory) and not load.is_source(request.generator_id):
            out.append(request)  # a sampler: one image per request, and no need to load it here
            continue
        backend = load(request.generator_id)
        count = backend.image_count(request.text) if isinstance(backend, ImageSource) else 1
        if count > 1 and request.image_index == 0:
            out.extend(replace(request, image_index=k) for k in range(count))
        else:
            out.append(request)
    return out


def _drop_duplicate_content(rows: list[dict[str, Any]], skipped: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    """The rows without a later row of the same generator and image sha256 (the first is kept)."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for row in rows:
        key = (row["generator"], row["image_sha256"])
        if key in seen:
            if skipped is not None:
                skipped.append({"generator": row["generator"], "prompt": row["prompt_used"],
                                "reason": "duplicate image content"})
            continue
        seen.add(key)
        kept.append(row)
    return kept


def _generate_aligned(
    store: Store,
    requests: Sequence[GenerationRequest],
    load_generator: Callable[[str], Generator],
    batch_size: int = 1,
    progress: Callable[[int, int], None] | None = None,
    skipped: list[dict[str, str]] | None = None,
    compute: Compute | None = None,
) -> tuple[list[dict[str, Any] | None], int]:
    """`generate_images`, with one entry per request (None where the request was skipped)."""
    rows: list[dict[str, Any] | None] = [None] * len(requests)
    pending: dict[tuple[str, int | None], list[int]] = {}
    revisions: dict[str, str] = {}
    sources: dict[str, Any] = {}
    keys: list[str] = []

    def plan(gid: str) -> Any:
        """The generator's image source (None for a sampler); fills `revisions`. A GeneratorFactory
        answers without loading a sampler; a plain loader function loads the generator."""
        if gid not in revisions:
            if isinstance(load_generator, GeneratorFactory) and not load_generator.is_source(gid):
                sources[gid], revisions[gid] = None, load_generator.revision(gid) or ""
            else:
                backend = load_generator(gid)
                sources[gid] = backend if isinstance(backend, ImageSource) else None
                revisions[gid] = backend.model_revision()
        return sources[gid]

    for index, request in enumerate(requests):
        source = plan(request.generator_id)
        if source is not None and not source.has_image(request.text):
            if skipped is not None:
                skipped.append({"generator": request.generator_id, "prompt": request.text,
                                "reason": source.skip_reason(request.text) or "not in the import manifest"})
            keys.append("")
            continue
        parts = [request.generator_id, revisions[request.generator_id], request.text, request.params]
        if request.stop_step is not None:
            parts.append({"stop_step": request.stop_step})
        if request.image_index:  # index 0 (every request before several images per prompt): the key as before
            parts.append({"image_index": int(request.image_index)})
        key = "cache/generations/" + stable_hash(*parts, GENERATION_CODE_VERSION) + ".json"
        keys.append(key)
        entry = cached_entry(store, key)
        if entry is not None:
            rows[index] = _generation_row(request, revisions, entry["image_sha256"], key, reused=True)
        else:
            pending.setdefault((request.generator_id, request.stop_step), []).append(index)

    generated = 0
    done = len(requests) - sum(len(v) for v in pending.values())
    failures: list[ItemFailure] = []

    def persist(_shard: int, items: list[tuple], images: list[Image.Image]) -> None:
        nonlocal generated, done
        for (i, *_rest), image in zip(items, images):
            sha = put_image(store, image)
            store.put_bytes(keys[i], json.dumps({"image_sha256": sha, "generator": requests[i].generator_id}).encode())
            rows[i] = _generation_row(requests[i], revisions, sha, keys[i], reused=False)
            generated += 1
        done += len(items)
        if progress:
            progress(done, len(requests))

    for gid in dict.fromkeys(g for g, _ in pending):
        shards = [[(i, requests[i].text, int(requests[i].params["seed"]), stop_step, int(requests[i].image_index))
                   for i in indices[start : start + max(1, batch_size)]]
                  for (g, stop_step), indices in pending.items() if g == gid
                  for start in range(0, len(indices), max(1, batch_size))]
        if compute is None:  # in this process, with the caller's loader (any callable)
            runner, factory = InProcessCompute(), partial(load_generator, gid)
        elif isinstance(load_generator, GeneratorFactory):  # a worker loads the generator from its spec
            runner, factory = compute, load_generator.for_generator(gid)
        else:
            raise TypeError(f"compute backend {compute.name!r} loads generators in its workers: pass a "
                            f"GeneratorFactory, not {type(load_generator).__name__}")
        failures += runner.map_shards(factory, render_shard, shards, persist,
                                      describe=lambda item: f"{requests[item[0]].generator_id}: {item[1][:80]!r}")
    raise_failures(failures, "image generation")
    return rows, generated


def render_shard(generator: Generator, items: list[tuple]) -> list[Image.Image]:
    """One shard of generation work: items (request index, text, seed, stop_step, image_index)
    of one generator and one stop_step, rendered in one call."""
    stop_step = items[0][3]
    extra: dict[str, Any] = {} if stop_step is None else {"stop_step": stop_step}
    if isinstance(generator, ImageSource):
        extra["indices"] = [item[4] for item in items]
    return generator.generate([item[1] for item in items], [item[2] for item in items], **extra)


def _generation_row(
    request: GenerationRequest, revisions: dict[str, str], sha: str, key: str, reused: bool
) -> dict[str, Any]:
    params = request.params
    return {
        "prompt_id": request.prompt.prompt_id,
        "prompt": request.prompt.text,
        "prompt_used": request.text,
        "stop_step": request.stop_step,
        "image_index": int(request.image_index),
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


# AI-specific negatives rendered by the positive's own generator (paper 3.2.3), as
# method -> aspect. Same generator and seed as the positive: only the prompt or the schedule differs.
AI_SPECIFIC_METHODS = {
    "degraded_prompt": "tec",     # explicitly degraded prompt -> low-fidelity structures
    "premature_decode": "tec",    # intermediate latents decoded early
    "appearance_prompt": "aes",   # prompt modified towards poor composition / colour
    "variant_prompt": "ali",      # a prompt variant rendered, paired with the original prompt
}
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
    compute: Compute | None = None,
) -> tuple[list[dict[str, Any]], int, int]:
    """Render the planned AI-specific negatives (see `ai_specific_requests`); each row carries its
    `method` and `method_params`. A skipped request drops only its own row (rows stay matched to
    their methods). Returns rows, generated count, reused count."""
    aligned, generated = _generate_aligned(store, [r for r, _, _ in planned], _memoized(load_generator), batch_size,
                                           progress, skipped, compute)
    rows = []
    for row, (_, method, params) in zip(aligned, planned):
        if row is not None:
            rows.append({**row, "method": method, "method_params": json.dumps(params)})
    return rows, generated, len(rows) - generated


GENERATION_PARAM_KEYS = ("steps", "guidance", "height", "width", "seed")


def generation_params(entry_params: dict[str, Any], defaults: dict[str, Any], prompt: Prompt) -> dict[str, Any]:
    """Profile defaults, overridden by the generator's params; the seed is per prompt (not per era)
    so that a generator shared by two eras produces the very same image for the same prompt."""
    params = {**defaults, **{k: v for k, v in entry_params.items() if k in GENERATION_PARAM_KEYS}}
    params["seed"] = stable_seed(prompt.text, int(params.get("seed", 0))) % (2**31)
    return params
