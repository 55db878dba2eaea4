"""Import sources with several images per prompt (real exports have several seeds per prompt):
`on_duplicate="all"` makes every row its own image, each becomes its own positive through
`generate_images`, and the prompt-disjoint split keeps all positives of a prompt together.
Also the prompts of a manifest (`validate=False`, `manifest_prompts`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.core.storage import LocalArtifactStore
from eliq_pipeline.supervision import import_backend
from eliq_pipeline.supervision.generation import (
    GENERATION_CODE_VERSION, GenerationRequest, generate_images, generation_params,
)
from eliq_pipeline.supervision.image_cache import stable_hash
from eliq_pipeline.supervision.import_backend import ImportGenerator, ImportSkippedError, ManifestError
from eliq_pipeline.supervision.prompts import Prompt, prompt_id_for
from eliq_pipeline.supervision.tuples import build_tuples
from eliq_pipeline_tests.supervision.test_import_backend import _colour_image, _png, _spec, _write_manifest

CAT = "A grey cat asleep on a windowsill, soft morning light."
TRAM = "A red tram crossing a city bridge at dusk."
DEFAULTS = {"steps": 2, "height": 32, "width": 32}


def _prompt(text: str) -> Prompt:
    return Prompt(prompt_id=prompt_id_for(text), text=text, category="imported", sub_concept="", labels=["imported"])


def _requests(texts: list[str], gid: str = "api-model") -> list[GenerationRequest]:
    return [GenerationRequest(gid, _prompt(t), generation_params({}, DEFAULTS, _prompt(t))) for t in texts]


@pytest.fixture
def seeds_export(tmp_path: Path) -> Path:
    """Three seeds of CAT (one row keyed by id, one corrupt file between them), one image of TRAM."""
    for i in range(4):
        (tmp_path / f"img{i}.png").write_bytes(_png(_colour_image(i)))
    (tmp_path / "broken.png").write_bytes(b"not an image" * 20)
    _write_manifest(tmp_path, [
        {"prompt": CAT, "file": "img0.png"},
        {"prompt": CAT, "file": "broken.png"},
        {"prompt_id": prompt_id_for(CAT), "file": "img1.png"},
        {"prompt": TRAM, "file": "img3.png"},
        {"prompt": CAT, "file": "img2.png"},
    ])
    return tmp_path


def _same(a: Image.Image, b: Image.Image) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_all_serves_every_usable_image_of_a_prompt_in_manifest_order(seeds_export: Path) -> None:
    gen = ImportGenerator(_spec(seeds_export, on_duplicate="all"))
    assert (gen.image_count(CAT), gen.image_count(TRAM), gen.image_count("a purple giraffe")) == (3, 1, 0)
    assert gen.has_image(CAT) and gen.skip_reason(CAT) is None  # one refused row does not refuse the prompt
    report = gen.report()
    assert (report.rows, report.imported, report.skipped) == (5, 4, {"corrupt_image": 1})
    images = gen.generate([CAT, CAT, CAT, TRAM], [0, 0, 0, 0], indices=[0, 1, 2, 0])
    assert [_same(im, _colour_image(i)) for im, i in zip(images, [0, 1, 2, 3])] == [True] * 4
    assert _same(gen.generate([CAT], [5])[0], _colour_image(0))  # default: the first image
    with pytest.raises(IndexError, match=r"prompt 'A grey cat.*has 3 usable image\(s\).*index 3 is out of range"):
        gen.generate([CAT], [0], indices=[3])
    with pytest.raises(ValueError, match="2 image indices"):
        gen.generate([CAT], [0], indices=[0, 1])


def test_a_prompt_whose_every_image_is_refused_is_skipped_with_the_reasons(tmp_path: Path) -> None:
    (tmp_path / "ok.png").write_bytes(_png(_colour_image(0)))
    _write_manifest(tmp_path, [{"prompt": TRAM, "file": "ok.png"}, {"prompt": CAT, "file": "missing.png"},
                               {"prompt": CAT, "file": "gone.png"}])
    gen = ImportGenerator(_spec(tmp_path, on_duplicate="all"))
    assert gen.image_count(CAT) == 0 and not gen.has_image(CAT)
    reason = gen.skip_reason(CAT) or ""
    assert "missing.png" in reason and "missing_file" in reason and "1 more image(s)" in reason
    with pytest.raises(ImportSkippedError, match="missing.png"):
        gen.generate([CAT], [0])


def test_the_same_file_twice_for_one_prompt_is_a_counted_skip_not_a_second_image(seeds_export: Path) -> None:
    _write_manifest(seeds_export, [{"prompt": CAT, "file": "img0.png"}, {"prompt": CAT, "file": "img1.png"},
                                   {"prompt": CAT, "file": "img0.png"}, {"prompt": TRAM, "file": "img0.png"}])
    gen = ImportGenerator(_spec(seeds_export, on_duplicate="all"))
    assert gen.image_count(CAT) == 2
    assert gen.image_count(TRAM) == 1  # the same file for another prompt: allowed, as before
    assert gen.report().skipped == {"duplicate_file": 1}
    assert gen.report().skipped_files[0]["line"] == "4"


def test_duplicates_still_fail_by_default_and_the_message_names_all(seeds_export: Path) -> None:
    with pytest.raises(ManifestError, match=r"duplicate prompt on line 3 \(already on line 2\).*on_duplicate='all'"):
        ImportGenerator(_spec(seeds_export))
    first = ImportGenerator(_spec(seeds_export, on_duplicate="first"))
    assert first.image_count(CAT) == 1 and first.report().skipped == {"duplicate_prompt": 3}
    with pytest.raises(ValueError, match="'error', 'first' or 'all'"):
        ImportGenerator(_spec(seeds_export, on_duplicate="every"))


def test_a_row_naming_two_different_prompts_is_a_manifest_error_with_all(seeds_export: Path) -> None:
    _write_manifest(seeds_export, [{"prompt": CAT, "file": "img0.png"}, {"prompt": TRAM, "file": "img1.png"},
                                   {"prompt": CAT, "prompt_id": prompt_id_for(TRAM), "file": "img2.png"}])
    with pytest.raises(ManifestError, match=r"line 4: .*match two different prompts \(lines 2 and 3\)"):
        ImportGenerator(_spec(seeds_export, on_duplicate="all"))


def test_manifest_prompts_without_decoding_images(seeds_export: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_manifest(seeds_export, [
        {"prompt": "style of Slim Aarons", "file": "img0.png", "category": "Fashion, People"},
        {"prompt": "style of  Slim Aarons ", "file": "img1.png", "category": "ignored: not the first row"},
        {"prompt": TRAM, "file": "broken.png", "category": ""},
    ])

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(import_backend, "decode_checked", no_decoding)
    gen = ImportGenerator(_spec(seeds_export, on_duplicate="all"), validate=False)
    assert gen.manifest_prompts() == [{"prompt": "style of Slim Aarons", "category": "Fashion, People"},
                                      {"prompt": TRAM, "category": ""}]
    assert gen.image_count("style of Slim Aarons") == 2 and gen.report().imported == 0  # rows, not validated
    monkeypatch.undo()
    assert ImportGenerator(_spec(seeds_export, on_duplicate="all")).manifest_prompts()[1]["prompt"] == TRAM
    _write_manifest(seeds_export, [{"prompt": TRAM, "file": "img0.png"},
                                   {"prompt_id": prompt_id_for(CAT), "file": "img1.png"}])
    with pytest.raises(ManifestError, match=r"manifest\.csv: line 3: keyed by 'prompt_id' only"):
        ImportGenerator(_spec(seeds_export), validate=False).manifest_prompts()


# ------------------------------------------------------------------ through generate_images


def test_several_images_per_prompt_become_several_cached_positives(seeds_export: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    loads: list[str] = []

    def load(gid: str) -> ImportGenerator:
        loads.append(gid)
        return ImportGenerator(_spec(seeds_export, on_duplicate="all"))

    skipped: list[dict[str, str]] = []
    rows, generated, reused = generate_images(store, _requests([CAT, TRAM, "a purple giraffe"]), load,
                                              batch_size=2, skipped=skipped)
    assert loads == ["api-model"]  # loaded once, for the expansion and the generation
    assert (generated, reused) == (4, 0)
    assert [(r["prompt"], r["image_index"]) for r in rows] == [(CAT, 0), (CAT, 1), (CAT, 2), (TRAM, 0)]
    assert len({r["image_sha256"] for r in rows}) == 4 and len({r["cache_key"] for r in rows}) == 4
    assert {r["prompt_id"] for r in rows[:3]} == {prompt_id_for(CAT)}
    assert all(isinstance(r["image_index"], int) for r in rows)
    assert [s["prompt"] for s in skipped] == ["a purple giraffe"]
    again, generated, reused = generate_images(store, _requests([CAT, TRAM]), load)
    assert (generated, reused) == (0, 4)
    assert [r["image_sha256"] for r in again] == [r["image_sha256"] for r in rows]
    from eliq_pipeline.defs.common import rows_to_table

    assert rows_to_table(rows).column("image_index").to_pylist() == [0, 1, 2, 0]


def test_cache_key_of_image_index_0_is_the_key_from_before(seeds_export: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    gen = ImportGenerator(_spec(seeds_export, on_duplicate="all"))
    rows, _, _ = generate_images(store, _requests([CAT, TRAM]), lambda gid: gen)
    request = _requests([TRAM])[0]
    old_key = "cache/generations/" + stable_hash(
        "api-model", gen.model_revision(), TRAM, request.params, GENERATION_CODE_VERSION) + ".json"
    assert rows[3]["cache_key"] == old_key
    cat = _requests([CAT])[0]
    assert rows[0]["cache_key"] == "cache/generations/" + stable_hash(
        "api-model", gen.model_revision(), CAT, cat.params, GENERATION_CODE_VERSION) + ".json"
    assert rows[1]["cache_key"] != rows[0]["cache_key"]


def test_the_same_content_twice_is_one_positive_reported_as_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(_colour_image(0)))
    (folder / "a-copy.png").write_bytes(_png(_colour_image(0)))
    (folder / "b.png").write_bytes(_png(_colour_image(1)))
    _write_manifest(folder, [{"prompt": CAT, "file": "a.png"}, {"prompt": CAT, "file": "a-copy.png"},
                             {"prompt": CAT, "file": "b.png"}])
    skipped: list[dict[str, str]] = []
    rows, generated, reused = generate_images(LocalArtifactStore(tmp_path / "store"), _requests([CAT]),
                                              lambda gid: ImportGenerator(_spec(folder, on_duplicate="all")),
                                              skipped=skipped)
    assert [r["image_index"] for r in rows] == [0, 2]
    assert skipped == [{"generator": "api-model", "prompt": CAT, "reason": "duplicate image content"}]
    assert (generated, reused) == (3, 0)


def _negatives_for(positives: list[dict]) -> list[dict]:
    """One negative per aspect per positive (the fields build_tuples reads)."""
    out = []
    for p in positives:
        for aspect in ("tec", "aes", "ali"):
            out.append({"negative_id": f"{p['image_sha256'][:8]}-{aspect}", "positive_sha256": p["image_sha256"],
                        "aspect": aspect, "family": "conventional", "method": f"{aspect}-method",
                        "image_sha256": "" if aspect == "ali" else f"{aspect}{p['image_sha256'][:8]}",
                        "mismatched_prompt_id": "p_other", "mismatched_prompt": "another prompt"})
    return out


def test_tuples_keep_every_positive_of_a_prompt_in_one_split(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    texts = [f"prompt {i} of an export, style of Slim Aarons" for i in range(8)]
    rows = []
    for i, text in enumerate(texts):
        for seed in range(3):
            name = f"p{i}-s{seed}.png"
            (folder / name).write_bytes(_png(_colour_image(100 * i + seed)))
            rows.append({"prompt": text, "file": name})
    _write_manifest(folder, rows)
    positives, _, _ = generate_images(LocalArtifactStore(tmp_path / "store"), _requests(texts),
                                      lambda gid: ImportGenerator(_spec(folder, on_duplicate="all")))
    assert len(positives) == 24 and len({p["image_sha256"] for p in positives}) == 24
    tuples = build_tuples(positives, _negatives_for(positives), heldout_fraction=0.25, seed=3, tuples_per_positive=1)
    assert len(tuples) == 24
    splits: dict[str, set[str]] = {}
    for t in tuples:
        splits.setdefault(t["prompt_id"], set()).add(t["split"])
    assert all(len(s) == 1 for s in splits.values())  # all positives of a prompt on one side
    heldout = {pid for pid, s in splits.items() if s == {"heldout"}}
    assert len(heldout) == 2 and sum(t["split"] == "heldout" for t in tuples) == 2 * 3
