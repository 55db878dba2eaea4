from pathlib import Path

import pytest

from eliq_pipeline.ml.benchmarks import (
    BENCHMARKS,
    Benchmark,
    BenchmarkItem,
    discover_benchmarks,
    load_agiqa_3k,
    load_benchmark,
    load_generic_csv,
    load_koniq_10k,
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
