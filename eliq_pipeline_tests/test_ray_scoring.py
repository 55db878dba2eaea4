"""`eliq score --ray`: bulk scoring with Ray Data on a real local Ray runtime (conftest's
`ray_runtime`, 2 CPUs; no mocks of Ray): same rows as in-process, resume, a worker killed
mid-batch, an image that kills every worker, S3 prefix input."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from eliq_pipeline.critic.bundle import ELIQScorer
from eliq_pipeline.ray_scoring import (
    BUNDLE_COPY_PREFIX,
    ScorerActor,
    default_worker_count,
    read_folder,
    score_items_on_ray,
    unpacked_location,
)
from eliq_pipeline.score_cli import main, read_inputs, read_output, score_items, write_output
from eliq_pipeline_tests.critic.test_bundle import make_tiny_parts
from eliq_pipeline_tests.test_score_cli import _cli, _corrupt_jpeg, _write_image

pytestmark = pytest.mark.usefixtures("one_thread")

# An image this size is what the dying scorers below die on.
DEADLY_SIZE = (72, 40)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    parts = make_tiny_parts(tmp_path_factory.mktemp("ray-parts"))
    folder = ELIQScorer.from_parts(parts.adapter, parts.head).save_pretrained(tmp_path_factory.mktemp("ray") / "bundle")
    yield folder
    # The workers' copy, in this machine's temp dir (the runtime is local): named by content, so
    # every test of the module shared it.
    shutil.rmtree(unpacked_location(read_folder(folder), BUNDLE_COPY_PREFIX), ignore_errors=True)


@pytest.fixture(scope="module")
def scorer(bundle: Path) -> ELIQScorer:
    return ELIQScorer.from_pretrained(bundle)


def _assert_same_rows(ours: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same rows in the same order; scores equal to 1e-5 (the pool may batch them differently)."""
    assert [(r["image"], r["prompt"], r["error"], r["prompt_truncated"]) for r in ours] == \
        [(r["image"], r["prompt"], r["error"], r["prompt_truncated"]) for r in expected]
    for mine, theirs in zip(ours, expected):
        for column in ("s_vis", "s_ali"):
            if theirs[column] is None:
                assert mine[column] is None, (mine, theirs)
            else:
                assert mine[column] == pytest.approx(theirs[column], abs=1e-5), (mine, theirs)


@pytest.fixture
def deadline() -> Iterator[None]:
    """Fail (not hang) if retrying dead workers ever loops: Ray retries a lost worker forever."""
    def expire(_signum: int, _frame: Any) -> None:
        raise TimeoutError("the Ray run did not finish in 240 s: dead workers retried without end?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(240)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _recording_actor(attempts: Path, deadly: str = "never") -> type[ScorerActor]:
    """ScorerActor that writes one file per batch it is handed (the images in it) and one naming
    the bundle folder it loaded, and, with ``deadly`` "once" or "always", SIGKILLs its own process
    when asked to score an image of DEADLY_SIZE (the first time only, or every time). Defined in
    a function, so Ray ships the class by value and the workers never import this test module."""
    killed = attempts / "killed"

    class DyingScorer:
        def __init__(self, inner: ELIQScorer) -> None:
            self.inner = inner

        def score(self, images, prompts, batch_size: int = 8):
            if DEADLY_SIZE in {image.size for image in images} and (deadly == "always" or
                                                                     (deadly == "once" and not killed.exists())):
                killed.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return self.inner.score(images, prompts, batch_size=batch_size)

    class RecordingActor(ScorerActor):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            (attempts / f"loaded-{uuid.uuid4().hex}").write_text(str(self.scorer.adapter_dir.parent))
            self.scorer = DyingScorer(self.scorer)

        def __call__(self, batch: Any) -> Any:
            (attempts / f"batch-{uuid.uuid4().hex}").write_text("\n".join(batch.column("image").to_pylist()))
            return super().__call__(batch)

    attempts.mkdir(parents=True, exist_ok=True)
    return RecordingActor


def _attempted(attempts: Path) -> list[list[str]]:
    """The batches the actors were handed, as sorted lists of image names, sorted."""
    return sorted(sorted(p.read_text().splitlines()) for p in attempts.glob("batch-*"))


def _prompted_csv(folder: Path, count: int, deadly: int | None = None) -> Path:
    with (folder / "list.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "prompt"])
        for i in range(count):
            _write_image(folder / f"{i}.png", seed=300 + i, size=DEADLY_SIZE if i == deadly else (64, 48))
            writer.writerow([f"{i}.png", f"a photo of thing number {i}" if i % 3 else ""])
    return folder / "list.csv"


# ------------------------------------------------------------------------------------------


def test_ray_rows_equal_the_in_process_rows(bundle: Path, ray_runtime: str, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    for i, name in enumerate(["a.png", "b.jpg", "nested/c.png", "d.png", "e.png"]):
        _write_image(folder / name, seed=200 + i, size=(64 + 16 * i, 48))
    _corrupt_jpeg(folder / "broken.jpg")
    common = ["score", "--bundle", str(bundle), "--input", str(folder), "--batch-size", "2", "--no-progress"]
    assert _cli([*common, "--out", str(tmp_path / "local.csv"), "--threads", "1"]) == 0
    assert _cli([*common, "--out", str(tmp_path / "ray.csv"), "--flush-every", "2",
                 "--ray", ray_runtime, "--ray-workers", "2"]) == 0

    expected, rows = read_output(tmp_path / "local.csv"), read_output(tmp_path / "ray.csv")
    _assert_same_rows(rows, expected)
    assert [row["image"] for row in rows] == ["a.png", "b.jpg", "broken.jpg", "d.png", "e.png", "nested/c.png"]
    broken = rows[2]
    assert "cannot decode image" in broken["error"] and broken["s_vis"] is None
    assert all(row["error"] is None and row["s_vis"] is not None for row in rows if row is not broken)


def test_a_resumed_ray_run_scores_only_the_missing_rows(bundle: Path, scorer: ELIQScorer, ray_runtime: str,
                                                      tmp_path: Path) -> None:
    items = read_inputs(_prompted_csv(tmp_path, 5))
    expected_out = tmp_path / "expected.csv"
    score_items(scorer, items, expected_out, batch_size=2, progress=False)
    expected = read_output(expected_out)
    assert sum(row["s_ali"] is not None for row in expected) == 3  # prompts matter here

    out = tmp_path / "scores.csv"
    earlier = [dict(row, s_vis=0.25) for row in expected[:2]]  # marked: a rescored row would lose its 0.25
    write_output(out, earlier)
    attempts = tmp_path / "attempts"
    summary = score_items_on_ray(items, out, address=ray_runtime, bundle=bundle, batch_size=2, workers=1,
                                 progress=False, actor_class=_recording_actor(attempts))
    assert (summary.kept, summary.scored, summary.total) == (2, 3, 5)
    assert _attempted(attempts) == [["2.png", "3.png"], ["4.png"]]
    # The bundle came through Ray's object store: the worker loaded its own unpacked copy.
    assert {Path(p.read_text()) for p in attempts.glob("loaded-*")} == {unpacked_location(read_folder(bundle),
                                                                                        BUNDLE_COPY_PREFIX)}
    rows = read_output(out)
    assert rows[:2] == earlier
    _assert_same_rows(rows[2:], expected[2:])

    # Nothing left to score: the pool is not even started.
    again = tmp_path / "again"
    score_items_on_ray(items, out, address=ray_runtime, bundle=bundle, progress=False,
                       actor_class=_recording_actor(again))
    assert _attempted(again) == [] and read_output(out) == rows


def test_a_worker_killed_mid_batch_is_retried_and_finished_batches_are_kept(
        bundle: Path, scorer: ELIQScorer, ray_runtime: str, tmp_path: Path, deadline: None) -> None:
    items = read_inputs(_prompted_csv(tmp_path, 6, deadly=3))
    expected_out = tmp_path / "expected.csv"
    score_items(scorer, items, expected_out, batch_size=2, progress=False)
    out, attempts = tmp_path / "scores.csv", tmp_path / "attempts"
    summary = score_items_on_ray(items, out, address=ray_runtime, bundle=bundle, batch_size=2, workers=1,
                                 progress=False, actor_class=_recording_actor(attempts, deadly="once"))
    assert (attempts / "killed").exists()  # the worker really died
    assert (summary.scored, summary.errors) == (6, 0)
    _assert_same_rows(read_output(out), read_output(expected_out))
    # Only the batch of the dead worker was handed out again.
    assert _attempted(attempts) == [["0.png", "1.png"], ["2.png", "3.png"], ["2.png", "3.png"], ["4.png", "5.png"]]


def test_an_image_that_kills_every_worker_gets_an_error_row(bundle: Path, scorer: ELIQScorer, ray_runtime: str,
                                                           tmp_path: Path, deadline: None) -> None:
    items = read_inputs(_prompted_csv(tmp_path, 4, deadly=1))
    expected_out = tmp_path / "expected.csv"
    score_items(scorer, items, expected_out, batch_size=2, progress=False)
    out = tmp_path / "scores.csv"
    summary = score_items_on_ray(items, out, address=ray_runtime, bundle=bundle, batch_size=2, workers=1,
                                 progress=False, actor_class=_recording_actor(tmp_path / "attempts", deadly="always"))
    assert (summary.scored, summary.errors) == (4, 1)
    rows, expected = read_output(out), read_output(expected_out)
    assert rows[1]["image"] == "1.png" and rows[1]["s_vis"] is None
    assert "Ray worker process died scoring this image" in rows[1]["error"]
    _assert_same_rows(rows[:1] + rows[2:], expected[:1] + expected[2:])  # its batch-mate too


def test_an_s3_prefix_scores_the_same_in_process_and_on_ray(bundle: Path, scorer: ELIQScorer, ray_runtime: str,
                                                           s3_bucket: str, s3_endpoint: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELIQ_S3_ENDPOINT", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for i, name in enumerate(["b.png", "a.png", "sub/c.png"]):
        client.put_object(Bucket=s3_bucket, Key=f"imgs/{name}", Body=_write_image(tmp_path / f"{i}.png", seed=400 + i).read_bytes())
    broken = _corrupt_jpeg(tmp_path / "broken.jpg")
    client.put_object(Bucket=s3_bucket, Key="imgs/broken.jpg", Body=broken.read_bytes())
    for skipped in ("imgs/notes.txt", "imgs/.hidden/x.png", "imgs2/d.png"):  # not images, hidden, another prefix
        client.put_object(Bucket=s3_bucket, Key=skipped, Body=b"x")

    items = read_inputs(f"s3://{s3_bucket}/imgs")
    assert [item.image for item in items] == [f"s3://{s3_bucket}/imgs/{name}"
                                              for name in ("a.png", "b.png", "broken.jpg", "sub/c.png")]
    score_items(scorer, items, tmp_path / "local.csv", batch_size=2, progress=False)
    expected = read_output(tmp_path / "local.csv")
    assert "cannot decode image" in expected[2]["error"] and expected[0]["s_vis"] is not None

    out = tmp_path / "ray.parquet"
    assert main(["score", "--bundle", str(bundle), "--input", f"s3://{s3_bucket}/imgs/", "--out", str(out),
                 "--batch-size", "2", "--ray", ray_runtime, "--ray-workers", "1", "--no-progress"]) == 0
    _assert_same_rows(read_output(out), expected)

    assert main(["score", "--bundle", str(bundle), "--input", "s3://no-such-bucket-here/x", "--out",
                 str(tmp_path / "none.csv")]) == 2


def test_pool_sizes_and_refusals(bundle: Path, ray_runtime: str, tmp_path: Path, capsys) -> None:
    assert default_worker_count("cuda", {"CPU": 32.0, "GPU": 4.0}) == 4
    assert default_worker_count("cuda:1", {"CPU": 8.0, "GPU": 1.0}) == 1
    assert default_worker_count("cpu", {"CPU": 32.0, "GPU": 4.0}) == 1
    _write_image(tmp_path / "images" / "a.png", seed=1)
    argv = ["score", "--bundle", str(bundle), "--input", str(tmp_path / "images"), "--out", str(tmp_path / "s.csv")]
    # The test runtime declares fake_gpu, never GPU: CUDA scoring there is refused before any actor starts.
    assert main([*argv, "--ray", ray_runtime, "--device", "cuda"]) == 2
    assert "--device cuda needs GPUs but the Ray cluster has none" in capsys.readouterr().err
    assert main([*argv, "--ray-workers", "2"]) == 2
    assert "--ray-workers needs --ray" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
