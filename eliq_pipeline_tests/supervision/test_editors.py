from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.supervision.degradations import colourfulness
from eliq_pipeline.supervision.editors import (
    EDIT_INSTRUCTIONS,
    EDITORS,
    DiffusersEditor,
    OfflineEditor,
    choose_instruction,
    load_editor,
)
from eliq_pipeline.supervision.generators import GeneratorSpec
from eliq_pipeline.tiny.diffusion import build_tiny_editor, build_tiny_pipeline

PARAMS = {"steps": 4, "guidance": 4.0, "height": 64, "width": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_editor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_editor(tmp_path_factory.mktemp("editor") / "sd-img2img", seed=0)


@pytest.fixture(scope="module")
def diffusers_editor(tiny_editor_dir: Path) -> DiffusersEditor:
    return load_editor("diffusers", GeneratorSpec("tiny-editor", "diffusers", str(tiny_editor_dir), dict(PARAMS)))


def _scene(size: tuple[int, int] = (63, 45)) -> Image.Image:
    """A colourful, structured test image (odd size: editors must not round it)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    array = np.stack([255 * x / w, 255 * y / h, 128 + 100 * np.sin(x / 5.0) * np.cos(y / 7.0)], axis=-1)
    array[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = (230, 40, 40)  # a red "subject" in the centre
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), mode="RGB")


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_registry_and_instructions() -> None:
    assert EDITORS.names() == ["diffusers", "offline"]
    assert len(EDIT_INSTRUCTIONS) >= 8 and len(set(EDIT_INSTRUCTIONS)) == len(EDIT_INSTRUCTIONS)
    assert {"tilt the horizon", "wash out the colours", "add a sickly green colour cast", "crush the contrast"} <= set(
        EDIT_INSTRUCTIONS
    )
    picks = {choose_instruction(seed) for seed in range(200)}
    assert picks == set(EDIT_INSTRUCTIONS) and choose_instruction(5) == choose_instruction(5)


@pytest.mark.parametrize("instruction", EDIT_INSTRUCTIONS)
def test_offline_editor_follows_every_instruction(instruction: str) -> None:
    editor = load_editor("offline")
    image = _scene()
    out, params = editor.edit(image, instruction, seed=7)
    again, params_again = editor.edit(image, instruction, seed=7)
    assert out.mode == "RGB" and out.size == image.size
    assert _diff(out, image) > 2.0, "the edit must change the image"
    assert np.array_equal(np.asarray(out), np.asarray(again)) and params == params_again
    assert params["instruction"] == instruction and params["editor"] == "offline" and params["ops"]
    assert json.loads(json.dumps(params)) == params, "params go into the manifest as JSON"


def test_offline_instructions_do_what_they_say() -> None:
    editor = OfflineEditor()
    image = _scene((64, 64))
    washed, _ = editor.edit(image, "wash out the colours", seed=1)
    assert colourfulness(washed) < 0.6 * colourfulness(image)
    green, params = editor.edit(image, "add a sickly green colour cast", seed=1)
    assert params["ops"][0]["tint"] == "green"
    g_shift = np.asarray(green, dtype=float).mean(axis=(0, 1)) - np.asarray(image, dtype=float).mean(axis=(0, 1))
    assert g_shift[1] > g_shift[0] and g_shift[1] > g_shift[2]
    flat, _ = editor.edit(image, "crush the contrast", seed=1)
    assert np.asarray(flat.convert("L"), dtype=float).std() < np.asarray(image.convert("L"), dtype=float).std()
    other_seed, _ = editor.edit(image, "tilt the horizon", seed=2)
    assert _diff(other_seed, editor.edit(image, "tilt the horizon", seed=1)[0]) > 0
    with pytest.raises(ValueError, match="cannot follow"):
        editor.edit(image, "make it a painting", seed=1)
    assert editor.model_revision() == OfflineEditor().model_revision()


def test_tiny_diffusers_editor_changes_keeps_size_and_is_deterministic(diffusers_editor: DiffusersEditor) -> None:
    image = _scene()
    out, params = diffusers_editor.edit(image, "tilt the horizon", seed=3)
    again, _ = diffusers_editor.edit(image, "tilt the horizon", seed=3)
    other, _ = diffusers_editor.edit(image, "tilt the horizon", seed=4)
    assert out.mode == "RGB" and out.size == image.size
    assert _diff(out, image) > 2.0
    assert np.array_equal(np.asarray(out), np.asarray(again))
    assert _diff(out, other) > 0
    assert params["pipeline"] == "StableDiffusionImg2ImgPipeline"
    assert params["instruction"] == "tilt the horizon" and "tilt the horizon" in params["prompt"]
    assert params["strength"] == pytest.approx(0.6) and params["output_resized_from"] == [60, 44]
    json.dumps(params)


def test_tiny_editor_reloads_from_its_folder(tiny_editor_dir: Path, diffusers_editor: DiffusersEditor) -> None:
    index = json.loads((tiny_editor_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionImg2ImgPipeline"
    assert list(tiny_editor_dir.glob("*/*.safetensors"))
    assert not list(tiny_editor_dir.parent.glob(".sd-img2img.*")), "no temporary folder left behind"
    reloaded = DiffusersEditor.from_model(str(tiny_editor_dir), **PARAMS)
    image = _scene((64, 64))
    a, _ = reloaded.edit(image, "wash out the colours", seed=11)
    b, _ = diffusers_editor.edit(image, "wash out the colours", seed=11)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert reloaded.model_revision() == diffusers_editor.model_revision()
    # strength comes from call_kwargs as well, and changes the result
    weaker = DiffusersEditor.from_model(str(tiny_editor_dir), **PARAMS, call_kwargs={"strength": 0.3})
    c, params = weaker.edit(image, "wash out the colours", seed=11)
    assert params["strength"] == pytest.approx(0.3) and _diff(a, c) > 0


def test_tiny_editor_is_the_tiny_sd_pipeline_with_an_image_input(tmp_path: Path, tiny_editor_dir: Path) -> None:
    t2i = build_tiny_pipeline("sd", tmp_path / "sd", seed=0)
    assert (t2i / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        tiny_editor_dir / "unet" / "diffusion_pytorch_model.safetensors"
    ).read_bytes(), "same components as build_tiny_pipeline('sd')"
    with pytest.raises(ValueError, match="takes no input image"):
        DiffusersEditor.from_model(str(t2i), **PARAMS)
    with pytest.raises(ValueError, match="strength"):
        DiffusersEditor.from_model(str(tiny_editor_dir), **PARAMS, call_kwargs={"strength": 1.5})

