"""Shared image prefix vs one row per question: throughput and peak memory, measured in one run.

    .venv/bin/python bench/shared_prefix.py            # both shapes, both stages, CPU
    .venv/bin/python bench/shared_prefix.py --device cuda --images 32

Two shapes of the tiny Qwen3-VL backbone (random weights): its own size (images 192 px, 36
image tokens) and a production-like token count (1024 px images, 1,024 image tokens, against
about 40 text tokens per question). Two stages:

- embeddings: every image asked the four tuple questions (tec, aes, ali with its prompt, ali
  with a mismatched prompt), as ``aspect_embeddings`` does for I+; the same questions per forward
  pass on both paths (``--rows`` questions: ``--rows`` rows per question, ``--rows / 4`` images shared).
- SFT: optimizer steps of LoRA tuning (tiny preset: LoRA on the LLM, trained lm_head) on the
  pseudo-label examples of comparison tuples, micro-batches from the real sampler.

Every (shape, stage, path) runs in its own subprocess: peak memory is that process's peak RSS
(CPU) or ``torch.cuda.max_memory_allocated`` (CUDA) above what it held after loading the model.
The first pass is a warm-up and is not timed; then at least ``--repeats`` passes (SFT: steps)
and ``--min-seconds`` are timed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {
    # name: (image side in px, processor max_pixels); one LLM image token per 32x32 px.
    "tiny (36 img tokens)": (192, None),
    "prod-like (1024 img tokens)": (1024, 1024 * 32 * 32),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _tuples(n: int, side: int, seed: int = 0) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)

    def image():
        return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))

    return [{"positive": image(), "tec_negative": image(), "aes_negative": image(),
             "prompt": f"a watercolour painting of a lighthouse on a cliff at dusk, number {k}",
             "mismatched_prompt": "a bowl of ramen on a wooden table, studio photo"} for k in range(n)]


def _measure(args: dict, queue) -> None:
    """One (shape, stage, path) measurement in a fresh process; puts a result dict on the queue."""
    import torch

    from eliq_pipeline.critic.backbone import load_backbone
    from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
    from eliq_pipeline.critic.instruction_tuning import (
        SFTConfig, _label_loss, _lora_model, _SampleStream, example_groups, pseudo_label_examples)

    torch.manual_seed(0)
    torch.set_num_threads(args["threads"])
    device, share = args["device"], args["share"]
    model, processor = load_backbone(args["backbone"], device=device, max_pixels=args["max_pixels"])
    side = args["side"]
    cuda = device.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if args["stage"] == "embeddings":
        rows = []
        for t in _tuples(args["images"], side):
            rows += [(t["positive"], "tec", None), (t["positive"], "aes", None), (t["positive"], "ali", t["prompt"]),
                     (t["positive"], "ali", t["mismatched_prompt"])]
        images, aspects, prompts = (list(column) for column in zip(*rows))
        batch = max(1, args["rows"] // 4) if share else args["rows"]

        def work() -> int:
            extract_aspect_embeddings(model, processor, images, aspects, prompts, batch_size=batch, device=device,
                                      share_image_prefix=share)
            return len(images)
    else:
        cfg = SFTConfig.tiny(batch_size=args["rows"])
        model = _lora_model(model, cfg)
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate)
        examples = pseudo_label_examples(_tuples(args["images"], side))
        stream = _SampleStream(example_groups(examples), cfg.seed)
        state = {"step": 0}

        def work() -> int:
            indices = stream.take(state["step"] * cfg.batch_size, cfg.batch_size)
            state["step"] += 1
            batch = [examples[i] for i in indices]
            optimizer.zero_grad(set_to_none=True)
            loss = _label_loss(model, processor, batch, [1.0] * len(batch), device, share)
            loss.backward()
            optimizer.step()
            return len(batch)

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
    work()  # warm-up (its memory peak counts, its time does not)
    sync()
    # At least `repeats` passes and `min_seconds` of them: tiny steps take milliseconds.
    done, passes, start = 0, 0, time.perf_counter()
    while passes < args["repeats"] or time.perf_counter() - start < args["min_seconds"]:
        done += work()
        passes += 1
        sync()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    queue.put({"per_s": done / seconds, "seconds": seconds / passes, "peak_mib": peak})


def _run(args: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=4, help="images (embeddings) / tuples (SFT) per pass")
    parser.add_argument("--rows", type=int, default=8, help="questions per forward pass / SFT micro-batch")
    parser.add_argument("--sft-steps", type=int, default=3, help="timed SFT steps")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes over the embedding images")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="least timed seconds per measurement")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    options = parser.parse_args(argv)

    from eliq_pipeline.tiny.backbone import build_tiny_backbone

    with tempfile.TemporaryDirectory() as tmp:
        backbone = str(build_tiny_backbone(Path(tmp) / "tiny", seed=0))
        print(f"tiny Qwen3-VL backbone, random weights, device {options.device}, {options.threads} threads; "
              f"{options.rows} questions per forward pass / SFT micro-batch", flush=True)
        header = f"{'shape':30} {'stage':11} {'per-query':>14} {'shared':>14} {'ratio':>6} {'peak MiB per-query':>19} {'shared':>7}"
        print(header)
        results = []
        for shape in options.shapes:
            side, max_pixels = SHAPES[shape]
            for stage, unit, repeats in (("embeddings", "emb/s", options.repeats), ("sft", "ex/s", options.sft_steps)):
                measured = {}
                for share in (False, True):
                    measured[share] = _run({
                        "backbone": backbone, "device": options.device, "share": share, "stage": stage,
                        "side": side, "max_pixels": max_pixels, "images": options.images, "rows": options.rows,
                        "repeats": repeats, "threads": options.threads,
                        "min_seconds": options.min_seconds})
                ratio = measured[True]["per_s"] / measured[False]["per_s"]
                print(f"{shape:30} {stage:11} {measured[False]['per_s']:9.1f} {unit:4} {measured[True]['per_s']:9.1f} "
                      f"{unit:4} {ratio:5.2f}x {measured[False]['peak_mib']:19.0f} {measured[True]['peak_mib']:7.0f}",
                      flush=True)
                results.append({"shape": shape, "stage": stage, "per_query": measured[False],
                                "shared": measured[True], "ratio": ratio})
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
