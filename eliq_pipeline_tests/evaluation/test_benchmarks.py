import csv as _csv
import time
from pathlib import Path

import numpy as np
import openpyxl
import pytest
from PIL import Image
from scipy.io import savemat

from eliq_pipeline.evaluation.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkItem,
    aigciqa2023_layout,
    benchmarks_from_config,
    discover_benchmarks,
    load_agiqa_3k,
    load_aigciqa2023,
    load_benchmark,
    load_generic_csv,
    load_koniq_10k,
    load_spaq,
    verify_images,
)

from eliq_pipeline_tests.shared_data import AGIQA_3K as AGIQA_ROOT
needs_agiqa = pytest.mark.skipif(
    not (AGIQA_ROOT / "data.csv").is_file(), reason="AGIQA-3K copy not present"
)

AGIQA_HEADER = "name,prompt,adj1,adj2,style,mos_quality,std_quality,mos_align,std_align\n"


def _touch_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"not decoded by the loader")


@needs_agiqa
def test_real_agiqa_3k_full():
    bench = load_agiqa_3k(AGIQA_ROOT)
    assert bench.name == "agiqa-3k" and bench.kind == "aigc"
    assert len(bench) == 2982
    assert bench.has_alignment
    first = bench.items[0]
    assert first.name == "AttnGAN_normal_000.jpg"
    assert first.image_path == AGIQA_ROOT / "images" / "AttnGAN_normal_000.jpg"
    assert first.prompt == "statue of a man"
    assert first.mos_quality == pytest.approx(0.965602553)
    assert first.mos_align == pytest.approx(0.40889324)
    last = bench.items[-1]
    assert last.name == "xl2.2_normal_299.jpg"
    assert last.prompt.endswith("HDR lighting, baroque style")
    assert last.mos_quality == pytest.approx(3.60083465)
    assert len({it.name for it in bench.items}) == 2982


@needs_agiqa
def test_real_agiqa_3k_limit_is_first_n_and_deterministic():
    a = load_benchmark("agiqa-3k", AGIQA_ROOT, limit=5)
    b = load_agiqa_3k(AGIQA_ROOT, limit=5)
    assert len(a) == 5 and a.items == b.items
    assert [it.name for it in a.items] == [f"AttnGAN_normal_00{i}.jpg" for i in range(5)]
    assert a.head(2).items == a.items[:2]


@needs_agiqa
def test_discover_finds_real_copy():
    assert "agiqa-3k" in discover_benchmarks(AGIQA_ROOT.parent)


def test_discover_benchmarks(tmp_path):
    assert discover_benchmarks(None) == []
    assert discover_benchmarks(tmp_path / "absent") == []
    (tmp_path / "agiqa-3k").mkdir()
    (tmp_path / "koniq-10k").mkdir()
    (tmp_path / "not-a-benchmark").mkdir()
    (tmp_path / "generic-csv").write_text("a file, not a folder")
    assert discover_benchmarks(tmp_path) == ["agiqa-3k", "koniq-10k"]


def test_registry_metadata():
    assert {"agiqa-3k", "generic-csv", "koniq-10k", "aigiqa-20k"} <= set(BENCHMARKS.names())
    assert BENCHMARKS.meta("agiqa-3k")["kind"] == "aigc"
    assert BENCHMARKS.meta("koniq-10k")["kind"] == "ugc"


def _fake_agiqa(root: Path, rows: list[str], images: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data.csv").write_text(AGIQA_HEADER + "".join(r + "\n" for r in rows))
    _touch_images(root / "images", images)
    return root


def test_agiqa_missing_images_names_first_few(tmp_path):
    names = [f"img_{i}.jpg" for i in range(8)]
    rows = [f"{n},a prompt,,,,1.0,0.1,2.0,0.2" for n in names]
    root = _fake_agiqa(tmp_path / "agiqa-3k", rows, names[:1])  # only img_0 exists
    with pytest.raises(ValueError) as err:
        load_agiqa_3k(root)
    message = str(err.value)
    assert "7 of 8 image(s) missing" in message
    assert "img_1.jpg" in message and "img_5.jpg" in message
    assert "img_6.jpg" not in message and "and 2 more" in message
    # A limit that only covers present images loads fine.
    assert len(load_agiqa_3k(root, limit=1)) == 1


def test_agiqa_bad_mos_names_file_row_and_column(tmp_path):
    rows = ["a.jpg,p,,,,1.0,0.1,2.0,0.2", "b.jpg,p,,,,high,0.1,2.0,0.2"]
    root = _fake_agiqa(tmp_path / "agiqa-3k", rows, ["a.jpg", "b.jpg"])
    with pytest.raises(ValueError, match=r"data\.csv: row 2 \(line 3\), column 'mos_quality'.*'high'"):
        load_agiqa_3k(root)
    # Bad rows are caught even when outside the requested subset.
    with pytest.raises(ValueError, match="row 2"):
        load_agiqa_3k(root, limit=1)


def test_agiqa_nan_mos_rejected(tmp_path):
    root = _fake_agiqa(tmp_path / "agiqa-3k", ["a.jpg,p,,,,1.0,0.1,nan,0.2"], ["a.jpg"])
    with pytest.raises(ValueError, match="column 'mos_align'"):
        load_agiqa_3k(root)


def test_missing_csv_and_missing_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.csv"):
        load_agiqa_3k(tmp_path)
    (tmp_path / "data.csv").write_text("name,prompt,mos_quality\nx.jpg,p,1\n")
    with pytest.raises(ValueError, match="missing column.*'mos_align'"):
        load_agiqa_3k(tmp_path)


def test_generic_csv_with_custom_columns(tmp_path):
    folder = tmp_path / "mine"
    _touch_images(folder / "imgs", ["a.png", "b.png", "c.png"])
    (folder / "scores.csv").write_text(
        "file,score,text,align\n"
        "imgs/a.png,3.5,a cat,4.0\n"
        "imgs/b.png,1.25,a dog,\n"
        "imgs/c.png,2,a bird,1\n"
    )
    bench = load_generic_csv(
        folder,
        csv_name="scores.csv",
        image_column="file",
        quality_column="score",
        prompt_column="text",
        align_column="align",
        name="mine",
    )
    assert bench.name == "mine" and len(bench) == 3
    assert bench.items[1] == BenchmarkItem(
        name="imgs/b.png",
        image_path=folder / "imgs" / "b.png",
        prompt="a dog",
        mos_quality=1.25,
        mos_align=None,
    )
    assert not bench.has_alignment  # one alignment cell is empty
    assert bench.mos_quality() == [3.5, 1.25, 2.0]
    # The CSV path itself also works as root.
    direct = load_generic_csv(folder / "scores.csv", image_column="file", quality_column="score")
    assert [it.prompt for it in direct.items] == [None, None, None]
    assert direct.kind == "aigc"


def test_generic_csv_bad_row(tmp_path):
    _touch_images(tmp_path, ["a.png"])
    (tmp_path / "data.csv").write_text("image,mos\na.png,\n")
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), column 'mos'"):
        load_generic_csv(tmp_path)


def test_koniq_layout(tmp_path):
    _touch_images(tmp_path / "512x384", ["1.jpg", "2.jpg"])
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text(
        '"image_name","c1","c2","c3","c4","c5","c_total","MOS","SD","MOS_zscore"\n'
        '"1.jpg",0,0,1,2,0,3,3.1,0.5,60.1\n'
        '"2.jpg",0,1,1,1,0,3,2.9,0.6,55.0\n'
    )
    bench = load_koniq_10k(tmp_path)
    assert bench.kind == "ugc" and [it.mos_quality for it in bench.items] == [3.1, 2.9]
    assert bench.items[0].image_path == tmp_path / "512x384" / "1.jpg"
    assert bench.items[0].prompt is None and not bench.has_alignment


def test_benchmark_validation():
    with pytest.raises(ValueError, match="kind"):
        Benchmark("x", "video", [])  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="unknown benchmark"):
        load_benchmark("nope", Path("."))


# ---------------------------------------------------------------- AIGCIQA2023, SPAQ, config, verify

def _write_xlsx(path: Path, rows: list[list[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def _png(path: Path, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 255 - value, 30)).save(path)


def _fake_aigciqa2023(root: Path, n: int = 2400, header: bool = False) -> tuple[Path, np.ndarray, np.ndarray]:
    mos_dir = root / "DATA" / "MOS"
    mos_dir.mkdir(parents=True)
    quality = np.round(np.linspace(20, 80, n), 3)
    align = np.round(np.linspace(70, 30, n), 3)
    # The release stores (n, 1) column vectors.
    savemat(mos_dir / "mosz1.mat", {"MOSz": quality[:, None]})
    savemat(mos_dir / "mosz2.mat", {"MOSz": np.full((n, 1), 50.0)})
    savemat(mos_dir / "mosz3.mat", {"MOSz": align[:, None]})
    rows = [["style", "class", "prompt"]] if header else []
    rows += [[f"style{i % 5}", f"class{i % 3}", f"prompt number {i}"] for i in range(100)]
    _write_xlsx(root / "AIGCIQA2023_Prompts.xlsx", rows)
    _touch_images(root / "Image" / "allimg", [f"{i}.png" for i in range(n)])
    return root, quality, align


def test_aigciqa2023_layout_formula():
    assert aigciqa2023_layout(0) == (0, 0)
    assert aigciqa2023_layout(3) == (0, 0)
    assert aigciqa2023_layout(4) == (0, 1)
    assert aigciqa2023_layout(399) == (0, 99)
    assert aigciqa2023_layout(400) == (1, 0)
    assert aigciqa2023_layout(1234) == (3, 8)
    assert aigciqa2023_layout(2399) == (5, 99)


def test_aigciqa2023_mat_layout(tmp_path):
    root, quality, align = _fake_aigciqa2023(tmp_path / "aigciqa2023")
    bench = load_aigciqa2023(root)
    assert bench.name == "aigciqa2023" and bench.kind == "aigc" and len(bench) == 2400
    assert bench.has_alignment
    item = bench.items[1234]
    assert item.name == "1234.png"
    assert item.image_path == root / "Image" / "allimg" / "1234.png"
    assert item.prompt == "prompt number 8"  # (1234 % 400) // 4
    assert item.mos_quality == pytest.approx(quality[1234]) and item.mos_align == pytest.approx(align[1234])
    assert [it.prompt for it in bench.items[396:404]] == ["prompt number 99"] * 4 + ["prompt number 0"] * 4
    assert len(load_benchmark("aigciqa2023", root, limit=7)) == 7
    assert BENCHMARKS.meta("aigciqa2023") == {"kind": "aigc", "has_alignment": True}


def test_aigciqa2023_prompt_sheet_with_header_row(tmp_path):
    root, _, _ = _fake_aigciqa2023(tmp_path / "a", n=12, header=True)
    bench = load_aigciqa2023(root)
    assert [it.prompt for it in bench.items[::4]] == ["prompt number 0", "prompt number 1", "prompt number 2"]


def test_aigciqa2023_mat_errors(tmp_path):
    root, _, _ = _fake_aigciqa2023(tmp_path / "a", n=8)
    savemat(root / "DATA" / "MOS" / "mosz3.mat", {"MOSz": np.ones((7, 1))})
    with pytest.raises(ValueError, match="mosz1.mat has 8 values but mosz3.mat has 7"):
        load_aigciqa2023(root)
    savemat(root / "DATA" / "MOS" / "mosz3.mat", {"scores": np.ones((8, 1))})
    with pytest.raises(ValueError, match=r"no variable 'MOSz'; it holds scores"):
        load_aigciqa2023(root)
    savemat(root / "DATA" / "MOS" / "mosz3.mat", {"MOSz": np.ones((8, 1))})
    _write_xlsx(root / "AIGCIQA2023_Prompts.xlsx", [["s", "c", "only one prompt"]])
    with pytest.raises(ValueError, match="1 prompt row.*need 2"):
        load_aigciqa2023(root)
    _write_xlsx(root / "AIGCIQA2023_Prompts.xlsx", [["s", "c", f"p{i}"] for i in range(100)])
    (root / "Image" / "allimg" / "5.png").unlink()
    with pytest.raises(ValueError, match=r"1 of 8 image\(s\) missing: .*5\.png"):
        load_aigciqa2023(root)


def test_aigciqa2023_merged_csv_variant(tmp_path):
    root = tmp_path / "aigciqa2023"
    _touch_images(root / "Image" / "allimg", ["0.png", "1.png", "2.png"])
    with (root / "AIGCIQA2023.csv").open("w", newline="") as handle:
        writer = _csv.writer(handle)
        writer.writerow(["name", "prompt", "style", "class", "quality_mos", "authenticity_mos",
                         "correspondence_mos", "quality_std", "authenticity_std", "correspondence_std"])
        writer.writerow(["0.png", "a red fox", "photo", "animal", "61.5", "55", "70.25", "1", "1", "1"])
        writer.writerow(["1.png", "a red fox", "photo", "animal", "40", "41", "38", "1", "1", "1"])
        writer.writerow(["2.png", "a castle", "oil", "building", "52", "50", "49", "1", "1", "1"])
    (root / "notes.csv").write_text("unrelated,columns\n1,2\n")
    bench = load_aigciqa2023(root)  # auto: no .mat files, so the CSV with the right columns
    assert [it.name for it in bench.items] == ["0.png", "1.png", "2.png"]
    assert bench.items[0].image_path == root / "Image" / "allimg" / "0.png"
    assert bench.items[0].prompt == "a red fox"
    assert bench.items[0].mos_quality == 61.5 and bench.items[0].mos_align == 70.25
    assert bench.has_alignment and bench.name == "aigciqa2023"
    with pytest.raises(FileNotFoundError, match="mosz1.mat"):
        load_aigciqa2023(tmp_path / "empty-dir")


def _fake_spaq(root: Path, rows: list[list[object]], images: list[str]) -> Path:
    header = ["Image name", "MOS", "Brightness", "Colorfulness", "Contrast", "Noisiness", "Sharpness"]
    _write_xlsx(root / "Annotations" / "MOS and Image attribute scores.xlsx", [header] + rows)
    _touch_images(root / "TestImage", images)
    return root


def test_spaq_layout(tmp_path):
    root = _fake_spaq(
        tmp_path / "spaq",
        [["00001.png", 42.5, 50, 1, 2, 3, 4], ["00002.png", "71.25", 50, 1, 2, 3, 4], [None] * 7],
        ["00001.png", "00002.png"],
    )
    bench = load_spaq(root)
    assert bench.name == "spaq" and bench.kind == "ugc" and len(bench) == 2
    assert bench.items[0] == BenchmarkItem("00001.png", root / "TestImage" / "00001.png", None, 42.5, None)
    assert bench.mos_quality() == [42.5, 71.25] and not bench.has_alignment
    assert BENCHMARKS.meta("spaq")["kind"] == "ugc"


def test_spaq_errors(tmp_path):
    root = _fake_spaq(tmp_path / "s1", [["a.png", 10, 0, 0, 0, 0, 0], ["b.png", "n/a", 0, 0, 0, 0, 0]], ["a.png", "b.png"])
    with pytest.raises(ValueError, match=r"sheet row 3, column 'MOS'.*'n/a'"):
        load_spaq(root, limit=1)
    other = tmp_path / "s2"
    _write_xlsx(other / "Annotations" / "MOS and Image attribute scores.xlsx", [["name", "score"], ["a.png", 1]])
    with pytest.raises(ValueError, match="missing column.*'Image name'.*header has 'name', 'score'"):
        load_spaq(other)


def _real_images(folder: Path, names: list[str]) -> None:
    for i, n in enumerate(names):
        _png(folder / n, 40 * i)


def test_benchmarks_from_config(tmp_path):
    datasets = tmp_path / "datasets"
    _fake_agiqa(datasets / "agiqa-3k", ["a.png,p,,,,1.0,0.1,2.0,0.2", "b.png,q,,,,2.0,0.1,3.0,0.2"], [])
    _real_images(datasets / "agiqa-3k" / "images", ["a.png", "b.png"])
    spaq_root = _fake_spaq(tmp_path / "elsewhere" / "spaq-copy", [["x.png", 3, 0, 0, 0, 0, 0],
                                                                   ["y.png", 4, 0, 0, 0, 0, 0]], [])
    _real_images(spaq_root / "TestImage", ["x.png", "y.png"])
    mine = tmp_path / "mine"
    _real_images(mine, ["m1.png", "m2.png", "m3.png"])
    (mine / "scores.csv").write_text("image,mos\nm1.png,1\nm2.png,2\nm3.png,3\n")
    present, skipped = benchmarks_from_config(datasets, {
        "spaq": str(spaq_root),
        "aigciqa2023": tmp_path / "not-downloaded",
        "my-set": {"root": mine, "loader": "generic-csv", "csv_name": "scores.csv", "kind": "ugc"},
    })
    assert [b.name for b in present] == ["agiqa-3k", "my-set", "spaq"]
    assert [len(b) for b in present] == [2, 3, 2]
    assert present[1].kind == "ugc"
    reasons = dict(skipped)
    assert "does not exist" in reasons["aigciqa2023"] and str(tmp_path / "not-downloaded") in reasons["aigciqa2023"]
    assert "no folder" in reasons["koniq-10k"] and "generic-csv" not in reasons and "agiqa-3k" not in reasons
    # A relative root is taken under the datasets directory; limit reaches every loader.
    present, _ = benchmarks_from_config(datasets, {"agiqa-copy": {"root": "agiqa-3k", "loader": "agiqa-3k"}}, limit=1)
    assert [(b.name, len(b)) for b in present] == [("agiqa-3k", 1), ("agiqa-copy", 1)]
    assert benchmarks_from_config(None) == ([], [(n, "no datasets directory configured")
                                                 for n in ("agiqa-3k", "aigciqa2023", "aigiqa-20k", "koniq-10k", "spaq")])
    with pytest.raises(KeyError, match="unknown benchmark 'nope'"):
        benchmarks_from_config(datasets, {"x": {"root": mine, "loader": "nope"}})


def test_benchmarks_from_config_fails_on_broken_present_sets(tmp_path):
    datasets = tmp_path / "datasets"
    root = _fake_agiqa(datasets / "agiqa-3k", ["a.png,p,,,,1.0,0.1,2.0,0.2", "b.png,q,,,,2.0,0.1,3.0,0.2"], [])
    _real_images(root / "images", ["a.png"])
    with pytest.raises(ValueError, match=r"1 of 2 image\(s\) missing: .*b\.png"):
        benchmarks_from_config(datasets)
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"1 of 2 image\(s\) unreadable: .*b\.png"):
        benchmarks_from_config(datasets)
    present, _ = benchmarks_from_config(datasets, verify=False)  # files exist; decoding skipped
    assert len(present[0]) == 2


def test_verify_images_names_first_unreadable(tmp_path):
    names = [f"{i}.png" for i in range(9)]
    _real_images(tmp_path, names[:2])
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "t.jpg", quality=90)
    whole = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "2.png").write_bytes(whole[: len(whole) // 2])  # truncated JPEG under a .png name
    for n in names[3:]:
        (tmp_path / n).write_bytes(b"garbage")
    bench = Benchmark("x", "aigc", [BenchmarkItem(n, tmp_path / n, None, 1.0) for n in names])
    verify_images(bench.head(2))
    with pytest.raises(ValueError) as err:
        verify_images(bench, max_errors=3)
    message = str(err.value)
    assert "7 of 9 image(s) unreadable" in message and "and 4 more" in message
    assert "2.png" in message and "3.png" in message and "4.png" in message and "5.png" not in message


@needs_agiqa
def test_verify_real_agiqa_3k_is_fast():
    bench = load_agiqa_3k(AGIQA_ROOT)
    start = time.perf_counter()
    verify_images(bench)
    assert time.perf_counter() - start < 60
