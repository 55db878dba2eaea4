import math

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage, special, stats
from scipy.io import savemat

from eliq_pipeline.evaluation import baselines as bl
from eliq_pipeline.evaluation.baselines import (
    BASELINES,
    NIQEModel,
    aggd_fit,
    fit_niqe_model,
    ggd_fit,
    imresize_half,
    make_baseline,
    mscn,
    niqe,
    niqe_features,
    piqe,
    piqe_block_maps,
    score_paths,
    to_gray,
)
from eliq_pipeline_tests.shared_data import AGIQA_3K

needs_agiqa = pytest.mark.skipif(not (AGIQA_3K / "data.csv").is_file(), reason="AGIQA-3K copy not present")


def dead_leaves(size: int, seed: int, n: int = 1500) -> np.ndarray:
    """A dead-leaves image (occluding disks, radii ~ r^-3) plus faint texture: scale-invariant
    statistics close to natural images', made with numpy alone so it is identical everywhere."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size), 128.0)
    rmin, rmax = 3.0, size / 4
    radius = 1 / np.sqrt(1 / rmin**2 - rng.random(n) * (1 / rmin**2 - 1 / rmax**2))
    cy, cx = rng.uniform(-rmax / 2, size + rmax / 2, (2, n))
    gray = rng.uniform(20, 235, n)
    yy, xx = np.mgrid[:size, :size]
    for r, y, x, g in zip(radius, cy, cx, gray):
        y0, y1 = int(max(y - r, 0)), int(min(y + r + 1, size))
        x0, x1 = int(max(x - r, 0)), int(min(x + r + 1, size))
        if y0 < y1 and x0 < x1:
            disk = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= r * r
            img[y0:y1, x0:x1][disk] = g
    texture = np.random.default_rng(seed + 1000).normal(0, 2.0, img.shape)
    k = np.array([1.0, 2.0, 1.0]) / 4
    img = ndimage.correlate1d(ndimage.correlate1d(img, k, 0, mode="reflect"), k, 1, mode="reflect")
    return np.clip(np.floor(img + texture + 0.5), 0, 255)


def add_noise(img: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    return np.clip(np.round(img + np.random.default_rng(seed).normal(0, sigma, img.shape)), 0, 255)


@pytest.fixture(scope="module")
def synthetic_model() -> NIQEModel:
    return fit_niqe_model([dead_leaves(288, seed) for seed in range(8)])


# ------------------------------------------------------------------------------ distribution fits


@pytest.mark.parametrize("shape", [0.8, 1.5, 2.0, 3.0])
def test_ggd_fit_recovers_shape(shape):
    x = stats.gennorm.rvs(shape, scale=1.7, size=200_000, random_state=np.random.default_rng(int(shape * 10)))
    alpha, sigma = ggd_fit(x)
    assert alpha == pytest.approx(shape, rel=0.03)
    assert sigma == pytest.approx(np.sqrt(np.mean(x * x)), rel=1e-12)  # zero-mean model: RMS
    assert aggd_fit(x)[0] == pytest.approx(alpha, abs=0.011)  # symmetric data: the same estimator


def test_aggd_fit_recovers_asymmetric_parameters_and_mean():
    rng = np.random.default_rng(0)
    alpha, beta_l, beta_r, n = 1.4, 0.5, 1.5, 400_000
    left_side = rng.random(n) < beta_l / (beta_l + beta_r)  # P(x < 0) of the AGGD
    x = np.where(left_side,
                 -np.abs(stats.gennorm.rvs(alpha, scale=beta_l, size=n, random_state=rng)),
                 np.abs(stats.gennorm.rvs(alpha, scale=beta_r, size=n, random_state=rng)))
    a, bl_, br_ = aggd_fit(x)
    assert a == pytest.approx(alpha, rel=0.02)
    assert bl_ == pytest.approx(beta_l, rel=0.02) and br_ == pytest.approx(beta_r, rel=0.02)
    # NIQE's mean feature (beta_r - beta_l) Gamma(2/a) / Gamma(1/a) is the AGGD mean.
    assert (br_ - bl_) * special.gamma(2 / a) / special.gamma(1 / a) == pytest.approx(x.mean(), rel=0.02)
    # Batched along the last axis, as NIQE uses it.
    batch = aggd_fit(np.stack([x[:1000], x[1000:2000]]))
    assert batch[0].shape == (2,) and batch[0][0] == aggd_fit(x[:1000])[0]


def test_aggd_fit_degenerate_inputs_follow_matlab():
    a, left, right = aggd_fit(np.array([0.5, 1.0, 2.0, 0.0]))
    assert np.isnan(left) and right > 0  # no negative sample: mean of an empty vector is NaN
    a, left, right = aggd_fit(np.zeros(10))
    assert a == pytest.approx(0.2) and np.isnan(left) and np.isnan(right)  # min over all-NaN: first index


# ----------------------------------------------------------------------------- NIQE building blocks


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _matlab_resize_1d(v: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB imresize's contributions() for bicubic with antialiasing, transcribed literally."""
    in_len = v.size
    out_len = math.ceil(in_len * scale)
    kernel_width = 4.0 / scale
    u = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    indices = left[:, None] + np.arange(math.ceil(kernel_width) + 2)[None, :]
    weights = scale * _cubic(scale * (u[:, None] - indices))
    weights /= weights.sum(axis=1, keepdims=True)
    aux = np.r_[np.arange(1, in_len + 1), np.arange(in_len, 0, -1)]
    indices = aux[np.mod(indices - 1, aux.size).astype(int)] - 1
    return (weights * v[indices]).sum(axis=1)


@pytest.mark.parametrize("length", [96, 97, 10])
def test_imresize_half_matches_matlab_contributions(length):
    rng = np.random.default_rng(length)
    img = rng.uniform(0, 255, size=(length, 13))
    expected = np.apply_along_axis(_matlab_resize_1d, 0, img, 0.5)
    expected = np.apply_along_axis(_matlab_resize_1d, 1, expected, 0.5)
    assert np.allclose(imresize_half(img), expected, atol=1e-10)
    assert np.allclose(imresize_half(np.full((20, 20), 77.0)), 77.0)


def test_gray_conversion_matches_matlab_rgb2gray_uint8():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    expected = [[76, 150, 29, 18]]  # round(0.2989 R + 0.5870 G + 0.1140 B)
    assert np.array_equal(to_gray(Image.fromarray(rgb)), expected)
    assert np.array_equal(to_gray(rgb), expected)
    assert to_gray(Image.fromarray(rgb).convert("L")).dtype == np.float64


def test_niqe_features_follow_the_release_definition():
    gray = dead_leaves(300, 5)[:250, :290]  # crops to 192 x 288: 2 x 3 patches
    feats, sharpness = niqe_features(gray)
    assert feats.shape == (6, 36) and sharpness.shape == (6,)
    cropped = gray[:192, :288]
    for scale, image, size, offset in ((1, cropped, 96, 0), (2, imresize_half(cropped), 48, 18)):
        coeffs, sigma = mscn(image)
        for k in range(6):
            r, c = divmod(k, 3)  # patches in row-major order
            patch = coeffs[r * size:(r + 1) * size, c * size:(c + 1) * size]
            a, left, right = aggd_fit(patch.reshape(-1))
            expected = [a, (left + right) / 2]
            # Products with the right, lower, lower-right and lower-left neighbour, wrapping
            # inside the patch like MATLAB's circshift on the block blkproc hands over.
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                shifted = np.roll(np.roll(patch, dy, axis=0), dx, axis=1)
                a, left, right = aggd_fit((patch * shifted).reshape(-1))
                mean = (right - left) * special.gamma(2 / a) / special.gamma(1 / a)
                expected += [a, mean, left, right]
            assert np.allclose(feats[k, offset:offset + 18], expected, rtol=1e-12)
            if scale == 1:
                block = sigma[r * size:(r + 1) * size, c * size:(c + 1) * size]
                assert sharpness[k] == pytest.approx(block.mean())
    with pytest.raises(ValueError, match="at least 96x96"):
        niqe_features(np.zeros((95, 400)))


def test_niqe_distance_formula(synthetic_model):
    img = dead_leaves(288, 50)
    feats, _ = niqe_features(img)
    mu_d, cov_d = feats.mean(axis=0), np.cov(feats, rowvar=False)
    assert niqe(img, NIQEModel(mu_d, synthetic_model.cov)) == pytest.approx(0.0, abs=1e-9)
    diff = synthetic_model.mu - mu_d
    expected = math.sqrt(diff @ np.linalg.pinv((synthetic_model.cov + cov_d) / 2) @ diff)
    assert niqe(img, synthetic_model) == pytest.approx(expected, rel=1e-9)


def test_niqe_regression_value(synthetic_model):
    # Cross-checked when written: BasicSR's MATLAB-validated NIQE, given this model and the same
    # zero-snapping of MSCN coefficients, agreed to 1e-11.
    assert synthetic_model.n_patches == 51 and synthetic_model.n_images == 8
    assert niqe(dead_leaves(288, 100), synthetic_model) == pytest.approx(4.4912308206, rel=1e-6)


def test_niqe_rises_with_noise_and_blur_on_synthetic_natural_images(synthetic_model):
    for seed in (100, 101):
        clean = dead_leaves(288, seed)
        base = niqe(clean, synthetic_model)
        assert niqe(add_noise(clean, 10, seed), synthetic_model) > base + 5
        assert niqe(np.round(ndimage.gaussian_filter(clean, 2.0)), synthetic_model) > base + 5


@needs_agiqa
def test_niqe_rises_with_noise_and_blur_on_agiqa_images():
    from eliq_pipeline.evaluation.benchmarks import load_agiqa_3k

    items = sorted(load_agiqa_3k(AGIQA_3K).items, key=lambda it: -it.mos_quality)
    model = fit_niqe_model([it.image_path for it in items[:30]])  # the best-rated images as pristine
    for item in items[100:104]:
        with Image.open(item.image_path) as opened:
            image = opened.convert("RGB")
        arr = np.asarray(image, dtype=np.float64)
        noisy = Image.fromarray(add_noise(arr, 15).astype(np.uint8))
        blurred = image.filter(ImageFilter.GaussianBlur(2))
        base = niqe(image, model)
        assert niqe(noisy, model) > base + 1 and niqe(blurred, model) > base + 1


def test_niqe_of_flat_image_is_nan(synthetic_model):
    assert math.isnan(niqe(np.full((192, 192), 90.0), synthetic_model))


# ------------------------------------------------------------------------------- model persistence


def test_niqe_model_fit_save_load_round_trip(tmp_path, synthetic_model):
    img = dead_leaves(288, 77)
    score = niqe(img, synthetic_model)
    for suffix in (".npz", ".json"):
        path = synthetic_model.save(tmp_path / f"model{suffix}")
        loaded = NIQEModel.load(path)
        assert np.allclose(loaded.mu, synthetic_model.mu, rtol=0, atol=0)
        assert np.allclose(loaded.cov, synthetic_model.cov, rtol=0, atol=0)
        assert (loaded.n_patches, loaded.n_images, loaded.block_size) == (51, 8, 96)
        assert niqe(img, loaded) == score
    with np.load(tmp_path / "model.npz", allow_pickle=False) as npz:  # plain arrays, no pickle
        assert npz["mu_prisparam"].shape == (36,)
    # The release's modelparameters.mat layout (1 x 36 row vector) and BasicSR's key names.
    savemat(tmp_path / "modelparameters.mat", {"mu_prisparam": synthetic_model.mu[None, :],
                                                "cov_prisparam": synthetic_model.cov})
    assert niqe(img, NIQEModel.load(tmp_path / "modelparameters.mat")) == pytest.approx(score)
    np.savez(tmp_path / "pris.npz", mu_pris_param=synthetic_model.mu, cov_pris_param=synthetic_model.cov)
    assert niqe(img, NIQEModel.load(tmp_path / "pris.npz")) == pytest.approx(score)
    np.savez(tmp_path / "bad.npz", mean=synthetic_model.mu)
    with pytest.raises(ValueError, match="expected mu_prisparam/cov_prisparam, found mean"):
        NIQEModel.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"\.npz or \.json"):
        synthetic_model.save(tmp_path / "model.pkl")
    with pytest.raises(ValueError, match="36"):
        NIQEModel(np.zeros(18), np.eye(18))
    with pytest.raises(ValueError, match="no image of at least"):
        fit_niqe_model([np.zeros((50, 50))])


# ----------------------------------------------------------------------------------------- PIQE


def test_piqe_rises_with_noise():
    clean = dead_leaves(256, 3)
    scores = [piqe(add_noise(clean, sigma)) for sigma in (10, 20, 40, 80)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores
    assert piqe(clean) < scores[1]
    assert all(0.0 <= s <= 100.0 for s in scores)


@needs_agiqa
def test_piqe_rises_with_noise_on_agiqa_image():
    from eliq_pipeline.evaluation.benchmarks import load_agiqa_3k

    item = load_agiqa_3k(AGIQA_3K).items[1500]
    gray = to_gray(item.image_path)
    scores = [piqe(add_noise(gray, sigma)) for sigma in (10, 20, 40, 80)]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_piqe_block_maps_and_edge_cases():
    assert piqe(np.full((64, 64), 128.0)) == 100.0  # no active block: (0 + 1) / (0 + 1) * 100
    img = dead_leaves(100, 9)  # padded to 112 x 112: 49 blocks
    var, active, distorted, noisy = piqe_block_maps(img)
    assert var.shape == active.shape == (49,)
    assert not np.any(distorted & ~active) and not np.any(noisy & ~active)
    expected = (np.sum(distorted * (1 - var) + noisy * var) + 1) / (active.sum() + 1) * 100
    assert piqe(img) == pytest.approx(expected)
    # An RGB PIL image and its MATLAB-rounded gray give the same score.
    rgb = Image.fromarray(np.stack([img, img, img], axis=-1).astype(np.uint8))
    assert piqe(rgb) == pytest.approx(piqe(img))


# ------------------------------------------------------------------------------------- registry


def test_registry_scorers_are_higher_is_better(tmp_path, synthetic_model):
    assert set(BASELINES.names()) >= {"niqe", "piqe"}
    assert BASELINES.meta("niqe")["sign"] == -1.0 and BASELINES.meta("piqe")["sign"] == -1.0
    img = dead_leaves(192, 11)
    path = synthetic_model.save(tmp_path / "m.npz")
    assert make_baseline("niqe", model=path)(img) == pytest.approx(-niqe(img, synthetic_model))
    assert make_baseline("niqe", model=synthetic_model)(img) == -niqe(img, synthetic_model)
    assert make_baseline("piqe")(img) == -piqe(img)
    noisy = add_noise(img, 30)
    for name, options in (("niqe", {"model": synthetic_model}), ("piqe", {})):
        scorer = make_baseline(name, **options)
        assert scorer(img) > scorer(noisy), name


def test_score_paths_parallel_matches_in_process(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        Image.fromarray(add_noise(dead_leaves(128, 30 + i), 4 * i).astype(np.uint8)).save(path)
        paths.append(path)
    scorer = make_baseline("piqe")
    serial = score_paths(scorer, paths, workers=1)
    parallel = score_paths(scorer, paths, workers=2, chunksize=2)
    assert np.array_equal(serial, parallel)
    assert serial.tolist() == [-piqe(p) for p in paths]
    assert bl.score_paths(scorer, [], workers=2).shape == (0,)
