from __future__ import annotations

import csv
import io
import logging
import struct
import zlib
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from eliq_pipeline.supervision.backends import GENERATOR_BACKENDS, can_sample, load_generator
from eliq_pipeline.supervision.generation import ImageSource
from eliq_pipeline.supervision.generators import GeneratorSpec
from eliq_pipeline.supervision.import_backend import (
    ImportGenerator,
    ImportSkippedError,
    ManifestError,
    decode_checked,
)
from eliq_pipeline.supervision.prompts import prompt_id_for

PROMPTS = [
    "A cozy living room with a grey linen sofa, soft morning light.",
    "A steaming bowl of ramen at a busy food market.",
    "A red tram crossing a city bridge at dusk.",
]
SIDE = 32
OPTIONS = {"min_side": 16}


def _colour_image(seed: int, size: tuple[int, int] = (SIDE, SIDE)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), mode="RGB")


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_of_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose IHDR claims width x height (CRC fixed): a bomb that costs no memory to make."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def _write_manifest(folder: Path, rows: list[dict[str, str]], name: str = "manifest.csv") -> Path:
    columns = sorted({k for row in rows for k in row})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = folder / name
    path.write_text(buffer.getvalue(), encoding="utf-8")
    return path


def _spec(model: str | Path, **options: object) -> GeneratorSpec:
    return GeneratorSpec("api-model", "import", str(model), {"steps": 4, "call_kwargs": {**OPTIONS, **options}})


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Three good images: rows keyed by text, by prompt id, and by both."""
    for i in range(3):
        (tmp_path / f"img{i}.png").write_bytes(_png(_colour_image(i)))
    _write_manifest(
        tmp_path,
        [
            {"prompt": PROMPTS[0], "file": "img0.png"},
            {"prompt_id": prompt_id_for(PROMPTS[1]), "file": "img1.png"},
            {"prompt": PROMPTS[2], "prompt_id": "custom-7", "file": "img2.png"},
        ],
    )
    return tmp_path


def test_backend_is_registered_and_loads_through_the_generic_loader(source: Path) -> None:
    assert GENERATOR_BACKENDS.get("import") is ImportGenerator
    gen = load_generator(_spec(source), device="cpu")
    assert isinstance(gen, ImportGenerator)
    # no sampler: AI-specific renders of its prompts are skipped by the pipeline, not attempted
    assert not can_sample("import") and can_sample("diffusers")
    # the import backend is the ImageSource that generation asks which prompts it can serve
    assert issubclass(ImportGenerator, ImageSource) and not issubclass(GENERATOR_BACKENDS.get("diffusers"), ImageSource)


def test_generate_returns_the_imported_images_and_ignores_seeds(source: Path) -> None:
    gen = ImportGenerator(_spec(source))
    images = gen.generate(PROMPTS, [1, 2, 3])
    for i, image in enumerate(images):
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image), np.asarray(_colour_image(i)))
    again = gen.generate([PROMPTS[0]], [999])[0]  # another seed: same imported image
    assert np.array_equal(np.asarray(again), np.asarray(images[0]))
    # whitespace differences in the prompt text still match
    assert gen.has_image("  " + PROMPTS[0].replace(" ", "  "))
    report = gen.report()
    assert (report.rows, report.imported, report.converted, report.skipped_total) == (3, 3, 0, 0)
    assert report.as_metadata()["import_imported"] == 3


def test_unknown_prompt_is_a_key_error_naming_it(source: Path) -> None:
    gen = ImportGenerator(_spec(source))
    with pytest.raises(KeyError, match="a purple giraffe"):
        gen.generate(["a purple giraffe"], [0])
    with pytest.raises(ValueError, match="prematurely"):
        gen.generate([PROMPTS[0]], [0], stop_step=2)


def test_revision_is_the_manifest_hash(source: Path) -> None:
    first = ImportGenerator(_spec(source)).model_revision()
    assert first == ImportGenerator(_spec(source)).model_revision()
    manifest = source / "manifest.csv"
    manifest.write_text(manifest.read_text() + "\n", encoding="utf-8")  # other bytes, same rows
    assert ImportGenerator(_spec(source)).model_revision() != first


def test_options_come_from_call_kwargs_and_unknown_ones_fail(source: Path) -> None:
    (source / "manifest.csv").rename(source / "exported.csv")
    assert ImportGenerator(_spec(source, manifest="exported.csv")).report().imported == 3
    assert ImportGenerator(_spec(source / "exported.csv")).report().imported == 3  # the manifest path itself
    with pytest.raises(FileNotFoundError, match="manifest.csv"):
        ImportGenerator(_spec(source))
    with pytest.raises(ValueError, match="unknown import option"):
        ImportGenerator(_spec(source, manifset="exported.csv"))


def test_missing_corrupt_truncated_tiny_files_are_counted_logged_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = _png(_colour_image(0))
    (tmp_path / "good.png").write_bytes(good)
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    (tmp_path / "truncated.png").write_bytes(_png(_colour_image(1, (64, 64)))[:2000])
    (tmp_path / "tiny.png").write_bytes(_png(_colour_image(2, (8, 40))))
    texts = [f"prompt number {i}" for i in range(6)]
    _write_manifest(
        tmp_path,
        [
            {"prompt": texts[0], "file": "good.png"},
            {"prompt": texts[1], "file": "missing.png"},
            {"prompt": texts[2], "file": "garbage.png"},
            {"prompt": texts[3], "file": "truncated.png"},
            {"prompt": texts[4], "file": "tiny.png"},
            {"prompt": texts[5], "file": "good.png", "sha256": "0" * 64},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="eliq_pipeline.supervision.import_backend"):
        gen = ImportGenerator(_spec(tmp_path))
    report = gen.report()
    assert report.imported == 1
    assert report.skipped == {"missing_file": 1, "corrupt_image": 2, "too_small": 1, "checksum_mismatch": 1}
    logged = caplog.text
    for name in ("missing.png", "garbage.png", "truncated.png", "tiny.png"):
        assert name in logged
    meta = report.as_metadata()
    assert meta["import_skipped"] == 5 and meta["import_skipped_corrupt_image"] == 2
    # the good image is still served; a refused one is a clear error naming prompt, file and reason
    assert gen.generate([texts[0]], [0])[0].size == (SIDE, SIDE)
    assert not gen.has_image(texts[3]) and "truncated.png" in (gen.skip_reason(texts[3]) or "")
    with pytest.raises(ImportSkippedError, match=r"prompt number 3.*truncated\.png.*corrupt_image"):
        gen.generate([texts[3]], [0])
    with pytest.raises(ValueError, match="missing.png"):  # strict: the first bad image is an error
        ImportGenerator(_spec(tmp_path, strict=True))


def test_non_rgb_modes_are_normalised_and_counted(tmp_path: Path) -> None:
    cmyk = io.BytesIO()
    Image.new("CMYK", (SIDE, SIDE), (0, 200, 200, 0)).save(cmyk, format="JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(cmyk.getvalue())
    deep = Image.fromarray((np.arange(SIDE * SIDE).reshape(SIDE, SIDE) * 60).astype(np.uint16))
    (tmp_path / "grey16.png").write_bytes(_png(deep))
    (tmp_path / "alpha.png").write_bytes(_png(Image.new("RGBA", (SIDE, SIDE), (255, 0, 0, 0))))
    (tmp_path / "palette.png").write_bytes(_png(_colour_image(3).convert("P", palette=Image.ADAPTIVE)))
    (tmp_path / "rgb.png").write_bytes(_png(_colour_image(4)))
    files = ["cmyk.jpg", "grey16.png", "alpha.png", "palette.png", "rgb.png"]
    _write_manifest(tmp_path, [{"prompt": f"image {f}", "file": f} for f in files])
    gen = ImportGenerator(_spec(tmp_path))
    report = gen.report()
    assert (report.imported, report.converted) == (5, 4)
    assert report.converted_modes == {"CMYK": 1, "I;16": 1, "RGBA": 1, "P": 1}
    images = gen.generate([f"image {f}" for f in files], [0] * 5)
    assert all(im.mode == "RGB" and im.size == (SIDE, SIDE) for im in images)
    assert images[2].getpixel((0, 0)) == (255, 255, 255)  # fully transparent: composited on white
    assert max(images[1].getextrema()[0]) > 100  # 16-bit range mapped to 8 bits, not clipped to black


@pytest.mark.parametrize("side", [20_000, 9_000])  # above 2x MAX_IMAGE_PIXELS (PIL error), and between (PIL warning)
def test_decompression_bombs_are_refused_naming_the_file(side: int, tmp_path: Path) -> None:
    (tmp_path / "bomb.png").write_bytes(_png_header_of_size(side, side))
    (tmp_path / "ok.png").write_bytes(_png(_colour_image(0)))
    _write_manifest(tmp_path, [{"prompt": "bomb", "file": "bomb.png"}, {"prompt": "ok", "file": "ok.png"}])
    gen = ImportGenerator(_spec(tmp_path))
    assert gen.report().skipped == {"decompression_bomb": 1}
    assert "bomb.png" in (gen.skip_reason("bomb") or "")
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        decode_checked(_png_header_of_size(side, side), "bomb.png", min_side=1, max_pixels=10**12)


def test_max_pixels_option_refuses_large_images(source: Path) -> None:
    with pytest.raises(ValueError, match=r"no usable image.*decompression_bomb"):
        ImportGenerator(_spec(source, max_pixels=SIDE * SIDE - 1))


def test_duplicate_prompts_error_naming_both_rows_or_keep_first(source: Path) -> None:
    manifest = source / "manifest.csv"
    # the same prompt once by text (line 2) and once by its id (line 5)
    manifest.write_text(manifest.read_text() + f"img1.png,,{prompt_id_for(PROMPTS[0])}\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 5.*line 2"):
        ImportGenerator(_spec(source))
    gen = ImportGenerator(_spec(source, on_duplicate="first"))
    assert gen.report().skipped == {"duplicate_prompt": 1}
    assert np.array_equal(np.asarray(gen.generate([PROMPTS[0]], [0])[0]), np.asarray(_colour_image(0)))


def test_manifest_not_utf8_names_file_and_byte_offset(source: Path) -> None:
    manifest = source / "manifest.csv"
    head = "file,prompt\nimg0.png,caf".encode("utf-8")
    manifest.write_bytes(head + "é au lait\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=rf"manifest\.csv: not UTF-8 at byte offset {len(head)}"):
        ImportGenerator(_spec(source))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,prompt\na.png,x\n", "needs a 'file' column"),
        ("file,prompt\n../escape.png,x\n", "relative path inside"),
        ("file,prompt\nimg0.png,\n", "line 2: neither 'prompt' nor 'prompt_id'"),
        ("file,prompt\n", "no rows"),
        ("", "empty manifest"),
    ],
)
def test_malformed_manifests_are_errors(source: Path, text: str, message: str) -> None:
    (source / "manifest.csv").write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError, match=message):
        ImportGenerator(_spec(source))


def test_s3_source_through_a_real_endpoint(
    s3_endpoint: str, s3_bucket: str, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in source.iterdir():
        client.put_object(Bucket=s3_bucket, Key=f"imports/api-model/{path.name}", Body=path.read_bytes())
    client.put_object(Bucket=s3_bucket, Key="imports/api-model/broken.png", Body=b"\x89PNG broken")
    manifest = (source / "manifest.csv").read_text() + "missing.png,a missing one,\nbroken.png,a broken one,\n"
    client.put_object(Bucket=s3_bucket, Key="imports/api-model/manifest.csv", Body=manifest.encode())
    (source / "manifest.csv").write_text(manifest, encoding="utf-8")
    gen = ImportGenerator(_spec(f"s3://{s3_bucket}/imports/api-model"), client=client)  # the store's client
    report = gen.report()
    assert (report.imported, report.skipped) == (3, {"missing_file": 1, "corrupt_image": 1})
    images = gen.generate(PROMPTS, [0, 0, 0])
    assert np.array_equal(np.asarray(images[2]), np.asarray(_colour_image(2)))
    # same manifest bytes locally and on S3: same revision, so the content cache is shared
    assert gen.model_revision() == ImportGenerator(_spec(source)).model_revision()
    assert f"s3://{s3_bucket}/imports/api-model/missing.png" in (gen.skip_reason("a missing one") or "")
    with pytest.raises(FileNotFoundError, match=f"s3://{s3_bucket}/elsewhere/manifest.csv"):
        ImportGenerator(_spec(f"s3://{s3_bucket}/elsewhere", endpoint_url=s3_endpoint))


# ------------------------------------------------------------------ confinement to the import folder

SECRET = "root:x:0:0:secret-content-of-the-outside-file"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder next to the import folder: an image and a passwd-like text file live there."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "stolen.png").write_bytes(_png(_colour_image(9)))
    (folder / "passwd").write_text(SECRET + "\nbin:x:1:1\n", encoding="utf-8")
    (folder / "outside.csv").write_text(f"file,prompt\n../outside/stolen.png,{SECRET}\n", encoding="utf-8")
    return folder


@pytest.fixture
def confined(tmp_path: Path) -> Path:
    folder = tmp_path / "imports"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png(_colour_image(0)))
    return folder


def test_symlinks_leading_out_of_the_folder_are_refused_counted_and_never_read(
    confined: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (confined / "stolen.png").symlink_to(outside / "stolen.png")
    (confined / "passwd.png").symlink_to(outside / "passwd")
    (confined / "sub").symlink_to(outside, target_is_directory=True)  # a folder link leading out
    (confined / "inside.png").symlink_to(confined / "good.png")  # a link that stays inside is fine
    _write_manifest(confined, [
        {"prompt": "good", "file": "good.png"},
        {"prompt": "stolen", "file": "stolen.png"},
        {"prompt": "passwd", "file": "passwd.png"},
        {"prompt": "through a folder link", "file": "sub/stolen.png"},
        {"prompt": "inside link", "file": "inside.png"},
    ])
    opened: list[str] = []
    real_read_bytes = Path.read_bytes

    def spy(self: Path) -> bytes:
        opened.append(str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    gen = ImportGenerator(_spec(confined))
    report = gen.report()
    assert (report.imported, report.skipped) == (2, {"outside_folder": 3})
    assert report.as_metadata()["import_skipped_outside_folder"] == 3
    assert not any(str(outside) in path for path in opened), opened  # the outside files were never read
    for prompt in ("stolen", "passwd", "through a folder link"):
        assert not gen.has_image(prompt)
        reason = gen.skip_reason(prompt) or ""
        assert "outside the import folder" in reason and "outside_folder" in reason and SECRET not in reason
    with pytest.raises(ImportSkippedError, match="outside_folder"):
        gen.generate(["stolen"], [0])
    assert np.array_equal(np.asarray(gen.generate(["inside link"], [0])[0]), np.asarray(_colour_image(0)))


@pytest.mark.parametrize("option", ["../outside/outside.csv", "../outside/passwd", "/etc/passwd", "sub/../../outside/passwd"])
def test_manifest_option_escaping_the_folder_is_an_error_that_echoes_nothing(
    confined: Path, outside: Path, option: str
) -> None:
    with pytest.raises(ManifestError, match="option 'manifest'.*escapes the import folder") as error:
        ImportGenerator(_spec(confined, manifest=option))
    assert SECRET not in str(error.value) and "x:0:0" not in str(error.value)


def test_symlinked_manifest_leading_out_is_refused_unread(confined: Path, outside: Path) -> None:
    (confined / "manifest.csv").symlink_to(outside / "passwd")
    with pytest.raises(ManifestError, match="manifest.csv resolves outside the import folder") as error:
        ImportGenerator(_spec(confined))
    assert SECRET not in str(error.value)
    (confined / "manifest.csv").unlink()
    (confined / "manifest.csv").symlink_to(outside / "outside.csv")
    with pytest.raises(ManifestError, match="outside the import folder"):
        ImportGenerator(_spec(confined))


def test_manifest_errors_name_file_line_and_columns_never_content(confined: Path) -> None:
    manifest = confined / "manifest.csv"
    manifest.write_text(SECRET + "\n", encoding="utf-8")  # a passwd-like file in the manifest's place
    with pytest.raises(ManifestError, match=r"manifest\.csv: line 1: needs a 'file' column") as error:
        ImportGenerator(_spec(confined))
    assert SECRET not in str(error.value) and "x:0:0" not in str(error.value)
    manifest.write_bytes(b"file,prompt\ngood.png,caf\xe9 " + SECRET.encode())
    with pytest.raises(ManifestError, match=r"not UTF-8 at byte offset 24") as error:
        ImportGenerator(_spec(confined))
    assert "0xe9" not in str(error.value) and "caf" not in str(error.value)
    manifest.write_text(f"file,prompt\n/etc/{SECRET},x\n", encoding="utf-8")
    with pytest.raises(ManifestError, match=r"line 2: column 'file' must be a relative path") as error:
        ImportGenerator(_spec(confined))
    assert SECRET not in str(error.value)


@pytest.mark.parametrize("key", ["../escape.png", "/abs/escape.png", "a/../../escape.png"])
def test_s3_keys_with_dotdot_or_absolute_paths_are_refused(key: str) -> None:
    """No request is made for a key that could leave the prefix (the client would fail if called)."""
    from unittest.mock import MagicMock

    client = MagicMock()
    client.get_object.side_effect = AssertionError("an escaping key reached S3")
    with pytest.raises(ManifestError, match="escapes the import folder"):
        ImportGenerator(_spec("s3://bucket/imports/api-model", manifest=key), client=client)
    manifest = f"file,prompt\n{key},x\n".encode()
    client.get_object.side_effect = lambda Bucket, Key: {"Body": io.BytesIO(manifest)}
    with pytest.raises(ManifestError, match="line 2: column 'file' must be a relative path"):
        ImportGenerator(_spec("s3://bucket/imports/api-model"), client=client)
    assert [c.kwargs["Key"] for c in client.get_object.call_args_list] == ["imports/api-model/manifest.csv"]


def test_a_folder_or_fifo_in_place_of_a_file_is_never_opened(confined: Path) -> None:
    import os

    os.mkfifo(confined / "pipe.png")  # opening a FIFO would block the run forever
    (confined / "folder.png").mkdir()
    _write_manifest(confined, [{"prompt": "good", "file": "good.png"}, {"prompt": "pipe", "file": "pipe.png"},
                               {"prompt": "folder", "file": "folder.png"}])
    assert ImportGenerator(_spec(confined)).report().skipped == {"unreadable_file": 2}
    with pytest.raises(ManifestError, match="not a regular file"):
        ImportGenerator(_spec(confined, manifest="folder.png"))
