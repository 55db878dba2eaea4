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


def test_tiny_bundle_without_base_fails_the_run_not_the_rows(parts: TinyParts, tmp_path: Path, capsys) -> None:
    adapter = make_adapter(parts.base, tmp_path / "adapter", base_ref="tiny:qwen3-vl")
    tiny_bundle = export_bundle(adapter, parts.head, tmp_path / "tiny-bundle", base=str(parts.base))
    _write_image(tmp_path / "images" / "a.png", seed=1)
    argv = ["score", "--bundle", str(tiny_bundle), "--input", str(tmp_path / "images"), "--out", str(tmp_path / "s.csv")]
    assert main(argv) == 2
    assert "pass base_override (CLI: --base)" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
    assert main(argv + ["--base", str(parts.base), "--threads", "1", "--no-progress"]) == 0
    assert read_output(tmp_path / "s.csv")[0]["s_vis"] is not None
    assert main(["score", "--bundle", str(tmp_path), "--input", str(tmp_path / "images"), "--out", str(tmp_path / "t.csv")]) == 2
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
    assert "--base" in capsys.readouterr().out  # tiny bundles say how to score them
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
    scores = scorer.score(images, prompts, batch_size=4)
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
