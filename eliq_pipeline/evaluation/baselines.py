"""Classic label-free (opinion-unaware) IQA baselines: NIQE and PIQE, as in Table 2's label-free rows.

Over 400 lines: two published algorithms (NIQE, PIQE) ported faithfully, each kept whole next to its reference.

Sign convention: both metrics measure distortion (lower = better), but every scorer this module's
registry builds returns "higher = better quality" so all critics correlate with MOS the same way:

* ``niqe`` scorer returns **-NIQE** (NIQE is a distance from a pristine model, >= 0).
* ``piqe`` scorer returns **-PIQE** (PIQE is in [0, 100], 0 = excellent, 100 = worst).

The raw functions ``niqe()`` and ``piqe()`` return the published (lower-is-better) values.

NIQE (Mittal, Soundararajan & Bovik, "Making a 'completely blind' image quality analyzer", IEEE
SPL 2013) follows the authors' MATLAB release (niqe_release: computefeature / estimateaggdparam /
computequality / estimatemodelparam) step by step, so a model file from that release
(modelparameters.mat: mu_prisparam, cov_prisparam) can be used as is:

1. grayscale as MATLAB's rgb2gray on uint8 (rounded), cropped to a multiple of the 96-px patch;
2. MSCN coefficients (I - mu) / (sigma + 1) with a 7x7 Gaussian window, sigma 7/6, replicate
   border;
3. per patch, 18 features: an AGGD fit of the MSCN values (shape, mean of the two scales; on
   symmetric data this is the paper's GGD fit) and AGGD fits (shape, mean, left scale, right
   scale) of the products of each coefficient with its right, lower, lower-right and lower-left
   neighbour (circular within the patch, as MATLAB's circshift in blkproc does);
4. the same at half resolution (MATLAB imresize 0.5: antialiased bicubic) on 48-px patches: 36
   features per patch;
5. pristine model: patches whose mean local sigma exceeds 0.75 x the image's sharpest patch,
   pooled over the pristine images, fitted by a multivariate Gaussian (NaN-aware, like nanmean /
   nancov);
6. quality = sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d)) with the test image's
   own patch MVG (mu_d, S_d), all of its patches used.

One deliberate deviation: MSCN coefficients below 1e-9 in magnitude are set to exactly 0. On
flat areas they are 0 in exact arithmetic and +-1e-13 in floating point, and the sign of that
noise decides which side of the AGGD fits those pixels join, which moves NIQE by ~1% on images
with large flat regions (common in generated images) depending only on filter summation order.
With the same snapping, BasicSR's MATLAB-validated implementation and this one agree to 1e-11;
with MATLAB's standard pristine model, -NIQE reaches SRCC 0.534 / logistic PLCC 0.563 on
AGIQA-3K, against 0.523 / 0.566 in the ELIQ paper's Table 2. An image with no textured patch
at all (e.g. entirely black) has undefined statistics: niqe() returns NaN, as MATLAB does.

PIQE (Venkatanath N. et al., "Blind image quality evaluation using perception based features",
NCC 2015) follows MATLAB's reference ``piqe`` (the implementation the metric is usually quoted
from): MSCN as above on the replicate-padded image, 16x16 blocks, spatially active when the MSCN
variance exceeds 0.1; an active block is "noticeably distorted" when some 6-pixel segment of one
of its edges has std < 0.1 and "noisy" when sigma > 2 * beta with beta the relative difference
between sigma and the center/surround std ratio; score = 100 * (sum over active blocks of
[distorted](1 - var) + [noisy] var + 1) / (active blocks + 1). Checked against pypiqe (a port
of the same MATLAB code) to 1e-12. Like the reference, PIQE reads nearly flat 6-pixel edge runs
as blockiness, so on images with smooth areas very mild noise (sigma ~ 5 grey levels) can lower
the score before stronger noise raises it monotonically.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from scipy import ndimage, special

from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.core.registry import Registry

ImageInput = Image.Image | np.ndarray | str | os.PathLike[str]
Scorer = Callable[[ImageInput], float]

# ------------------------------------------------------------------------------------ shared steps

# MATLAB rgb2gray weights (the first row of the inverse NTSC transform).
_RGB2GRAY = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


def _gaussian_1d(size: int = 7, sigma: float = 7.0 / 6.0) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()  # the separable factor of fspecial('gaussian', 7, 7/6)


_GAUSS = _gaussian_1d()
_MSCN_ZERO = 1e-9


def to_gray(image: ImageInput) -> np.ndarray:
    """float64 grayscale in [0, 255], as MATLAB's double(rgb2gray(uint8 RGB)) gives it.

    rgb2gray on uint8 rounds to uint8, so the weighted sum is rounded (half away from zero, which
    for non-negative values is floor(x + 0.5)). A 2-D array is taken as already gray.
    """
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return to_gray(opened)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            return image.astype(np.float64, copy=False)
        if image.ndim == 3 and image.shape[2] == 3:
            return np.floor(image.astype(np.float64) @ _RGB2GRAY + 0.5)
        raise ValueError(f"expected an HxW or HxWx3 array, got shape {image.shape}")
    if image.mode == "L":
        return np.asarray(image, dtype=np.float64)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    return np.floor(rgb @ _RGB2GRAY + 0.5)


def mscn(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(MSCN coefficients, local sigma): (I - mu) / (sigma + 1), Gaussian 7x7 / 7/6, replicate border."""

    def blur(x: np.ndarray) -> np.ndarray:
        return ndimage.correlate1d(ndimage.correlate1d(x, _GAUSS, axis=0, mode="nearest"), _GAUSS, axis=1, mode="nearest")

    mu = blur(gray)
    sigma = np.sqrt(np.abs(blur(gray * gray) - mu * mu))
    coefficients = (gray - mu) / (sigma + 1.0)
    # On locally constant areas (common in generated images) the coefficient is exactly 0 in exact
    # arithmetic but +-1e-13 in floating point, and its sign would decide which side of the AGGD
    # fit those pixels count for. Snapping keeps the fits deterministic whatever the filter's
    # summation order; genuine coefficients of 8-bit images are many orders of magnitude larger.
    coefficients[np.abs(coefficients) < _MSCN_ZERO] = 0.0
    return coefficients, sigma


# MATLAB imresize(im, 0.5) (bicubic, a = -0.5, antialiasing on) reduces to this 8-tap filter: output
# i sits between inputs 2i and 2i+1, and the kernel stretched by 2 is sampled at +-0.5, 1.5, 2.5,
# 3.5, i.e. cubic(0.25), cubic(0.75), cubic(1.25), cubic(1.75), halved so the taps sum to 1.
_HALF_TAPS = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375]) / 2.0


def _halve_axis(x: np.ndarray, axis: int) -> np.ndarray:
    n = x.shape[axis]
    n_out = (n + 1) // 2  # MATLAB: ceil(n * 0.5)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (4, 4)
    # MATLAB mirrors out-of-range indices including the edge sample: numpy's 'symmetric'.
    padded = np.pad(x, pad, mode="symmetric")
    out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], dtype=np.float64)
    for k, w in enumerate(_HALF_TAPS):
        sl = [slice(None)] * x.ndim
        sl[axis] = slice(k + 1, k + 1 + 2 * n_out, 2)  # inputs 2i-3 .. 2i+4 sit at 2i+1 .. 2i+8
        out += w * padded[tuple(sl)]
    return out


def imresize_half(gray: np.ndarray) -> np.ndarray:
    """MATLAB imresize(gray, 0.5) for a 2-D double image."""
    return _halve_axis(_halve_axis(gray, 0), 1)


def _blocks(x: np.ndarray, size: int) -> np.ndarray:
    """(n_blocks, size, size) non-overlapping tiles, row-major; x must be a multiple of size."""
    rows, cols = x.shape[0] // size, x.shape[1] // size
    return x[: rows * size, : cols * size].reshape(rows, size, cols, size).swapaxes(1, 2).reshape(-1, size, size)


# ------------------------------------------------------------------------------- (A)GGD estimation

_GAM = 0.2 + 0.001 * np.arange(9801)  # MATLAB 0.2:0.001:10
_R_AGGD = special.gamma(2.0 / _GAM) ** 2 / (special.gamma(1.0 / _GAM) * special.gamma(3.0 / _GAM))
# The ratio is strictly increasing on the grid, so the nearest grid value is found by bisection
# (the release scans all 9,801 values; same answer, first index on ties).
assert np.all(np.diff(_R_AGGD) > 0)


def _nearest_on_grid(grid: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Index of the grid value nearest to each target (grid increasing; lower index on ties).

    A NaN target gives index 0, as MATLAB's min() over an all-NaN vector does.
    """
    # Targets beyond the grid snap to its ends, exactly where the full scan would land.
    t = np.clip(np.where(np.isnan(target), grid[0], target), grid[0], grid[-1])
    hi = np.clip(np.searchsorted(grid, t), 1, grid.size - 1)
    lo = hi - 1
    idx = np.where(np.abs(grid[hi] - t) < np.abs(t - grid[lo]), hi, lo)
    return np.where(np.isnan(target), 0, idx)


def aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric GGD moment fit (estimateaggdparam) along the last axis: (alpha, beta_l, beta_r).

    With density ~ exp(-(-x/beta_l)^alpha) for x < 0 and exp(-(x/beta_r)^alpha) for x >= 0, the
    shape alpha matches the normalised ratio E|x|^2 / E[x^2]; beta_l / beta_r are the left / right
    root-mean-squares scaled by sqrt(Gamma(1/a) / Gamma(3/a)). A side with no samples gives NaN,
    as MATLAB's mean of an empty vector does.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    # Sums of squares as dot products (the positive side by difference): this runs 10x per image
    # and dominates NIQE's cost, and einsum avoids the masked temporaries.
    x_neg = np.minimum(x, 0.0)
    neg_sq = np.einsum("...i,...i->...", x_neg, x_neg)
    pos_sq = np.maximum(np.einsum("...i,...i->...", x, x) - neg_sq, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt(neg_sq / np.count_nonzero(x < 0, axis=-1))
        right = np.sqrt(pos_sq / np.count_nonzero(x > 0, axis=-1))
        gammahat = left / right
        rhat = (np.abs(x).sum(-1) / n) ** 2 / ((neg_sq + pos_sq) / n)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    alpha = _GAM[_nearest_on_grid(_R_AGGD, rhatnorm)]
    scale = np.sqrt(special.gamma(1.0 / alpha) / special.gamma(3.0 / alpha))
    return alpha, left * scale, right * scale


def ggd_fit(x: np.ndarray) -> tuple[float, float]:
    """Zero-mean GGD moment fit (Sharifi & Leon-Garcia, as BRISQUE's estimateggdparam): (alpha, sigma).

    alpha matches E[x^2] / E|x|^2 = Gamma(1/a) Gamma(3/a) / Gamma(2/a)^2; sigma is the standard
    deviation. On symmetric data it agrees with aggd_fit's alpha, which is what NIQE uses.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    sigma_sq = float(np.mean(x * x))
    rho = sigma_sq / float(np.mean(np.abs(x))) ** 2
    # rho is the reciprocal of the AGGD ratio; 1/_R_AGGD decreases, so bisect on its reverse.
    idx = _nearest_on_grid(1.0 / _R_AGGD[::-1], np.array([rho]))[0]
    return float(_GAM[::-1][idx]), float(np.sqrt(sigma_sq))


# ----------------------------------------------------------------------------------------- NIQE

NIQE_BLOCK = 96
NIQE_SHARPNESS_THRESHOLD = 0.75
NIQE_FEATURES = 36
# (row, column) circshift offsets of the four neighbour products: right, down, down-right, down-left.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _patch_features(patches: np.ndarray) -> np.ndarray:
    """computefeature for a stack of MSCN patches (n, s, s) -> (n, 18)."""
    n = patches.shape[0]
    flat = patches.reshape(n, -1)
    alpha, bl, br = aggd_fit(flat)
    columns = [alpha, (bl + br) / 2.0]
    for shift in _SHIFTS:
        pair = flat * np.roll(patches, shift, axis=(1, 2)).reshape(n, -1)
        alpha, bl, br = aggd_fit(pair)
        mean = (br - bl) * special.gamma(2.0 / alpha) / special.gamma(1.0 / alpha)
        columns += [alpha, mean, bl, br]
    return np.stack(columns, axis=1)


def niqe_features(image: ImageInput, block_size: int = NIQE_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """(features (n_patches, 36), sharpness (n_patches,)) of an image, as computequality builds them.

    Sharpness is each full-resolution patch's mean local sigma, used only to pick pristine patches.
    """
    if block_size % 2:
        raise ValueError(f"block_size must be even (the second scale uses half-size patches), got {block_size}")
    gray = to_gray(image)
    rows, cols = gray.shape[0] // block_size, gray.shape[1] // block_size
    if rows == 0 or cols == 0:
        raise ValueError(f"NIQE needs an image of at least {block_size}x{block_size} pixels, got {gray.shape[1]}x{gray.shape[0]}")
    gray = gray[: rows * block_size, : cols * block_size]
    structdis, sigma = mscn(gray)
    feats = [_patch_features(_blocks(structdis, block_size))]
    sharpness = _blocks(sigma, block_size).mean(axis=(1, 2))
    half = imresize_half(gray)
    structdis_half, _ = mscn(half)
    feats.append(_patch_features(_blocks(structdis_half, block_size // 2)))
    return np.concatenate(feats, axis=1), sharpness


def _nan_mvg(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB nanmean (per column) and nancov (rows with any NaN dropped, n - 1 normalisation)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column is a NaN mean, as in MATLAB
        mu = np.nanmean(features, axis=0)
    complete = features[np.all(np.isfinite(features), axis=1)]
    d = features.shape[1]
    if complete.shape[0] >= 2:
        cov = np.cov(complete, rowvar=False)
    elif complete.shape[0] == 1:
        cov = np.zeros((d, d))  # MATLAB cov of a single observation
    else:
        cov = np.full((d, d), np.nan)
    return mu, cov


@dataclass(frozen=True)
class NIQEModel:
    """The pristine multivariate Gaussian: mu (36,), cov (36, 36), and how it was fitted."""

    mu: np.ndarray
    cov: np.ndarray
    block_size: int = NIQE_BLOCK
    sharpness_threshold: float = NIQE_SHARPNESS_THRESHOLD
    n_patches: int = 0
    n_images: int = 0

    def __post_init__(self) -> None:
        mu = np.asarray(self.mu, dtype=np.float64).reshape(-1)
        cov = np.asarray(self.cov, dtype=np.float64)
        if mu.shape != (NIQE_FEATURES,) or cov.shape != (NIQE_FEATURES, NIQE_FEATURES):
            raise ValueError(f"NIQE model needs mu (36,) and cov (36, 36), got {mu.shape} and {cov.shape}")
        if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
            raise ValueError("NIQE model parameters must be finite")
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "cov", cov)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write .npz (MATLAB variable names) or .json; never a pickle."""
        path = Path(path)
        meta = {"block_size": self.block_size, "sharpness_threshold": self.sharpness_threshold,
                "n_patches": self.n_patches, "n_images": self.n_images}
        if path.suffix == ".npz":
            np.savez(path, mu_prisparam=self.mu, cov_prisparam=self.cov,
                     **{k: np.asarray(v) for k, v in meta.items()})
        elif path.suffix == ".json":
            path.write_text(json.dumps({"mu_prisparam": self.mu.tolist(), "cov_prisparam": self.cov.tolist(), **meta}))
        else:
            raise ValueError(f"save a NIQE model as .npz or .json, not {path.suffix!r}")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NIQEModel:
        """Read .npz / .json written by save(), the release's modelparameters.mat, or an .npz with
        mu_pris_param / cov_pris_param (BasicSR's copy of the same parameters)."""
        path = Path(path)
        if path.suffix == ".json":
            data: dict[str, object] = json.loads(path.read_text())
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        elif path.suffix == ".mat":
            from scipy.io import loadmat

            data = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
        else:
            raise ValueError(f"NIQE model file must be .npz, .json or .mat, got {path}")
        for mu_key, cov_key in (("mu_prisparam", "cov_prisparam"), ("mu_pris_param", "cov_pris_param")):
            if mu_key in data and cov_key in data:
                break
        else:
            raise ValueError(f"{path}: expected mu_prisparam/cov_prisparam, found {', '.join(sorted(data)) or 'nothing'}")

        def scalar(key: str, default: float) -> float:
            return float(np.asarray(data[key]).reshape(-1)[0]) if key in data else default

        return cls(
            mu=np.asarray(data[mu_key], dtype=np.float64),
            cov=np.asarray(data[cov_key], dtype=np.float64),
            block_size=int(scalar("block_size", NIQE_BLOCK)),
            sharpness_threshold=scalar("sharpness_threshold", NIQE_SHARPNESS_THRESHOLD),
            n_patches=int(scalar("n_patches", 0)),
            n_images=int(scalar("n_images", 0)),
        )


def fit_niqe_model(
    images: Iterable[ImageInput],
    block_size: int = NIQE_BLOCK,
    sharpness_threshold: float = NIQE_SHARPNESS_THRESHOLD,
) -> NIQEModel:
    """Fit the pristine MVG (estimatemodelparam) on pristine images (PIL images, arrays or paths).

    Keeps, per image, the patches sharper than sharpness_threshold x that image's sharpest patch.
    Images smaller than one patch contribute nothing. At least 37 selected patches are needed for
    a full-rank covariance; fewer still fit (the score uses a pseudo-inverse) but are unreliable.
    """
    selected: list[np.ndarray] = []
    n_images = 0
    for image in images:
        gray = to_gray(image)
        if gray.shape[0] < block_size or gray.shape[1] < block_size:
            continue
        feats, sharpness = niqe_features(gray, block_size)
        selected.append(feats[sharpness > sharpness_threshold * sharpness.max()])
        n_images += 1
    if not selected:
        raise ValueError(f"no image of at least {block_size}x{block_size} pixels to fit a NIQE model on")
    features = np.concatenate(selected, axis=0)
    mu, cov = _nan_mvg(features)
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
        raise ValueError(
            f"NIQE model from {features.shape[0]} patch(es) is undefined (flat images give no "
            "MSCN statistics); fit on textured natural images"
        )
    return NIQEModel(mu, cov, block_size, sharpness_threshold, int(features.shape[0]), n_images)


def niqe(image: ImageInput, model: NIQEModel) -> float:
    """The NIQE distance of an image from the pristine model (lower = more natural, >= 0).

    NaN when the image's statistics are undefined (a flat image has no MSCN structure).
    """
    feats, _ = niqe_features(image, model.block_size)
    mu_d, cov_d = _nan_mvg(feats)
    if not (np.all(np.isfinite(mu_d)) and np.all(np.isfinite(cov_d))):
        return float("nan")
    pooled = (model.cov + cov_d) / 2.0
    # MATLAB pinv's tolerance: max(size) * eps(norm(A)), i.e. relative to the largest singular value.
    inv = np.linalg.pinv(pooled, max(pooled.shape) * np.finfo(np.float64).eps)
    diff = model.mu - mu_d
    return float(np.sqrt(max(float(diff @ inv @ diff), 0.0)))


# ----------------------------------------------------------------------------------------- PIQE

PIQE_BLOCK = 16
PIQE_ACTIVITY_THRESHOLD = 0.1
PIQE_IMPAIRED_THRESHOLD = 0.1
PIQE_SEGMENT = 6


def piqe_block_maps(image: ImageInput) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per 16x16 block (row-major): MSCN variance, active, noticeably-distorted and noisy flags.

    The image is padded to a multiple of 16 by repeating its last row / column (MATLAB's
    padarray(..., 'replicate', 'post')).
    """
    gray = to_gray(image)
    pad_r, pad_c = (-gray.shape[0]) % PIQE_BLOCK, (-gray.shape[1]) % PIQE_BLOCK
    gray = np.pad(gray, ((0, pad_r), (0, pad_c)), mode="edge")
    blocks = _blocks(mscn(gray)[0], PIQE_BLOCK)
    n = blocks.shape[0]
    var = blocks.reshape(n, -1).var(axis=1, ddof=1)
    active = var > PIQE_ACTIVITY_THRESHOLD

    # Noticeable distortion: any 6-pixel run along any block edge that is nearly flat.
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    segment_std = sliding_window_view(edges, PIQE_SEGMENT, axis=2).std(axis=-1, ddof=1)
    distorted = np.any(segment_std < PIQE_IMPAIRED_THRESHOLD, axis=(1, 2))

    # Noise: block sigma against the center/surround std ratio. The center is the two middle
    # columns (7, 8 zero-based). MATLAB's reference deletes column 8 and then "column 9" of the
    # already shortened block, i.e. original column 10 (1-based), so its surround omits columns
    # 7 and 9 (zero-based); reproduced here because that code defines the published scores.
    center = blocks[:, :, 7:9].reshape(n, -1)
    surround = np.delete(blocks, [7, 9], axis=2).reshape(n, -1)
    sigma = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = center.std(axis=1, ddof=1) / surround.std(axis=1, ddof=1)
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
        noisy = sigma > 2.0 * beta  # NaN beta (0/0, inf/inf) compares False, as in MATLAB
    return var, active, distorted & active, noisy & active


def piqe(image: ImageInput) -> float:
    """PIQE score in [0, 100] (0 = excellent, 100 = worst; a flat image scores 100)."""
    var, active, distorted, noisy = piqe_block_maps(image)
    distortion = float(np.sum(distorted * (1.0 - var) + noisy * var))
    return (distortion + 1.0) / (int(active.sum()) + 1.0) * 100.0


# ------------------------------------------------------------------------------------- registry

# Entry: factory(**options) -> scorer(image) -> float, higher = better quality. Meta says what the
# raw metric is and the sign applied (score = sign * raw).
BASELINES: Registry[Callable[..., Scorer]] = Registry("baseline")


def _negated_niqe(image: ImageInput, model: NIQEModel) -> float:
    return -niqe(image, model)


def _negated_piqe(image: ImageInput) -> float:
    return -piqe(image)


@BASELINES.register("niqe", raw="NIQE distance to the pristine MVG, lower is better", sign=-1.0, needs_model=True)
def make_niqe(model: NIQEModel | str | os.PathLike[str]) -> Scorer:
    """Scorer returning -NIQE under a fitted NIQEModel or a model file (see NIQEModel.load)."""
    if not isinstance(model, NIQEModel):
        model = NIQEModel.load(model)
    return functools.partial(_negated_niqe, model=model)


@BASELINES.register("piqe", raw="PIQE in [0, 100], lower is better", sign=-1.0, needs_model=False)
def make_piqe() -> Scorer:
    """Scorer returning -PIQE (opinion-unaware and model-free, so nothing to configure)."""
    return _negated_piqe


def make_baseline(name: str, **options: object) -> Scorer:
    """The scorer of a registered baseline (higher = better), e.g. make_baseline("niqe", model=path)."""
    return BASELINES.get(name)(**options)


def _score_resized(image: str | os.PathLike[str] | Image.Image, scorer: Scorer,
                   sizes: dict[tuple[int, int], tuple[int, int]]) -> float:
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return _score_resized(to_rgb(opened), scorer, sizes)  # as the critic reads it
    if image.size not in sizes:
        raise KeyError(f"no size to score an image of {image.size[0]}x{image.size[1]} pixels at; "
                       f"sizes are known for {sorted(sizes)}")
    size = sizes[image.size]
    return scorer(image if size == image.size else image.resize(size, Image.BICUBIC))


def resized_scorer(scorer: Scorer, sizes: Mapping[tuple[int, int], tuple[int, int]]) -> Scorer:
    """`scorer` read on each image after a bicubic resize to sizes[(width, height)]: e.g. the
    size a critic's processor gives the image, so that a classic metric sees the pixels it sees.
    The sizes are worked out once by the caller, so worker processes need no model code."""
    return functools.partial(_score_resized, scorer=scorer, sizes=dict(sizes))


def _score_one(scorer: Scorer, path: str) -> float:
    return float(scorer(path))


def score_paths(scorer: Scorer, paths: Sequence[str | os.PathLike[str]], workers: int | None = None,
                chunksize: int = 16, mp_context: BaseContext | None = None,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Scores of many image files, on `workers` processes (default: all cores; 1 = in-process).

    The scorers are plain functions / partials, so they travel to worker processes; NIQE on
    AGIQA-3K (2,982 images of 512x512) takes about 45 s on two cores this way. mp_context picks
    the start method (default: the platform's); with "spawn" / "forkserver" the calling script
    needs the usual `if __name__ == "__main__":` guard, with "fork" a parent that holds threads
    (BLAS pools, a Dagster run worker) can in rare cases hang a child.
    """
    names = [os.fspath(p) for p in paths]
    workers = workers or os.cpu_count() or 1
    scores: list[float] = []
    if workers <= 1 or len(names) < 2 * chunksize:
        results = (_score_one(scorer, p) for p in names)
        for score in results:
            scores.append(score)
            if progress is not None:
                progress(len(scores), len(names))
        return np.array(scores, dtype=np.float64)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context) as pool:
        for score in pool.map(functools.partial(_score_one, scorer), names, chunksize=chunksize):
            scores.append(score)
            if progress is not None:
                progress(len(scores), len(names))
    return np.array(scores, dtype=np.float64)
