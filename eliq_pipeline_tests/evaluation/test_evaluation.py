"""Benchmark evaluation helpers: classic baselines read again at the critic's input size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.evaluation.benchmarks import Benchmark, BenchmarkItem
from eliq_pipeline.evaluation.evaluation import AT_CRITIC_INPUT, at_critic_input, critic_input_sizes, method_of


def _benchmark(tmp_path: Path, sizes: list[tuple[int, int]]) -> Benchmark:
    rng = np.random.default_rng(0)
    items = []
    for i, (width, height) in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        items.append(BenchmarkItem(path.name, path, "a prompt", float(i)))
    return Benchmark("set", "aigc", items)


def _halve(width: int, height: int) -> tuple[int, int]:
    return width // 2, height // 2


def test_critic_input_sizes_map_each_image_size_once_and_are_empty_when_nothing_is_resized(tmp_path: Path):
    benchmark = _benchmark(tmp_path, [(64, 64), (64, 64), (96, 48)])
    calls: list[tuple[int, int]] = []

    def input_size(width: int, height: int) -> tuple[int, int]:
        calls.append((width, height))
        return _halve(width, height)

    assert critic_input_sizes(benchmark, input_size) == {(64, 64): (32, 32), (96, 48): (48, 24)}
    assert calls == [(64, 64), (96, 48)]
    assert critic_input_sizes(benchmark, lambda w, h: (w, h)) == {}


def test_at_critic_input_reads_each_baseline_on_the_resized_image_under_its_own_cache_key(tmp_path: Path):
    benchmark = _benchmark(tmp_path, [(64, 64), (96, 48)])
    sizes = critic_input_sizes(benchmark, _halve)
    baselines = {"piqe": ("v1", lambda image: float(image.width * image.height))}  # the pixels it was given
    readings = at_critic_input(baselines, sizes, "32-65536-65536")
    assert list(readings) == ["piqe" + AT_CRITIC_INPUT]
    key, scorer = readings["piqe" + AT_CRITIC_INPUT]
    assert key == "v1-32-65536-65536"
    assert [scorer(item.image_path) for item in benchmark.items] == [32 * 32, 48 * 24]
    assert at_critic_input(baselines, {}, "32-65536-65536") == {}
    assert method_of("label-free/piqe" + AT_CRITIC_INPUT) == "PIQE, at the critic's input size"
    with pytest.raises(KeyError, match="no size to score an image of 10x10 pixels"):
        scorer(Image.new("RGB", (10, 10)))
