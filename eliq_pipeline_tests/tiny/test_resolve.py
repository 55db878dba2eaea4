"""One resolver for every toy model: `tiny.resolve("tiny:<arch>", models_dir, init_seed)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eliq_pipeline import tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def _built_once(folder: Path, marker: str, resolve) -> None:
    stamp = (folder / marker).stat().st_mtime_ns
    assert resolve() == str(folder)
    assert (folder / marker).stat().st_mtime_ns == stamp


def test_other_references_are_returned_unchanged(tmp_path: Path) -> None:
    assert tiny.resolve("org/some-model", tmp_path) == "org/some-model"
    assert tiny.resolve("/some/local/editor", tmp_path, init_seed=2) == "/some/local/editor"
    assert not any(tmp_path.iterdir())


def test_a_text_to_image_pipeline_is_built_once_under_generators(tmp_path: Path) -> None:
    folder = Path(tiny.resolve("tiny:sd", tmp_path, init_seed=3))
    assert folder == tmp_path / "generators" / "sd-seed3" and (folder / "model_index.json").is_file()
    _built_once(folder, "model_index.json", lambda: tiny.resolve("tiny:sd", tmp_path, init_seed=3))


def test_the_editor_is_built_once_under_generators(tmp_path: Path) -> None:
    folder = Path(tiny.resolve(tiny.TINY_PREFIX + tiny.EDITOR_ARCH, tmp_path))
    assert folder == tmp_path / "generators" / "sd-img2img-seed0"
    assert json.loads((folder / "tiny_pipeline.json").read_text()) == {"arch": "sd-img2img", "seed": 0}
    _built_once(folder, "model_index.json", lambda: tiny.resolve("tiny:sd-img2img", tmp_path))


def test_the_backbone_is_built_once_with_a_completion_marker(tmp_path: Path) -> None:
    folder = Path(tiny.resolve("tiny:qwen3-vl", tmp_path))
    assert folder == tmp_path / "tiny-qwen3-vl-0"  # where `eliq export` tells tiny users to point --base
    assert (folder / "_COMPLETE").is_file() and (folder / "model.safetensors").is_file()
    _built_once(folder, "_COMPLETE", lambda: tiny.resolve("tiny:qwen3-vl", tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-qwen3-vl-0"]  # no staging left behind


def test_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown tiny architecture 'tiny:dalle'"):
        tiny.resolve("tiny:dalle", tmp_path)


def test_the_cpu_profile_backbone_sees_every_image_at_256_px(tmp_path: Path) -> None:
    from PIL import Image

    from eliq_pipeline.critic.backbone import load_backbone

    folder = Path(tiny.resolve("tiny:qwen3-vl-256", tmp_path))
    assert folder == tmp_path / "tiny-qwen3-vl-256-0"
    model, processor = load_backbone(str(folder))
    assert model.config.text_config.hidden_size == 128 and model.config.vision_config.depth == 4
    # min = max pixels: a 256 px positive and a 1024 px benchmark image both become 64 image tokens;
    # other aspect ratios keep theirs at about the same pixel count (multiples of 32 px per side)
    for size, tokens in (((256, 256), 64), ((1024, 1024), 64), ((1024, 768), 54)):
        grid = processor.image_processor(images=[Image.new("RGB", size)], return_tensors="pt")["image_grid_thw"]
        assert int(grid.prod()) // 4 == tokens, (size, grid)


def test_the_dct_backbone_has_one_fixed_orthogonal_filter_bank_for_every_seed(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    key = "model.visual.patch_embed.proj.weight"
    weights = {seed: load_file(str(Path(tiny.resolve("tiny:qwen3-vl-256-dct", tmp_path, init_seed=seed)) /
                                   "model.safetensors")) for seed in (0, 1)}
    bank = weights[0][key]
    torch.testing.assert_close(weights[1][key], bank)  # not the seed's
    assert not torch.equal(weights[0]["model.visual.blocks.0.mlp.linear_fc1.weight"],
                           weights[1]["model.visual.blocks.0.mlp.linear_fc1.weight"])  # the rest is
    flat = bank.flatten(1).double()
    gram = flat @ flat.T
    off_diagonal = gram - torch.diag(torch.diag(gram))
    assert off_diagonal.abs().max() < 1e-4 * torch.diag(gram).min()  # distinct DCT functions / colours
    # the luminance DC filter averages the patch; the next one is a horizontal or vertical ramp
    assert torch.allclose(bank[0], bank[0].mean().expand_as(bank[0]), atol=1e-6)
    random = load_file(str(Path(tiny.resolve("tiny:qwen3-vl-256", tmp_path)) / "model.safetensors"))[key]
    assert bank.std() == pytest.approx(float(random.std()), rel=0.2)


def test_an_unknown_patch_filter_bank_is_refused() -> None:
    from eliq_pipeline.tiny.backbone import TinyBackboneSpec

    with pytest.raises(ValueError, match="patch_filters must be one of .*'dtc'"):
        TinyBackboneSpec(patch_filters="dtc")


def test_every_backbone_name_the_resolver_accepts_has_a_spec_and_back() -> None:
    """tiny.BACKBONE_ARCHS (importable without torch) and tiny/backbone.py's BACKBONE_SPECS name
    the same backbones: a spec without a name is unreachable, a name without a spec a KeyError."""
    from eliq_pipeline.tiny.backbone import BACKBONE_SPECS

    assert sorted(tiny.BACKBONE_ARCHS) == sorted(BACKBONE_SPECS)
