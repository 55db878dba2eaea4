"""Conventional image degradations (paper 3.2.3) and the measurables that check them.

Every degradation is one registered function

    fn(image, rng, **params) -> (degraded_image, params_used)

Any parameter not given is sampled from `rng`; `params_used` is complete, so calling the function
again with those params (and any rng) reproduces the output exactly -- which is what the negative
manifest records. Randomness inside an operation (noise) is drawn from a recorded sub-seed.

AI-specific negatives (degraded prompts, premature decoding, low-quality generators) need a
generator, so they live in `generators.py` / `prompts.py`, not here.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageEnhance
from scipy import ndimage

from eliq_pipeline.core.images import to_rgb
from eliq_pipeline.core.registry import Registry

Degradation = Callable[..., tuple[Image.Image, dict[str, Any]]]
DEGRADATIONS: Registry[Degradation] = Registry("degradation")

ASPECTS = ("tec", "aes", "ali")
FAMILIES = ("conventional", "ai_specific")


def degradations_for(aspect: str, family: str | None = None) -> list[str]:
    """Registered degradation names for an aspect (and family), sorted."""
    return [
        name
        for name in DEGRADATIONS.names()
        if DEGRADATIONS.meta(name).get("aspect") == aspect
        and (family is None or DEGRADATIONS.meta(name).get("family") == family)
    ]


def apply_degradation(
    name: str, image: Image.Image, rng: np.random.Generator, **params: Any
) -> tuple[Image.Image, dict[str, Any]]:
    """Look up and run a degradation; the output is always RGB and the input's size."""
    out, used = DEGRADATIONS.get(name)(to_rgb(image), rng, **params)
    out = to_rgb(out)
    if out.size != image.size:
        raise RuntimeError(f"degradation {name!r} changed the size {image.size} -> {out.size}")
    return out, used


def _to_float(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image), dtype=np.float64) / 255.0


def _from_float(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def _sub_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


# Graded severities: level 1 is mild, level 2 strong (of the same degradation). A from-scratch
# critic trained only on "clean vs clearly broken" learns shortcuts (a ranking loss of 0 with no
# transfer to real images); mild levels make it see degradations of the size generators produce.
# `level=None` keeps each degradation's original range (what the tiny profile always used).
LEVELS = (1, 2)


def _level_range(name: str, ranges: dict[int | None, Any], level: int | None) -> Any:
    if level not in ranges:
        raise ValueError(f"{name}: level must be one of {sorted(k for k in ranges if k is not None)} or None, got {level!r}")
    return ranges[level]


def _with_level(used: dict[str, Any], level: int | None) -> dict[str, Any]:
    """params_used, with the level recorded when one was asked for (it names the severity)."""
    return used if level is None else {**used, "level": int(level)}


# ------------------------------------------------------------------------------------------
# technical, conventional
# ------------------------------------------------------------------------------------------


_JPEG_LEVELS = {None: ((5, 20), (3, 6)), 1: ((25, 45), (1, 2)), 2: ((5, 20), (3, 6))}


@DEGRADATIONS.register("jpeg_recompress", aspect="tec", family="conventional")
def jpeg_recompress(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    rounds: int | None = None,
    qualities: list[int] | None = None,
    quality_range: tuple[int, int] | None = None,
    rounds_range: tuple[int, int] | None = None,
    level: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Repeated JPEG compression at low qualities (blocking, ringing, lost detail, colour bleeding).

    Re-encoding at *different* low qualities keeps adding loss; a single quality would converge
    after the second round. Level 1: one or two rounds at quality 25-45; level 2: 3-6 at 5-20.
    """
    default_q, default_r = _level_range("jpeg_recompress", _JPEG_LEVELS, level)
    quality_range, rounds_range = quality_range or default_q, rounds_range or default_r
    if qualities is None:
        if rounds is None:
            rounds = int(rng.integers(rounds_range[0], rounds_range[1] + 1))
        qualities = [int(q) for q in rng.integers(quality_range[0], quality_range[1] + 1, size=rounds)]
    qualities = [int(q) for q in qualities]
    if rounds is not None and rounds != len(qualities):
        raise ValueError(f"rounds={rounds} but {len(qualities)} qualities given")
    if not qualities or not all(1 <= q <= 95 for q in qualities):
        raise ValueError(f"qualities must be a non-empty list of integers in [1, 95], got {qualities}")
    out = to_rgb(image)
    for quality in qualities:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=quality, subsampling=2, optimize=False)
        buffer.seek(0)
        out = Image.open(buffer).convert("RGB")
    return out, _with_level({"rounds": len(qualities), "qualities": qualities}, level)


_NOISE_LEVELS = {None: (0.08, 0.2), 1: (0.02, 0.05), 2: (0.08, 0.2)}


@DEGRADATIONS.register("gaussian_noise", aspect="tec", family="conventional")
def gaussian_noise(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    sigma: float | None = None,
    noise_seed: int | None = None,
    sigma_range: tuple[float, float] | None = None,
    level: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Additive i.i.d. Gaussian noise with std `sigma` on the [0, 1] pixel scale, clipped.
    Level 1: sigma 0.02-0.05 (visible grain); level 2: 0.08-0.2."""
    if sigma is None:
        sigma = float(rng.uniform(*(sigma_range or _level_range("gaussian_noise", _NOISE_LEVELS, level))))
    if noise_seed is None:
        noise_seed = _sub_seed(rng)
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    array = _to_float(image)
    noise = np.random.default_rng(noise_seed).normal(0.0, sigma, size=array.shape)
    return _from_float(array + noise), _with_level({"sigma": float(sigma), "noise_seed": int(noise_seed)}, level)


_BLUR_LEVELS = {None: (0.006, 0.016), 1: (0.003, 0.006), 2: (0.008, 0.016)}
_MIN_BLUR_PX = 0.6  # below this a blur of a small image rounds back to the same pixels


@DEGRADATIONS.register("gaussian_blur", aspect="tec", family="conventional")
def gaussian_blur(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    sigma_fraction: float | None = None,
    level: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Gaussian blur (defocus, over-smoothed generator output) with std `sigma_fraction` of the
    short side, so a level means the same look at every resolution (level 1 at 256 px: 0.8-1.5 px;
    level 2: 2-4 px), and at least 0.6 px (a smaller one leaves a small image unchanged)."""
    if sigma_fraction is None:
        sigma_fraction = float(rng.uniform(*_level_range("gaussian_blur", _BLUR_LEVELS, level)))
    if sigma_fraction <= 0:
        raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
    sigma = max(sigma_fraction * min(image.size), _MIN_BLUR_PX)
    array = ndimage.gaussian_filter(_to_float(image), sigma=(sigma, sigma, 0), mode="reflect")
    return _from_float(array), _with_level({"sigma_fraction": float(sigma_fraction)}, level)


_DOWNSCALE_LEVELS = {None: (2.5, 6.0), 1: (1.6, 2.5), 2: (3.0, 6.0)}


@DEGRADATIONS.register("downscale_upscale", aspect="tec", family="conventional")
def downscale_upscale(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    factor: float | None = None,
    level: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Downscale by `factor` (box filter) and upscale back (bilinear): the soft, detail-less look of
    a low-resolution render upscaled to the target size."""
    if factor is None:
        factor = float(rng.uniform(*_level_range("downscale_upscale", _DOWNSCALE_LEVELS, level)))
    if factor <= 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    w, h = image.size
    small = image.resize((max(1, round(w / factor)), max(1, round(h / factor))), Image.BOX)
    return small.resize((w, h), Image.BILINEAR), _with_level({"factor": float(factor)}, level)


# displacement std and field smoothness as fractions of the short side (at 256 px: level 1 moves
# pixels by 1-2 px, level 2 by 3-6 px, both over 8-15 px wide wobbles)
_WARP_LEVELS = {None: (0.008, 0.024), 1: (0.004, 0.008), 2: (0.012, 0.024)}
_WARP_SMOOTHNESS = (0.03, 0.06)


@DEGRADATIONS.register("elastic_warp", aspect="tec", family="conventional")
def elastic_warp(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    amplitude_fraction: float | None = None,
    smoothness_fraction: float | None = None,
    seed: int | None = None,
    level: int | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Resample along a smooth random displacement field: wobbly lines, bent edges and smeared
    texture at the scale of a few pixels, the local geometric incoherence of weak generators
    (GAN-era renders) that blur and compression do not produce. Displacement std is
    `amplitude_fraction` of the short side, the field's Gaussian smoothing `smoothness_fraction`."""
    if amplitude_fraction is None:
        amplitude_fraction = float(rng.uniform(*_level_range("elastic_warp", _WARP_LEVELS, level)))
    if smoothness_fraction is None:
        smoothness_fraction = float(rng.uniform(*_WARP_SMOOTHNESS))
    if seed is None:
        seed = _sub_seed(rng)
    if amplitude_fraction <= 0 or smoothness_fraction <= 0:
        raise ValueError(f"amplitude_fraction and smoothness_fraction must be > 0, got "
                         f"{amplitude_fraction}, {smoothness_fraction}")
    w, h = image.size
    short = min(w, h)
    field = np.random.default_rng(seed).normal(size=(2, h, w))
    field = np.stack([ndimage.gaussian_filter(f, sigma=max(smoothness_fraction * short, 1.0), mode="reflect")
                      for f in field])
    field *= amplitude_fraction * short / max(float(field.std()), 1e-12)  # displacement std in pixels
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [rows + field[0], cols + field[1]]
    array = _to_float(image)
    warped = np.stack([ndimage.map_coordinates(array[..., c], coords, order=3, mode="reflect") for c in range(3)],
                      axis=-1)
    used = {"amplitude_fraction": float(amplitude_fraction), "smoothness_fraction": float(smoothness_fraction),
            "seed": int(seed)}
    return _from_float(warped), _with_level(used, level)


# ------------------------------------------------------------------------------------------
# aesthetic, conventional: an offline, deterministic stand-in for the paper's image editor
# ------------------------------------------------------------------------------------------


def _param(p: dict[str, Any], key: str, draw: Callable[[], Any]) -> Any:
    """A given op parameter wins; only a missing one is drawn (so rng use depends on what is given)."""
    if key not in p:
        p[key] = draw()
    return p[key]


def _off_centre_crop(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    """Crop a window pushed towards a corner and scale it back: the subject ends up off-balance."""
    _param(p, "scale", lambda: float(rng.uniform(0.6, 0.8)))
    _param(p, "anchor_x", lambda: float(rng.choice([0.0, 1.0])))
    _param(p, "anchor_y", lambda: float(rng.choice([0.0, 1.0])))
    w, h = image.size
    cw, ch = max(1, round(w * p["scale"])), max(1, round(h * p["scale"]))
    left, top = round((w - cw) * p["anchor_x"]), round((h - ch) * p["anchor_y"])
    return image.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


def _tilt(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    """Rotate by a few degrees (a tilted horizon), then crop to the largest upright rectangle
    inside the rotated frame so no empty corners appear, and scale back."""
    _param(p, "angle", lambda: float(rng.uniform(4.0, 12.0) * rng.choice([-1.0, 1.0])))
    w, h = image.size
    rotated = image.rotate(p["angle"], resample=Image.BICUBIC, expand=False)
    a = math.radians(abs(p["angle"]))
    # largest axis-aligned rectangle with the image's aspect ratio inside a w x h box rotated by a
    factor = 1.0 / (math.cos(a) + max(w / h, h / w) * math.sin(a))
    cw, ch = max(1, int(w * factor)), max(1, int(h * factor))
    left, top = (w - cw) // 2, (h - ch) // 2
    return rotated.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BICUBIC)


_CASTS = {
    "yellow": (1.0, 0.9, 0.35),
    "green": (0.45, 1.0, 0.4),
    "magenta": (1.0, 0.35, 0.9),
    "blue": (0.35, 0.55, 1.0),
    "orange": (1.0, 0.6, 0.2),
}


def _colour_cast(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    """Blend towards a tint (a wrong white balance)."""
    _param(p, "tint", lambda: str(rng.choice(sorted(_CASTS))))
    _param(p, "strength", lambda: float(rng.uniform(0.2, 0.4)))
    array = _to_float(image)
    tint = np.asarray(_CASTS[p["tint"]])
    luminance = array.mean(axis=2, keepdims=True)
    return _from_float((1 - p["strength"]) * array + p["strength"] * luminance * tint * 1.3)


def _desaturate(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    _param(p, "factor", lambda: float(rng.uniform(0.1, 0.4)))
    return ImageEnhance.Color(image).enhance(p["factor"])


def _contrast_crush(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    """Flat, washed-out tones: compress contrast and lift or sink the mid-level."""
    _param(p, "factor", lambda: float(rng.uniform(0.35, 0.6)))
    _param(p, "brightness", lambda: float(rng.uniform(0.75, 1.25)))
    flat = ImageEnhance.Contrast(image).enhance(p["factor"])
    return ImageEnhance.Brightness(flat).enhance(p["brightness"])


# canonical order: geometry first, then colour, so a subset always composes the same way
AESTHETIC_OPS: dict[str, Callable[[Image.Image, np.random.Generator, dict[str, Any]], Image.Image]] = {
    "off_centre_crop": _off_centre_crop,
    "tilt": _tilt,
    "colour_cast": _colour_cast,
    "desaturate": _desaturate,
    "contrast_crush": _contrast_crush,
}


@DEGRADATIONS.register("offline_aesthetic_edit", aspect="aes", family="conventional")
def offline_aesthetic_edit(
    image: Image.Image,
    rng: np.random.Generator,
    *,
    ops: list[dict[str, Any]] | list[str] | None = None,
    min_ops: int = 2,
    max_ops: int = 3,
) -> tuple[Image.Image, dict[str, Any]]:
    """Composition and colour degradation that keeps the content (offline stand-in for an
    instruction-driven editor such as Qwen-Image-Edit): a random subset of >= 2 operations among
    off-centre crop, tilt, colour cast, desaturation and contrast crush.

    `ops` may name operations (their params are then sampled) or give full specs
    (`{"op": "tilt", "angle": 7.5}`) as returned in `params_used`.
    """
    if ops is None:
        k = int(rng.integers(min_ops, max_ops + 1))
        chosen = sorted(rng.choice(len(AESTHETIC_OPS), size=k, replace=False).tolist())
        names = list(AESTHETIC_OPS)
        specs: list[dict[str, Any]] = [{"op": names[i]} for i in chosen]
    else:
        specs = [dict(o) if isinstance(o, dict) else {"op": o} for o in ops]
    for spec in specs:
        if spec.get("op") not in AESTHETIC_OPS:
            raise ValueError(f"unknown aesthetic op {spec.get('op')!r}; known: {', '.join(AESTHETIC_OPS)}")
    out = to_rgb(image)
    used: list[dict[str, Any]] = []
    for spec in specs:
        op = spec.pop("op")
        out = to_rgb(AESTHETIC_OPS[op](out, rng, spec))
        used.append({"op": op, **spec})
    return out, {"ops": used}


def _exposure_shift(image: Image.Image, rng: np.random.Generator, p: dict[str, Any]) -> Image.Image:
    """Under- or over-exposure: a gamma curve (gamma > 1 darkens, < 1 washes out) applied to all channels."""
    _param(p, "gamma", lambda: _signed_log(0.3, 0.8)(rng))
    return _from_float(_to_float(image) ** p["gamma"])


def _uniform(low: float, high: float) -> Callable[[np.random.Generator], float]:
    return lambda rng: float(rng.uniform(low, high))


def _signed_log(low: float, high: float) -> Callable[[np.random.Generator], float]:
    """exp(+-u), u uniform in [low, high]: a factor whose size, not direction, is the severity."""
    return lambda rng: float(np.exp(rng.uniform(low, high) * rng.choice([-1.0, 1.0])))


# Graded single edits (one look each, level 1 mild, level 2 strong): op, and per parameter the
# distribution and its range per level. Ungraded (level None), each op draws from its own range;
# parameters not listed are always drawn by the op (a cast's tint).
GRADED_EDITS: dict[str, tuple[Callable[[Image.Image, np.random.Generator, dict[str, Any]], Image.Image],
                              dict[str, tuple[Callable[[float, float], Callable[[np.random.Generator], float]],
                                              dict[int, tuple[float, float]]]]]] = {
    "colour_cast": (_colour_cast, {"strength": (_uniform, {1: (0.1, 0.18), 2: (0.25, 0.45)})}),
    "desaturate": (_desaturate, {"factor": (_uniform, {1: (0.45, 0.65), 2: (0.05, 0.3)})}),
    "contrast_crush": (_contrast_crush, {"factor": (_uniform, {1: (0.6, 0.75), 2: (0.3, 0.5)}),
                                         "brightness": (_uniform, {1: (0.9, 1.1), 2: (0.75, 1.25)})}),
    "exposure_shift": (_exposure_shift, {"gamma": (_signed_log, {1: (0.2, 0.35), 2: (0.5, 0.9)})}),
}
_OP_DRAWN = {"colour_cast": {"tint"}}  # parameters an op draws itself (any level)


def _graded_edit(name: str) -> Degradation:
    op, ranges = GRADED_EDITS[name]

    def edit(image: Image.Image, rng: np.random.Generator, *, level: int | None = None,
             **params: Any) -> tuple[Image.Image, dict[str, Any]]:
        unknown = set(params) - set(ranges) - _OP_DRAWN.get(name, set())
        if unknown:
            raise TypeError(f"{name}: unknown parameter(s) {sorted(unknown)}")
        p = dict(params)
        if level is not None:  # the level's ranges; ungraded, the op's own
            for key, (distribution, per_level) in ranges.items():
                draw = distribution(*_level_range(name, per_level, level))
                _param(p, key, lambda draw=draw: draw(rng))
        return to_rgb(op(to_rgb(image), rng, p)), _with_level(p, level)

    edit.__name__ = name
    edit.__doc__ = f"{(op.__doc__ or name).strip()} Graded: level 1 mild, level 2 strong."
    return edit


for _name in GRADED_EDITS:
    DEGRADATIONS.register(_name, aspect="aes", family="conventional")(_graded_edit(_name))


# ------------------------------------------------------------------------------------------
# measurables (used by asset checks and tests)
# ------------------------------------------------------------------------------------------


def _grey(image: Image.Image) -> np.ndarray:
    rgb = _to_float(image)
    return rgb @ np.array([0.299, 0.587, 0.114])


def sharpness(image: Image.Image) -> float:
    """Variance of the Laplacian of the grey image on the [0, 1] scale (higher: more fine detail)."""
    return float(ndimage.laplace(_grey(image), mode="reflect").var())


_IMMERKAER = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])


def noise_level(image: Image.Image) -> float:
    """Robust noise std estimate on the [0, 1] scale.

    The Immerkaer kernel cancels locally linear structure (smooth shading, gradients); the median
    absolute deviation of its response ignores the few strong edges. For i.i.d. noise of std s the
    response has std 6 s, hence the scaling.
    """
    grey = _grey(image)
    if min(grey.shape) < 3:
        return 0.0
    residual = ndimage.convolve(grey, _IMMERKAER, mode="reflect")[1:-1, 1:-1]
    mad = np.median(np.abs(residual - np.median(residual)))
    return float(1.4826 * mad / 6.0)


def colourfulness(image: Image.Image) -> float:
    """Hasler & Suesstrunk (2003) colourfulness on the 0-255 scale (0: grey; ~>100: very colourful)."""
    rgb = np.asarray(to_rgb(image), dtype=np.float64)
    rg = rgb[..., 0] - rgb[..., 1]
    yb = 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def blockiness(image: Image.Image, block: int = 8) -> float:
    """Mean absolute step across `block`-pixel boundaries divided by the mean step elsewhere.

    About 1 for natural or synthetic images; well above 1 after heavy JPEG (8x8 DCT blocks).
    """
    grey = _grey(image)
    dx = np.abs(np.diff(grey, axis=1))
    dy = np.abs(np.diff(grey, axis=0))
    if dx.shape[1] < 2 * block or dy.shape[0] < 2 * block:
        return 1.0
    at_x = (np.arange(dx.shape[1]) % block) == block - 1
    at_y = (np.arange(dy.shape[0]) % block) == block - 1
    boundary = np.concatenate([dx[:, at_x].ravel(), dy[at_y, :].ravel()]).mean()
    inside = np.concatenate([dx[:, ~at_x].ravel(), dy[~at_y, :].ravel()]).mean()
    return float(boundary / max(inside, 1e-8))


def contrast(image: Image.Image) -> float:
    """RMS contrast: std of the grey image on the [0, 1] scale."""
    return float(_grey(image).std())


def brightness(image: Image.Image) -> float:
    """Mean grey level on the [0, 1] scale."""
    return float(_grey(image).mean())


def mean_chroma(image: Image.Image) -> np.ndarray:
    """Mean opponent colour (rg, yb) on the 0-255 scale: (0, 0) is neutral grey on average."""
    rgb = np.asarray(to_rgb(image), dtype=np.float64)
    return np.array([(rgb[..., 0] - rgb[..., 1]).mean(), (0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]).mean()])


def structure_change(image: Image.Image, reference: Image.Image) -> float:
    """1 - correlation of the two grey images' Laplacians (0: the same fine structure in the same
    places). A pair measurable: a warp moves edges without changing their statistics, which one
    image alone cannot show."""
    a, b = (ndimage.laplace(_grey(x), mode="reflect").ravel() for x in (image, reference))
    a, b = a - a.mean(), b - b.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return 0.0 if denominator == 0 else float(1.0 - (a @ b) / denominator)


def colour_shift(image: Image.Image, reference: Image.Image) -> float:
    """How far a tint moved the mean opponent colour from the reference's (0-255 scale). A pair
    measurable: a cast is a change of colour balance, which one image alone cannot show."""
    return float(np.hypot(*(mean_chroma(image) - mean_chroma(reference))))
