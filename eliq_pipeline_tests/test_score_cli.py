"""`eliq score` (folders, CSVs, broken images, resume, damaged bundles, concurrent runs, long
prompts) and `eliq export` (a materialized tiny era)."""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from eliq_pipeline.critic.bundle import BUNDLE_META_FILE, ELIQScorer, export_bundle
from eliq_pipeline.score_cli import (
    LEGACY_OUTPUT_COLUMNS,
    OUTPUT_COLUMNS,
    lock_path,
    main,
    output_lock,
    read_inputs,
    read_output,
    register,
    score_items,
)
from eliq_pipeline_tests.critic.test_bundle import LONG_PROMPT, TinyParts, make_adapter, make_tiny_parts
from eliq_pipeline_tests.pipeline_helpers import pipeline_env, write_eras


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> TinyParts:
    return make_tiny_parts(tmp_path_factory.mktemp("cli-parts"))


@pytest.fixture(scope="module")
def bundle(parts: TinyParts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ELIQScorer.from_parts(parts.adapter, parts.head).save_pretrained(tmp_path_factory.mktemp("cli") / "bundle")


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> ELIQScorer:
    return ELIQScorer.from_pretrained(bundle)


def _write_image(path: Path, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _corrupt_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # truncated mid-scan
    return path


def _cli(argv: list[str]) -> int:
    """The subcommands as `eliq` gets them: through register() on a subparsers object."""
    parser = argparse.ArgumentParser(prog="eliq")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


class CountingScorer:
    """Wraps a real scorer, counting the images it is asked to score; can simulate a crash."""

    def __init__(self, inner: ELIQScorer, crash_after_calls: int | None = None) -> None:
        self.inner, self.crash_after_calls = inner, crash_after_calls
        self.calls = self.images = 0

    def score(self, images, prompts, batch_size: int = 8):
        if self.crash_after_calls is not None and self.calls >= self.crash_after_calls:
            raise SimulatedCrash()
        self.calls += 1
        self.images += len(images)
        return self.inner.score(images, prompts, batch_size=batch_size)


class SimulatedCrash(BaseException):
    """Like a kill: not an Exception, so no per-row error handling catches it."""


# ------------------------------------------------------------------------------------------


def test_folder_with_a_corrupt_jpeg_scores_the_rest(bundle: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i, name in enumerate(["a.png", "b.jpg", "nested/c.png"]):
        _write_image(folder / name, seed=i)
    _corrupt_jpeg(folder / "broken.jpg")
    # Decodes fine but the model's processor refuses it: the failure stays on this row.
    Image.new("RGB", (300, 1)).save(folder / "thin.png")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "scores.csv"
    assert _cli(["score", "--bundle", str(bundle), "--input", str(folder), "--out", str(out), "--batch-size", "3"]) == 0

    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == OUTPUT_COLUMNS
        rows = {row["image"]: row for row in reader}
    assert sorted(rows) == ["a.png", "b.jpg", "broken.jpg", "nested/c.png", "thin.png"]
    assert "cannot decode image" in rows["broken.jpg"]["error"] and rows["broken.jpg"]["s_vis"] == ""
    assert "aspect ratio" in rows["thin.png"]["error"] and rows["thin.png"]["s_vis"] == ""
    for name in ("a.png", "b.jpg", "nested/c.png"):
        row = rows[name]
        assert row["error"] == "" and row["prompt"] == "" and row["s_ali"] == ""  # no prompt: s_vis only
        assert np.isfinite(float(row["s_vis"]))


def test_csv_with_a_missing_file_and_parquet_output(bundle: Path, scorer: ELIQScorer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    _write_image(data / "imgs" / "one.png", seed=1)
    _write_image(data / "imgs" / "two.png", seed=2, size=(96, 64))
    with (data / "list.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt", "extra"])
        writer.writerows([["imgs/one.png", "a red car", "x"], ["imgs/gone.png", "a cat", "y"],
                          ["imgs/two.png", "", "z"], ["imgs/one.png", "a red car", "duplicate"]])
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the CSV's folder, not the cwd
    out = tmp_path / "out" / "scores.parquet"
    assert _cli(["score", "--bundle", str(bundle), "--input", str(data / "list.csv"), "--out", str(out)]) == 0

    assert pq.read_table(out).column_names == list(OUTPUT_COLUMNS)
    rows = read_output(out)
    assert [(r["image"], r["prompt"]) for r in rows] == [("imgs/one.png", "a red car"), ("imgs/gone.png", "a cat"),
                                                        ("imgs/two.png", None)]
    one, gone, two = rows
    assert "not found" in gone["error"] and "gone.png" in gone["error"] and gone["s_vis"] is None
    assert one["error"] is None and one["s_ali"] is not None
    assert two["error"] is None and two["s_vis"] is not None and two["s_ali"] is None
    expected = scorer.score([Image.open(data / "imgs" / "one.png")], ["a red car"])[0]
    assert (one["s_vis"], one["s_ali"]) == pytest.approx(expected, abs=1e-6)


def test_csv_without_an_image_column_fails_naming_the_file(bundle: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,prompt\na.png,a cat\n")
    with pytest.raises(ValueError, match=r"bad\.csv has no 'image' column \(columns: name, prompt\)"):
        read_inputs(bad)
    assert main(["score", "--bundle", str(bundle), "--input", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    assert "bad.csv has no 'image' column" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
    assert [item.image for item in read_inputs(bad, image_column="name")] == ["a.png"]


def test_a_tiny_bundle_finds_its_backbone_under_eliq_home(parts: TinyParts, tmp_path: Path, capsys,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from eliq_pipeline import tiny
    from eliq_pipeline.tiny.backbone import build_tiny_backbone

    # Trained as the pipeline trains: on the toy backbone tiny.resolve builds under a models folder.
    trained_on = Path(tiny.resolve("tiny:qwen3-vl", tmp_path / "training-home" / "models"))
    adapter = make_adapter(trained_on, tmp_path / "adapter", base_ref="tiny:qwen3-vl")
    tiny_bundle = export_bundle(adapter, parts.head, tmp_path / "tiny-bundle", base=str(trained_on))
    _write_image(tmp_path / "images" / "a.png", seed=1)
    argv = ["score", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "images"), "--threads", "1", "--no-progress"]

    # No --base: the toy backbone is built (from configs in code) under $ELIQ_HOME/models, where the
    # pipeline would have built it, and its fingerprint matches the one the bundle records.
    monkeypatch.setenv("ELIQ_HOME", str(tmp_path / "home"))
    assert main([*argv, "--out", str(tmp_path / "s.csv")]) == 0
    backbone = tmp_path / "home" / "models" / "tiny-qwen3-vl-0"
    assert f"base backbone: tiny:qwen3-vl from {backbone}" in capsys.readouterr().err
    assert read_output(tmp_path / "s.csv")[0]["s_vis"] is not None

    # A different toy backbone where the bundle's should be is refused, never silently used.
    other_home = tmp_path / "other-home"
    build_tiny_backbone(other_home / "models" / "tiny-qwen3-vl-0", seed=1)
    (other_home / "models" / "tiny-qwen3-vl-0" / "_COMPLETE").write_text("ok")
    monkeypatch.setenv("ELIQ_HOME", str(other_home))
    assert main([*argv, "--out", str(tmp_path / "t.csv")]) == 2
    assert "was trained on base" in capsys.readouterr().err and not (tmp_path / "t.csv").exists()
    assert main([*argv, "--out", str(tmp_path / "t.csv"), "--base", str(backbone)]) == 0  # --base names the right one

    assert main(["score", "--bundle", str(tmp_path), "--input", str(tmp_path / "images"), "--out", str(tmp_path / "u.csv")]) == 2
    assert "is not an ELIQ scorer bundle" in capsys.readouterr().err


def test_resume_scores_only_missing_rows(scorer: ELIQScorer, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(7):
        _write_image(folder / f"{i:02d}.png", seed=10 + i)
    items = read_inputs(folder)
    out = tmp_path / "scores.csv"
    full = CountingScorer(scorer)
    summary = score_items(full, items, out, batch_size=2, flush_every=2, progress=False)
    assert (summary.scored, summary.errors, full.images) == (7, 0, 7)
    complete = read_output(out)

    # Lose the last three rows (as if the file were cut short), then rerun: only they are scored.
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:-3]))
    again = CountingScorer(scorer)
    summary = score_items(again, items, out, batch_size=2, flush_every=2, progress=False)
    assert (again.images, summary.kept, summary.scored) == (3, 4, 3)
    assert read_output(out) == complete

    # A finished output reruns without scoring anything.
    idle = CountingScorer(scorer)
    score_items(idle, items, out, batch_size=2, progress=False)
    assert idle.calls == 0 and read_output(out) == complete


def test_a_crash_leaves_a_valid_partial_file_and_the_rerun_completes_it(scorer: ELIQScorer, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(6):
        _write_image(folder / f"{i}.png", seed=20 + i)
    _corrupt_jpeg(folder / "9-broken.jpg")
    items = read_inputs(folder)
    out = tmp_path / "scores.csv"
    with pytest.raises(SimulatedCrash):
        score_items(CountingScorer(scorer, crash_after_calls=3), items, out, batch_size=1, flush_every=2, progress=False)
    partial = read_output(out)  # parses: the file was replaced whole after each chunk
    assert [row["image"] for row in partial] == ["0.png", "1.png"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no stray temp files

    rerun = CountingScorer(scorer)
    summary = score_items(rerun, items, out, batch_size=2, flush_every=2, progress=False)
    rows = read_output(out)
    assert rerun.images == 4 and (summary.kept, summary.errors) == (2, 1)
    assert [row["image"] for row in rows] == ["0.png", "1.png", "2.png", "3.png", "4.png", "5.png", "9-broken.jpg"]
    assert rows[:2] == partial

    # Error rows are retried on the next run: once the file is fixed, only it is scored.
    _write_image(folder / "9-broken.jpg", seed=99)
    fixed = CountingScorer(scorer)
    score_items(fixed, items, out, batch_size=2, progress=False)
    assert fixed.images == 1 and all(row["error"] is None for row in read_output(out))


# ------------------------------------------------------------------------------ damaged bundles


@pytest.mark.parametrize("name", ["head/model.safetensors", BUNDLE_META_FILE])
def test_a_damaged_bundle_is_a_clean_error_naming_the_file(bundle: Path, name: str, tmp_path: Path, capsys) -> None:
    damaged = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    data = (damaged / name).read_bytes()
    (damaged / name).write_bytes(data[: len(data) // 2])  # a truncated copy
    _write_image(tmp_path / "images" / "a.png", seed=1)
    out = tmp_path / "scores.csv"
    assert main(["score", "--bundle", str(damaged), "--input", str(tmp_path / "images"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"eliq: error: bundle {damaged} is damaged: {name}: ") and "Traceback" not in err
    assert "re-export it with `eliq export`" in err and err.count("\n") == 1
    assert not out.exists() and not lock_path(out).exists()


# ------------------------------------------------------------------------------ concurrent runs


def _prompted_csv(path: Path, names: list[str], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt"])
        for i, name in enumerate(names):
            _write_image(path.parent / name, seed=seed + i)
            writer.writerow([name, f"a photo number {i}"])
    return path


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_two_runs_on_one_out_take_turns_and_lose_no_rows(bundle: Path, tmp_path: Path) -> None:
    inputs = [_prompted_csv(tmp_path / f"in{k}" / "list.csv", [f"img{k}-{i}.png" for i in range(3)], seed=40 + 10 * k)
              for k in (0, 1)]
    out = tmp_path / "scores.csv"
    stderr = [tmp_path / f"run{k}.err" for k in (0, 1)]
    with output_lock(out):  # held here until both runs are waiting, so they really overlap
        runs = []
        for source, err in zip(inputs, stderr):
            argv = [sys.executable, "-m", "eliq_pipeline.score_cli", "score", "--bundle", str(bundle), "--input",
                    str(source), "--out", str(out), "--threads", "1", "--no-progress"]
            with err.open("w") as handle:
                runs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=handle, text=True))
        try:
            _wait_for(lambda: all("waiting for another eliq score writing" in e.read_text() for e in stderr), 120,
                      "both runs to wait for the lock")
        except BaseException:
            for run in runs:
                run.kill()
            raise
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [e.read_text() for e in stderr]
    for err in stderr:
        assert f"waiting for another eliq score writing {out} (pid {os.getpid()})" in err.read_text()
    rows = read_output(out)
    assert sorted(row["image"] for row in rows) == sorted(f"img{k}-{i}.png" for k in (0, 1) for i in range(3))
    assert all(row["error"] is None and row["s_ali"] is not None for row in rows)
    # Whichever ran second found the first one's rows, kept them and added its own.
    assert sorted("kept 3 from an earlier run; 6 rows" in text for text in outputs) == [False, True], outputs
    assert not lock_path(out).exists()


def test_a_killed_run_leaves_no_stale_lock(tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from eliq_pipeline.score_cli import output_lock\n"
         f"with output_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_path(out).read_text().strip() == str(holder.pid)
        with lock_path(out).open() as handle, pytest.raises(BlockingIOError):
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    said: list[str] = []
    started = time.monotonic()
    with output_lock(out, said.append):  # the kernel released the dead holder's lock
        assert lock_path(out).read_text().strip() == str(os.getpid())
    assert said == [] and time.monotonic() - started < 5 and not lock_path(out).exists()


# ------------------------------------------------------------------------------ long prompts


def test_an_over_long_prompt_is_cut_and_marked_in_its_row(bundle: Path, scorer: ELIQScorer, tmp_path: Path,
                                                         capfd) -> None:
    data = tmp_path / "data"
    for i, name in enumerate(["short.png", "long.png", "none.png"]):
        _write_image(data / name, seed=60 + i)
    with (data / "list.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["image", "prompt"], ["short.png", "a red car"], ["long.png", LONG_PROMPT],
                                      ["none.png", ""]])
    out = tmp_path / "scores.csv"
    capfd.readouterr()
    assert main(["score", "--bundle", str(bundle), "--input", str(data / "list.csv"), "--out", str(out),
                 "--no-progress", "--threads", "1"]) == 0
    captured = capfd.readouterr()
    assert "Token indices" not in captured.err and "longer than the specified maximum" not in captured.err
    assert "1 prompts were longer than the backbone takes and were cut to fit" in captured.err
    with out.open(newline="") as handle:
        raw = {row["image"]: row for row in csv.DictReader(handle)}
    assert [raw[name]["prompt_truncated"] for name in ("short.png", "long.png", "none.png")] == ["false", "true", "false"]
    short, long, none = read_output(out)
    assert long["prompt_truncated"] is True and long["error"] is None and long["s_ali"] is not None
    assert long["prompt"] == LONG_PROMPT  # the output names the prompt as given
    assert short["prompt_truncated"] is False and none["prompt_truncated"] is False and none["s_ali"] is None
    expected = scorer.score([Image.open(data / "short.png")], ["a red car"])[0]
    assert (short["s_vis"], short["s_ali"]) == pytest.approx(expected, abs=1e-6)


def test_outputs_without_the_prompt_truncated_column_resume(scorer: ELIQScorer, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i in range(2):
        _write_image(folder / f"{i}.png", seed=70 + i)
    out = tmp_path / "scores.csv"
    out.write_text(",".join(LEGACY_OUTPUT_COLUMNS) + "\n0.png,,0.25,,\n")  # written before the column existed
    assert read_output(out) == [{"image": "0.png", "prompt": None, "s_vis": 0.25, "s_ali": None, "error": None,
                                 "prompt_truncated": None}]
    counting = CountingScorer(scorer)
    summary = score_items(counting, read_inputs(folder), out, progress=False)
    assert (counting.images, summary.kept, summary.total) == (1, 1, 2)
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == OUTPUT_COLUMNS
        assert [(row["image"], row["s_vis"], row["prompt_truncated"]) for row in reader][0] == ("0.png", "0.25", "")


# ------------------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def tiny_era(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One materialized tiny era (FAST overrides, no benchmarks): its environment."""
    from eliq_pipeline.runner import materialize_eras

    root = tmp_path_factory.mktemp("era")
    env = pipeline_env(root / "home", write_eras(root / "eras.yaml"), ELIQ_DATASETS="")
    (root / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(root / "dagster")) as instance:
        runs = materialize_eras(instance=instance, env=env, log=lambda _: None)
    assert [(r.era, r.status) for r in runs] == [("era-a", "materialized")], runs
    return env


def test_export_bundles_a_materialized_era(tiny_era: dict[str, str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from eliq_pipeline import tiny
    from eliq_pipeline.defs.critic.assets import adapter_namespace
    from eliq_pipeline.definitions import resources_from_env
    from eliq_pipeline.critic import data as critic_data
    from eliq_pipeline.critic.embedding_cache import EmbeddingCache
    from eliq_pipeline.critic.head.checkpoints import load_scoring_head
    from eliq_pipeline.critic.head.modules import score_embeddings
    from eliq_pipeline.supervision.image_cache import get_image

    for key, value in tiny_era.items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "era-a-bundle"
    assert main(["export", "--era", "era-a", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    backbone = Path(tiny_era["ELIQ_HOME"]) / "models" / "tiny-qwen3-vl-0"
    assert f"(base tiny:qwen3-vl, built at {backbone})" in printed  # the real folder, not a placeholder
    assert f"eliq score --bundle {out} --era era-a --out scores.csv" in printed
    meta = json.loads((out / BUNDLE_META_FILE).read_text())
    assert meta["base_ref"] == "tiny:qwen3-vl" and meta["provenance"]["era"] == "era-a"
    assert meta["provenance"]["embedding_namespace"] == adapter_namespace(out / "adapter")

    resources = resources_from_env(tiny_era)
    store, base = resources["artifacts"].store(), tiny.resolve(resources["profile"].settings().backbone, resources["profile"].models_dir)
    scorer = ELIQScorer.from_pretrained(out, base_override=base)

    # The bundle reproduces what the pipeline computed for this era: the cached embeddings of
    # tuple positives and the qqt_model's scores on them.
    rows = store.get_table("eras/era-a/comparison_tuples.parquet").to_pylist()[:4]
    requests = [critic_data.tuple_requests(row) for row in rows]
    cache = EmbeddingCache(store, meta["provenance"]["embedding_namespace"])
    cached = [cache.get([r[name] for r in requests]) for name in ("pos_tec", "pos_aes", "pos_ali")]
    images = [get_image(store, row["positive_sha256"]) for row in rows]
    prompts = [row["prompt"] for row in rows]
    for ours, theirs in zip(scorer.embed(images, prompts, batch_size=4), cached):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=1e-4)
    head, _ = load_scoring_head(store.get_dir("eras/era-a/qqt_model"))
    expected_vis, expected_ali = score_embeddings(head, *cached)
    # visual_from_prompt: s_vis as the pipeline computes it on prompted images (the bundle's
    # default s_vis uses the neutral caption for every image, see ELIQScorer.score).
    scores = scorer.score(images, prompts, batch_size=4, visual_from_prompt=True)
    np.testing.assert_allclose([s for s, _ in scores], expected_vis, rtol=0, atol=1e-4)
    np.testing.assert_allclose([a for _, a in scores], expected_ali, rtol=0, atol=1e-4)


def test_export_of_an_unmaterialized_era_fails_clearly(tiny_era: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for key, value in tiny_era.items():
        monkeypatch.setenv(key, value)
    assert main(["export", "--era", "era-z", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "tuned_mllm of era 'era-z' is not in the artifact store" in err and "eliq materialize --era era-z" in err
    assert not (tmp_path / "b").exists()


def test_score_era_scores_its_positives_with_their_prompts(tiny_era: dict[str, str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """`eliq score --era` reads the era's positives from the store, each with its prompt; `eliq export
    --images` writes the same images under the same names with an images.csv that scores the same."""
    from eliq_pipeline.definitions import load_era_value

    for key, value in tiny_era.items():
        monkeypatch.setenv(key, value)
    bundle_dir = tmp_path / "bundle"
    assert main(["export", "--era", "era-a", "--out", str(bundle_dir), "--images", str(tmp_path / "positives")]) == 0
    printed = capsys.readouterr().out
    positives = load_era_value("positive_images", "era-a", tiny_era).to_pylist()
    assert f"wrote the {len(positives)} positive images of era era-a to {tmp_path / 'positives'}" in printed

    common = ["--bundle", str(bundle_dir), "--threads", "1", "--no-progress"]
    assert main(["score", *common, "--era", "era-a", "--out", str(tmp_path / "era.csv")]) == 0
    era_rows = read_output(tmp_path / "era.csv")
    by_name = {f"{p['generator']}/{p['prompt_id']}-{p['image_index']}.png": p for p in positives}
    assert {row["image"]: row["prompt"] for row in era_rows} == {name: p["prompt"] for name, p in by_name.items()}
    assert all(row["error"] is None and row["s_ali"] is not None for row in era_rows)

    with (tmp_path / "positives" / "images.csv").open(newline="") as handle:
        listed = list(csv.DictReader(handle))
    for row in listed:
        assert (tmp_path / "positives" / row["image"]).is_file()
        assert row["image_sha256"] == by_name[row["image"]]["image_sha256"]
    assert main(["score", *common, "--input", str(tmp_path / "positives" / "images.csv"),
                 "--out", str(tmp_path / "files.csv")]) == 0
    file_rows = {(r["image"], r["prompt"]): (r["s_vis"], r["s_ali"]) for r in read_output(tmp_path / "files.csv")}
    for row in era_rows:
        assert file_rows[(row["image"], row["prompt"])] == pytest.approx((row["s_vis"], row["s_ali"]), abs=1e-6)

    # Exported again into the same folder: nothing changes, the images are not rewritten.
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "positives").rglob("*.png")}
    assert main(["export", "--era", "era-a", "--images", str(tmp_path / "positives")]) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "positives").rglob("*.png")} == before

    # Neither --out nor --images; --era and --input together; an era that was never built.
    assert main(["export", "--era", "era-a"]) == 2
    assert "needs --out (the critic bundle), --images (the era's positives) or both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["score", *common, "--era", "era-a", "--input", str(tmp_path), "--out", str(tmp_path / "x.csv")])
    assert "not allowed with argument" in capsys.readouterr().err
    assert main(["score", *common, "--era", "era-z", "--out", str(tmp_path / "z.csv")]) == 2
    assert "positive_images of era 'era-z' is not in the artifact store" in capsys.readouterr().err


def test_an_eras_positives_are_read_from_an_s3_store(s3_endpoint: str, s3_bucket: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`--era` and `--images` read the era's table and images where the store keeps them: on S3,
    the rows are s3:// URIs that `eliq score` (and its Ray workers) read like any S3 input."""
    import pyarrow as pa

    from eliq_pipeline.core.images import png_bytes
    from eliq_pipeline.definitions import resources_from_env
    from eliq_pipeline.score_cli import _load, read_era_inputs, write_era_images
    from eliq_pipeline.supervision.image_cache import put_image

    env = pipeline_env(tmp_path / "home", write_eras(tmp_path / "eras.yaml"), ELIQ_STORE="s3",
                       ELIQ_S3_BUCKET=s3_bucket, ELIQ_S3_ENDPOINT=s3_endpoint)
    monkeypatch.setenv("ELIQ_S3_ENDPOINT", s3_endpoint)  # what score_cli's own S3 client reads
    store = resources_from_env(env)["artifacts"].store()
    pictures = [Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)) for i in range(2)]
    rows = [{"prompt_id": f"p_{i}", "prompt": f"prompt {i}", "image_index": 0, "category": "scene", "generator": "flux",
             "image_sha256": put_image(store, picture)} for i, picture in enumerate(pictures)]
    store.put_table("eras/era-a/positive_images.parquet", pa.Table.from_pylist(rows))

    items = read_era_inputs("era-a", env)
    assert [(item.image, item.prompt) for item in items] == [("flux/p_0-0.png", "prompt 0"), ("flux/p_1-0.png", "prompt 1")]
    assert all(str(item.path).startswith(f"s3://{s3_bucket}/eliq/images/") for item in items)
    assert [png_bytes(_load(item)) for item in items] == [png_bytes(p) for p in pictures]

    listing = write_era_images("era-a", tmp_path / "positives", env)
    with listing.open(newline="") as handle:
        assert [(r["image"], r["prompt"], r["image_sha256"]) for r in csv.DictReader(handle)] == [
            (item.image, item.prompt, row["image_sha256"]) for item, row in zip(items, rows)]
    assert (tmp_path / "positives" / "flux" / "p_1-0.png").read_bytes() == png_bytes(pictures[1])

    # A table row without what names its image is an error naming the era and row.
    store.put_table("eras/era-a/positive_images.parquet", pa.Table.from_pylist([rows[0], {**rows[1], "image_sha256": None}]))
    with pytest.raises(ValueError, match=r"positive_images of era 'era-a', row 2: no image_sha256"):
        read_era_inputs("era-a", env)
