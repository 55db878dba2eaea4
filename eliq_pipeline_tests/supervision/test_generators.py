from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from eliq_pipeline.supervision.degradations import blockiness, gaussian_noise, jpeg_recompress, noise_level
from eliq_pipeline.supervision.backends import GENERATOR_BACKENDS, load_generator
from eliq_pipeline.supervision.generators import DiffusersGenerator, GeneratorSpec, folder_fingerprint, model_revision
from eliq_pipeline.tiny import TEXT_TO_IMAGE_ARCHS as TINY_ARCHS
from eliq_pipeline.tiny.diffusion import build_tiny_pipeline

PROMPTS = [
    "A photo of a cozy living room with a grey linen sofa, soft morning light.",
    "A steaming bowl of ramen at a busy food market, shallow depth of field.",
]
PARAMS = {"steps": 4, "guidance": 4.0, "height": 64, "width": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny_pipeline(arch, root / arch, seed=0) for arch in TINY_ARCHS}


@pytest.fixture(scope="module")
def generators(tiny_dirs: dict[str, Path]) -> dict[str, DiffusersGenerator]:
    return {
        arch: load_generator(GeneratorSpec(f"tiny-{arch}", "diffusers", str(path), dict(PARAMS)))
        for arch, path in tiny_dirs.items()
    }


def _px(image: object) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_backend_is_registered() -> None:
    assert "diffusers" in GENERATOR_BACKENDS
    assert GENERATOR_BACKENDS.get("diffusers") is DiffusersGenerator


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_pipeline_folder_is_a_diffusers_pipeline(arch: str, tiny_dirs: dict[str, Path]) -> None:
    index = json.loads((tiny_dirs[arch] / "model_index.json").read_text())
    expected = {"sd": "StableDiffusionPipeline", "flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}[arch]
    assert index["_class_name"] == expected
    assert list(tiny_dirs[arch].glob("*/*.safetensors")), "weights are safetensors"
    assert not list(tiny_dirs[arch].parent.glob(f".{arch}.*")), "no temporary folder left behind"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_generate_is_deterministic_per_seed(arch: str, generators: dict[str, DiffusersGenerator]) -> None:
    gen = generators[arch]
    assert type(gen.pipeline).__name__.lower().startswith({"sd": "stablediffusionp", "flux": "flux",
                                                          "sd3": "stablediffusion3"}[arch])
    (a,) = gen.generate(PROMPTS[:1], [7])
    (b,) = gen.generate(PROMPTS[:1], [7])
    (c,) = gen.generate(PROMPTS[:1], [8])
    assert a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(_px(a), _px(b))
    assert np.abs(_px(a) - _px(c)).mean() > 5
    (d,) = gen.generate(PROMPTS[1:], [7])
    assert not np.array_equal(_px(a), _px(d)), "the prompt must condition the image"


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_batch_equals_singles(arch: str, generators: dict[str, DiffusersGenerator]) -> None:
    gen = generators[arch]
    batched = gen.generate(PROMPTS, [3, 4], batch_size=2)
    singles = [gen.generate([p], [s])[0] for p, s in zip(PROMPTS, [3, 4])]
    for x, y in zip(batched, singles):
        # one generator per image: only float rounding of batched kernels may differ
        assert np.abs(_px(x) - _px(y)).max() <= 2


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_images_are_clean_and_structured(arch: str, generators: dict[str, DiffusersGenerator]) -> None:
    images = generators[arch].generate(PROMPTS, [0, 1])
    for image in images:
        pixels = np.asarray(image, dtype=float)
        assert pixels.std() > 20, "not near-constant"
        assert pixels.std(axis=(0, 1)).min() > 5, "every channel varies"
        assert noise_level(image) < 0.01, "smooth, not speckle"
        noisy, _ = gaussian_noise(image, np.random.default_rng(0))
        assert noise_level(noisy) > 5 * max(noise_level(image), 0.005)
        compressed, _ = jpeg_recompress(image, np.random.default_rng(0))
        assert blockiness(compressed) > blockiness(image) + 0.3


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_premature_decode(arch: str, generators: dict[str, DiffusersGenerator]) -> None:
    gen = generators[arch]
    (full,) = gen.generate(PROMPTS[:1], [5])
    (early,) = gen.generate(PROMPTS[:1], [5], stop_step=1)
    (early_again,) = gen.generate(PROMPTS[:1], [5], stop_step=1)
    assert early.size == full.size and early.mode == "RGB"
    assert np.array_equal(_px(early), _px(early_again))
    assert not np.array_equal(_px(early), _px(full))
    (full_again,) = gen.generate(PROMPTS[:1], [5])  # the interrupt flag does not leak into later calls
    assert np.array_equal(_px(full), _px(full_again))
    with pytest.raises(ValueError, match="stop_step"):
        gen.generate(PROMPTS[:1], [5], stop_step=PARAMS["steps"])


def test_call_params_override_the_spec(generators: dict[str, DiffusersGenerator]) -> None:
    gen = generators["flux"]
    (small,) = gen.generate(PROMPTS[:1], [1], params={"height": 32, "width": 48, "steps": 2})
    assert small.size == (48, 32)
    (early,) = gen.generate(PROMPTS[:1], [1], params={"steps": 8}, stop_step=6)  # validated against 8 steps
    assert early.size == (64, 64)
    with pytest.raises(ValueError, match="unknown param"):
        gen.generate(PROMPTS[:1], [1], params={"hieght": 32})


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_model_revision_fingerprints_the_folder(arch: str, generators: dict[str, DiffusersGenerator],
                                                tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    revision = generators[arch].model_revision()
    assert revision.startswith("dir:") and revision == model_revision(str(tiny_dirs[arch]))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs[arch], copy)
    assert model_revision(str(copy)) == revision  # content, not path or mtime
    scheduler_config = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(scheduler_config.read_text())
    config["num_train_timesteps"] = 999
    scheduler_config.write_text(json.dumps(config))
    assert model_revision(str(copy)) != revision


def test_tiny_build_is_reproducible_and_seeded(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    again = build_tiny_pipeline("flux", tmp_path / "flux", seed=0)
    assert folder_fingerprint(again) == folder_fingerprint(tiny_dirs["flux"])
    other = build_tiny_pipeline("flux", tmp_path / "flux-1", seed=1)
    assert folder_fingerprint(other) != folder_fingerprint(tiny_dirs["flux"])
    with pytest.raises(ValueError, match="unknown tiny arch"):
        build_tiny_pipeline("dalle", tmp_path / "x")


def test_hub_snapshot_folder_revision_is_its_commit(tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = tmp_path / "models--org--m" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    assert model_revision(str(snapshot)) == f"hf:{commit}"


def test_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown param"):
        GeneratorSpec("g", "diffusers", "x", {"stepz": 4})
    with pytest.raises(ValueError, match="tiny reference"):
        DiffusersGenerator(GeneratorSpec("g", "diffusers", "tiny:sd", {}))
    with pytest.raises(RuntimeError, match="cannot load"):
        DiffusersGenerator(GeneratorSpec("g", "diffusers", str(tmp_path), {}))
    with pytest.raises(KeyError, match="unknown generator backend"):
        load_generator(GeneratorSpec("g", "comfy", "x", {}))

