"""The trained critic as one artifact: ``ELIQScorer`` (paper 3.3.6, inference).

Over 400 lines: the bundle format as a whole: export, sealing, verification and the ELIQScorer that loads it.

A bundle folder holds everything that defines the critic except the base MLLM weights:

    eliq_bundle.json   the manifest: format version, base reference + fingerprint, hidden size,
                       head config, adapter fingerprint, and ``files``: the sha256 and size of
                       every other file of the bundle; ``manifest_sha256`` seals the manifest
    adapter/           the tuned backbone folder (peft LoRA + processor + eliq_backbone.json)
    head/              the scoring head (gated fusion + QQT), safetensors + config.json
    calibration.json   optional monotonic linear maps raw score -> MOS range for s_vis / s_ali

A bundle is sealed: ``from_pretrained`` checks every file against the manifest before loading
anything and raises :class:`BundleDamagedError` naming each file that is missing, truncated,
modified or added where it would be loaded (adapter/, head/, calibration.json); other files
added at the top level are ignored (never loaded).

The base is referenced, not copied (16 GB for the production backbone): a hub id or local path
is loaded as recorded; the toy ``tiny:`` backbone is built in code, so its users pass the
folder it was built into. ``from_pretrained`` / ``save_pretrained`` mirror diffusers (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from eliq_pipeline.core.atomic import staged_dir
from eliq_pipeline.critic.backbone import PromptFit, backbone_fingerprint, fit_prompt, sequence_limit
from eliq_pipeline.evaluation.benchmark_inputs import NEUTRAL_PROMPT
from eliq_pipeline.critic.embeddings import extract_aspect_embeddings
from eliq_pipeline.core.images import ImageInput, as_images, sha256_file
from eliq_pipeline.critic.instruction_tuning import (
    TUNED_META_FILE,
    adapter_fingerprint,
    load_tuned_backbone,
    read_tuned_meta,
)
from eliq_pipeline.critic.head.calibration import LinearCalibration
from eliq_pipeline.critic.head.checkpoints import CONFIG_NAME, load_scoring_head, save_scoring_head, WEIGHTS_NAME
from eliq_pipeline.critic.head.modules import ELIQScoringHead, score_embeddings

BUNDLE_META_FILE = "eliq_bundle.json"
BUNDLE_FORMAT = "eliq-scorer-bundle"
BUNDLE_VERSION = 2  # 2: sealed (files + manifest_sha256); 1: calibration.json unchecked
READABLE_VERSIONS = (1, 2)
ADAPTER_DIR = "adapter"
HEAD_DIR = "head"
CALIBRATION_FILE = "calibration.json"
CALIBRATION_FORMAT = "eliq-calibration"

# Files of a stored directory artifact that are not part of its content (the artifact store's
# per-upload completion marker); they must not travel into a bundle.
_NOT_CONTENT = ("_COMPLETE",)
# Where a file that is not in the manifest would be loaded (so must not be there).
_LOADED_DIRS = (ADAPTER_DIR, HEAD_DIR)
_REQUIRED_KEYS = {
    1: ("base_ref", "base_fingerprint", "hidden_size", "head_config", "adapter_fingerprint", "head_sha256"),
    2: ("base_ref", "base_fingerprint", "hidden_size", "head_config", "adapter_fingerprint", "head_sha256",
        "files", "manifest_sha256"),
}
_REEXPORT_HINT = "re-export it with `eliq export`"


class BundleDamagedError(ValueError):
    """A bundle file is missing, truncated, modified, unparsable or unexpectedly present.

    ``files`` names each file at fault, relative to the bundle folder; the message names them
    too: ``bundle /x/critic is damaged: head/model.safetensors: sha256 mismatch (...)``.
    """

    def __init__(self, bundle: Path, problems: Sequence[tuple[str, str]]) -> None:
        self.bundle = Path(bundle)
        self.files = [name for name, _ in problems]
        listed = "; ".join(f"{name}: {problem}" for name, problem in problems)
        super().__init__(f"bundle {self.bundle} is damaged: {listed} ({_REEXPORT_HINT})")


# ------------------------------------------------------------------------------ small helpers


def has_prompt(prompt: str | None) -> bool:
    """Blank prompts (an empty CSV cell) count as no prompt: no alignment score is reported."""
    return isinstance(prompt, str) and bool(prompt.strip())


def backbone_hidden_size(base: str) -> int:
    """The LLM hidden size h of a backbone, read from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base)
    text = getattr(config, "text_config", None) or config
    return int(text.hidden_size)


def _check_hidden_size(head_hidden: int, base_label: str, base_hidden: int) -> None:
    if head_hidden != base_hidden:
        raise ValueError(
            f"bundle head expects hidden size {head_hidden} but backbone {base_label} has {base_hidden}; "
            "the head was trained on another backbone's embeddings"
        )


def _check_base_fingerprint(recorded: str | None, base: str, where: str) -> str | None:
    """Refuse a base that is provably not the one the adapter was trained on.

    Fingerprints of the same kind (two folder hashes, or two hub commits) must match. A hub id
    against a local mirror cannot be compared without the hub's file hashes, so that case (and
    an unrecorded fingerprint) only warns: refusing it would block the documented offline use.
    Returns the base's fingerprint (None when it was not computed).
    """
    kind = "dir-sha256" if Path(base).is_dir() else "hub"
    if recorded is not None and recorded.split(":", 1)[0] != kind:
        # Checked before hashing: a local mirror of a hub id is 16 GB to read for nothing.
        warnings.warn(
            f"backbone {base!r} cannot be compared with the base the adapter in {where} was trained "
            f"on ({recorded}); make sure they hold the same weights",
            stacklevel=3,
        )
        return None
    try:
        actual = backbone_fingerprint(base)
    except Exception as exc:  # hub lookups fail in many ways offline; this check is best-effort
        warnings.warn(f"cannot fingerprint backbone {base!r} ({exc}); base of {where} not verified", stacklevel=3)
        return None
    if recorded is not None and recorded != actual:
        raise ValueError(
            f"the adapter in {where} was trained on base {recorded}, but backbone {base!r} is {actual}; "
            "pass the base it was trained on (or verify_base=False to skip this check)"
        )
    return actual


def resolve_base(base_ref: str, base_override: str | None, where: str) -> str:
    """The loadable base: the override, else the recorded hub id or local path."""
    if base_override:
        return str(base_override)
    if base_ref.startswith("tiny:"):
        raise ValueError(
            f"{where} was trained on the toy backbone {base_ref!r}, which is built in code and not "
            "stored in the bundle; pass base_override (CLI: --base) with the folder it was built "
            "into, e.g. $ELIQ_HOME/models/tiny-qwen3-vl-0"
        )
    # A hub id is "org/name"; anything else shaped like a path must exist here.
    looks_like_path = base_ref.startswith(("/", ".", "~")) or base_ref.count("/") > 1
    if looks_like_path:
        if not Path(base_ref).expanduser().is_dir():
            raise FileNotFoundError(
                f"{where} records its base backbone at {base_ref}, which does not exist on this machine; "
                "pass base_override (CLI: --base) with a copy of that backbone"
            )
        return str(Path(base_ref).expanduser())
    return base_ref


# ------------------------------------------------------------------------------ the manifest


def _file_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file below ``root`` except the manifest itself."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() != BUNDLE_META_FILE)
    return {p.relative_to(root).as_posix(): {"sha256": sha256_file(p, fresh=True), "size": p.stat().st_size} for p in files}


def _manifest_digest(meta: dict[str, Any]) -> str:
    """The manifest cannot list its own hash; it carries the hash of its other keys instead."""
    body = {key: value for key, value in meta.items() if key != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _valid_manifest_name(name: Any) -> bool:
    """A relative POSIX path inside the bundle (a crafted manifest must not point outside it)."""
    if not isinstance(name, str) or not name or name == BUNDLE_META_FILE or "\\" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _check_files(root: Path, files: dict[str, dict[str, Any]]) -> None:
    """Every listed file present with its size and sha256; nothing unlisted where it is loaded."""
    problems: list[tuple[str, str]] = []
    for name, entry in sorted(files.items()):
        path = root / name
        if not path.is_file():
            problems.append((name, "missing"))
            continue
        size = path.stat().st_size
        if size != entry["size"]:
            what = "truncated" if size < entry["size"] else "grown"
            problems.append((name, f"{what} ({size} bytes, the manifest records {entry['size']})"))
        elif sha256_file(path, fresh=True) != entry["sha256"]:
            problems.append((name, "sha256 mismatch (modified after export)"))
    candidates = [p for folder in _LOADED_DIRS if (root / folder).is_dir() for p in (root / folder).rglob("*")]
    candidates.append(root / CALIBRATION_FILE)
    for path in sorted(candidates):
        relative = path.relative_to(root)
        hidden = any(part.startswith(".") for part in relative.parts)
        if path.is_file() and relative.as_posix() not in files and not hidden and path.name not in _NOT_CONTENT:
            problems.append((relative.as_posix(), "not in the manifest (added after export; it would be loaded)"))
    if problems:
        raise BundleDamagedError(root, problems)


def verify_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """The bundle's manifest, after checking every file it lists (see the module docstring).

    Raises FileNotFoundError for a folder that is not a bundle, BundleDamagedError naming the
    files at fault for a damaged one. A format-1 bundle (written before bundles were sealed)
    is read with a warning: only its head and adapter checksums can be checked.
    """
    root = Path(bundle_dir)
    meta = read_bundle_meta(root)
    if meta["format_version"] == 1:
        warnings.warn(
            f"bundle {root} has format version 1: its calibration.json is not covered by checksums; "
            "save it again (ELIQScorer.save_pretrained) or re-export it to seal it",
            stacklevel=2,
        )
        return meta
    _check_files(root, meta["files"])
    return meta


@dataclass(frozen=True)
class Calibration:
    """Optional post-hoc maps for the two scores (paper 3.3.6); each is rank-preserving."""

    s_vis: LinearCalibration | None = None
    s_ali: LinearCalibration | None = None

    @property
    def empty(self) -> bool:
        return self.s_vis is None and self.s_ali is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "format_version": 1,
            "s_vis": None if self.s_vis is None else self.s_vis.to_dict(),
            "s_ali": None if self.s_ali is None else self.s_ali.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "calibration") -> Calibration:
        if data.get("format") != CALIBRATION_FORMAT:
            raise ValueError(f"{where} is not an ELIQ calibration file (format {data.get('format')!r})")
        parts = {key: (LinearCalibration.from_dict(data[key]) if data.get(key) else None) for key in ("s_vis", "s_ali")}
        return cls(**parts)


# ------------------------------------------------------------------------------ writing a bundle


def _write_bundle(
    out_dir: Path,
    adapter_dir: Path,
    head: ELIQScoringHead,
    base_ref: str,
    base_fingerprint: str | None,
    calibration: Calibration,
    provenance: dict[str, Any] | None,
) -> Path:
    """Stage the whole folder next to ``out_dir`` and rename it into place (crash-safe)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / BUNDLE_META_FILE).is_file())):
        # Replacing means deleting; never delete something that is not a bundle (e.g. --out ~).
        raise ValueError(f"refusing to overwrite {out_dir}: it exists and is not an ELIQ bundle")
    with staged_dir(out_dir) as staging:
        shutil.copytree(adapter_dir, staging / ADAPTER_DIR, ignore=shutil.ignore_patterns(*_NOT_CONTENT))
        save_scoring_head(head, head.config, staging / HEAD_DIR)
        if not calibration.empty:
            (staging / CALIBRATION_FILE).write_text(json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n")
        files = _file_manifest(staging)
        meta = {
            "format": BUNDLE_FORMAT,
            "format_version": BUNDLE_VERSION,
            "base_ref": base_ref,
            "base_fingerprint": base_fingerprint,
            "hidden_size": head.config.hidden_size,
            "head_config": head.config.to_dict(),
            "adapter_fingerprint": adapter_fingerprint(staging / ADAPTER_DIR),
            "head_sha256": sha256_file(staging / HEAD_DIR / WEIGHTS_NAME),
            "neutral_prompt": NEUTRAL_PROMPT,
            "provenance": provenance or {},
            "files": files,
        }
        meta["manifest_sha256"] = _manifest_digest(meta)
        # Written last: a folder with eliq_bundle.json always has every part it describes.
        (staging / BUNDLE_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def export_bundle(
    adapter_dir: Path,
    head_dir: Path,
    out_dir: Path,
    base: str | None = None,
    calibration: Calibration | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Assemble a bundle from saved parts (an era's tuned_mllm and qqt_model) without loading the
    backbone weights: only its config (hidden size) and fingerprint are read.

    ``base`` is the loadable base the adapter was trained on (required for ``tiny:`` refs); it
    is validated but not recorded, the adapter's own base reference is.
    """
    adapter_dir, head_dir = Path(adapter_dir), Path(head_dir)
    meta = read_tuned_meta(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json; not a saved peft adapter")
    head, _ = load_scoring_head(head_dir)
    base_ref = str(meta["base_ref"])
    resolved = resolve_base(base_ref, base, f"adapter {adapter_dir}")
    _check_hidden_size(head.config.hidden_size, resolved, backbone_hidden_size(resolved))
    recorded = meta.get("base_fingerprint")
    actual = _check_base_fingerprint(recorded, resolved, str(adapter_dir))
    return _write_bundle(out_dir, adapter_dir, head, base_ref, recorded or actual, calibration or Calibration(), provenance)


# ------------------------------------------------------------------------------ the scorer


class Score(tuple):
    """One image's scores. Unpacks as ``(s_vis, s_ali)`` and compares as that pair; also says
    whether its prompt was cut to the backbone's sequence limit before the alignment question
    (``prompt_truncated``; ``prompt_fit`` has the token counts, None without a prompt)."""

    prompt_fit: PromptFit | None

    def __new__(cls, s_vis: float, s_ali: float | None, prompt_fit: PromptFit | None = None) -> Score:
        self = super().__new__(cls, (s_vis, s_ali))
        self.prompt_fit = prompt_fit
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # pickle / copy
        return (self[0], self[1], self.prompt_fit)

    @property
    def s_vis(self) -> float:
        return self[0]

    @property
    def s_ali(self) -> float | None:
        return self[1]

    @property
    def prompt_truncated(self) -> bool:
        return self.prompt_fit is not None and self.prompt_fit.truncated


class ELIQScorer:
    """Tuned MLLM + scoring head (+ optional calibration): images and prompts -> (s_vis, s_ali).

    Scoring is deterministic (eval mode, no sampling). Batches are left-padded, so a row's score
    does not depend on its batch except for float rounding: padding changes the reduction
    length inside attention and matmuls, which in float32 (CPU) moves embeddings by ~1e-6 and
    scores by ~1e-7 (tests hold batch sizes 1, 3 and 7 to 1e-5). In bf16 (the CUDA default)
    the same effect is correspondingly larger; pass dtype=torch.float32 where that matters.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        head: ELIQScoringHead,
        adapter_dir: Path,
        base_ref: str,
        base_fingerprint: str | None,
        calibration: Calibration | None = None,
        device: str = "cpu",
        provenance: dict[str, Any] | None = None,
    ) -> None:
        trunk_config = getattr(model, "config", None)
        text = getattr(trunk_config, "text_config", None) or trunk_config
        if text is not None and hasattr(text, "hidden_size"):
            _check_hidden_size(head.config.hidden_size, base_ref, int(text.hidden_size))
        self.model = model
        self.processor = processor
        self.head = head.eval()  # the head always runs on CPU: it is tiny next to the backbone
        self.adapter_dir = Path(adapter_dir)
        self.base_ref = base_ref
        self.base_fingerprint = base_fingerprint
        self.calibration = calibration or Calibration()
        self.device = device
        self.provenance = dict(provenance or {})
        self.model.eval()

    # ---------------------------------------------------------------- construction

    @classmethod
    def from_parts(
        cls,
        adapter_dir: str | Path,
        head: ELIQScoringHead | str | Path,
        base_override: str | None = None,
        device: str = "cpu",
        calibration: Calibration | None = None,
        verify_base: bool = True,
        dtype: torch.dtype | None = None,
    ) -> ELIQScorer:
        """Load a tuned backbone folder and a scoring head (object or saved folder)."""
        adapter_dir = Path(adapter_dir)
        meta = read_tuned_meta(adapter_dir)
        if not isinstance(head, ELIQScoringHead):
            head = load_scoring_head(head)[0]
        base_ref = str(meta["base_ref"])
        resolved = resolve_base(base_ref, base_override, f"adapter {adapter_dir}")
        # Fail before loading any weights: the config alone tells the hidden size.
        _check_hidden_size(head.config.hidden_size, resolved, backbone_hidden_size(resolved))
        recorded = meta.get("base_fingerprint")
        actual = _check_base_fingerprint(recorded, resolved, str(adapter_dir)) if verify_base else None
        model, processor = load_tuned_backbone(adapter_dir, base_override=resolved, device=device, dtype=dtype)
        return cls(model, processor, head, adapter_dir, base_ref, recorded or actual, calibration, device)

    @classmethod
    def from_pretrained(
        cls,
        bundle_dir: str | Path,
        base_override: str | None = None,
        device: str = "cpu",
        verify_base: bool = True,
        dtype: torch.dtype | None = None,
    ) -> ELIQScorer:
        """Load a folder written by :meth:`save_pretrained` or :func:`export_bundle`.

        ``base_override`` points at the base elsewhere (a local mirror of the hub id, or the
        folder a ``tiny:`` backbone was built into). Every file is checked against the
        manifest ``eliq_bundle.json`` before anything is loaded (:func:`verify_bundle`; a damaged
        bundle raises :class:`BundleDamagedError` naming the files). ``dtype`` defaults to
        float32 on CPU and bf16 on CUDA, as in the pipeline that produced the training embeddings.
        """
        root = Path(bundle_dir)
        meta = verify_bundle(root)
        adapter_dir, head_dir = root / ADAPTER_DIR, root / HEAD_DIR
        for required in (adapter_dir / TUNED_META_FILE, adapter_dir / "adapter_config.json",
                         head_dir / CONFIG_NAME, head_dir / WEIGHTS_NAME):
            if not required.is_file():
                raise FileNotFoundError(f"bundle {root} is incomplete: {required.relative_to(root)} is missing")
        head, head_cfg = load_scoring_head(head_dir)
        base_ref = str(meta["base_ref"])
        resolved = resolve_base(base_ref, base_override, f"bundle {root}")
        _check_hidden_size(head_cfg.hidden_size, resolved, backbone_hidden_size(resolved))
        if head_cfg.hidden_size != meta["hidden_size"] or head_cfg.to_dict() != meta["head_config"]:
            raise ValueError(f"bundle {root}: head/ does not match the head config recorded in {BUNDLE_META_FILE}")
        if sha256_file(head_dir / WEIGHTS_NAME) != meta["head_sha256"]:
            raise ValueError(f"bundle {root}: head/{WEIGHTS_NAME} was modified after the bundle was written")
        found = adapter_fingerprint(adapter_dir)
        if found != meta["adapter_fingerprint"]:
            raise ValueError(
                f"bundle {root}: adapter/ has fingerprint {found} but the bundle was written with "
                f"{meta['adapter_fingerprint']}; its parts were mixed up or modified"
            )
        adapter_meta = read_tuned_meta(adapter_dir)
        if adapter_meta.get("base_fingerprint") not in (None, meta["base_fingerprint"]):
            raise ValueError(
                f"bundle {root}: the adapter was recorded for base {adapter_meta['base_fingerprint']} "
                f"but the bundle for {meta['base_fingerprint']}"
            )
        if verify_base:
            _check_base_fingerprint(meta["base_fingerprint"], resolved, f"bundle {root}")
        calibration = Calibration()
        # A sealed bundle loads calibration.json only when its manifest lists it.
        if (root / CALIBRATION_FILE).is_file() and (meta["format_version"] == 1 or CALIBRATION_FILE in meta["files"]):
            calibration = Calibration.from_dict(json.loads((root / CALIBRATION_FILE).read_text()), str(root / CALIBRATION_FILE))
        model, processor = load_tuned_backbone(adapter_dir, base_override=resolved, device=device, dtype=dtype)
        return cls(model, processor, head, adapter_dir, base_ref, meta["base_fingerprint"], calibration, device,
                   meta.get("provenance"))

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """Write a self-contained bundle folder (atomically; an existing bundle is replaced)."""
        return _write_bundle(Path(out_dir), self.adapter_dir, self.head, self.base_ref, self.base_fingerprint,
                             self.calibration, self.provenance)

    # ---------------------------------------------------------------- scoring

    @property
    def hidden_size(self) -> int:
        return self.head.config.hidden_size

    @property
    def prompt_limit(self) -> int | None:
        """Most tokens of one backbone input row (instruction + image + prompt); None: no limit."""
        return sequence_limit(self.processor)

    def fit_prompts(self, prompts: Sequence[str | None]) -> list[PromptFit | None]:
        """Each prompt as the alignment question carries it: cut at a token boundary when the
        row would exceed :attr:`prompt_limit` (None for a missing or blank prompt)."""
        return [fit_prompt(self.processor, prompt) if has_prompt(prompt) else None for prompt in prompts]

    def embed(
        self, images: Sequence[ImageInput], prompts: Sequence[str | None], batch_size: int = 8
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_tec, z_aes, z_ali, each [n, h]; z_ali of a prompt-less image is that of the neutral
        caption. The three questions about an image share one vision encode and image-prefix
        pass; ``batch_size`` images go through the backbone at once. Images are PIL images or
        paths (read here)."""
        z_tec, z_aes, [z_ali] = self._embed_with_captions(as_images(images), [[p] for p in prompts], batch_size)
        return z_tec, z_aes, z_ali

    def _embed_with_captions(
        self, images: list[Image.Image], captions: Sequence[Sequence[str | None]], batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """z_tec, z_aes and one z_ali per caption slot: ``captions[i][k]`` is image i's k-th
        alignment question (None or blank: the neutral caption). All questions about an image share
        its prefix pass, so a second caption costs one short suffix, not another encode."""
        if len(images) != len(captions):
            raise ValueError(f"got {len(images)} images but {len(captions)} prompts")
        n, slots = len(images), len(captions[0]) if captions else 1
        # Prompt-less images still need an alignment token for the QQT (paper eq. 12-15). Over-long
        # prompts are cut to the backbone's limit inside build_inputs (see fit_prompts).
        ali = [[c if has_prompt(c) else NEUTRAL_PROMPT for c in row] for row in captions]
        aspects = ["tec", "aes"] + ["ali"] * slots
        z = extract_aspect_embeddings(
            self.model, self.processor, [image for image in images for _ in aspects], aspects * n,
            [p for row in ali for p in (None, None, *row)], batch_size=batch_size, device=self.device,
        ).view(n, len(aspects), -1)
        return z[:, 0], z[:, 1], [z[:, 2 + k] for k in range(slots)]

    def raw_scores(
        self, images: Sequence[ImageInput], prompts: Sequence[str | None], batch_size: int = 8,
        visual_from_prompt: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uncalibrated (s_vis, s_ali) for every row, s_ali also for prompt-less rows (from the
        neutral caption). s_vis is prompt-independent unless ``visual_from_prompt`` (see :meth:`score`)."""
        images = as_images(images)
        if not images:
            return np.zeros(0), np.zeros(0)
        if visual_from_prompt or not any(has_prompt(p) for p in prompts):
            return score_embeddings(self.head, *self.embed(images, prompts, batch_size))
        # one extra alignment suffix per image, the neutral caption's, for s_vis
        z_tec, z_aes, (z_neutral, z_prompt) = self._embed_with_captions(
            images, [[None, prompt] for prompt in prompts], batch_size)
        s_vis, _ = score_embeddings(self.head, z_tec, z_aes, z_neutral)
        _, s_ali = score_embeddings(self.head, z_tec, z_aes, z_prompt)
        return s_vis, s_ali

    def score(
        self, images: Sequence[ImageInput], prompts: Sequence[str | None], batch_size: int = 8,
        visual_from_prompt: bool = False,
    ) -> list[Score]:
        """(s_vis, s_ali) per image, calibrated when a calibration is set. Images are PIL images or
        paths (``str`` / ``Path``; a missing or undecodable file is named).

        - ``s_vis`` (visual quality) does not depend on the prompt. The paper writes it as a
          function of the image alone, ŝ_vis(I), but its visual query attends to the content
          token [z_vis; z_ali(I, p)] (eq. 12-15), so a prompt moves it. Here it is computed with
          the alignment embedding of the neutral caption (``NEUTRAL_PROMPT``) for every image,
          exactly as for an image without a prompt. ``visual_from_prompt=True`` uses the image's
          own prompt instead, as ``benchmark_scores`` does on prompted benchmarks.
        - ``s_ali`` (prompt alignment) is None for images without a prompt.

        Higher is better on both. Uncalibrated scores are the head's raw outputs, comparable
        within one bundle only (their scale is set by the ranking margins, not by any MOS); a
        calibration (:meth:`calibrate`) maps them linearly and monotonically onto a MOS scale.

        A prompt longer than the backbone takes is cut to its first tokens that fit (see
        :meth:`fit_prompts`), silently: the row's ``prompt_truncated`` records it.
        """
        images = as_images(images)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        fits = self.fit_prompts(prompts)
        s_vis, s_ali = self.raw_scores(images, [None if fit is None else fit.text for fit in fits], batch_size,
                                       visual_from_prompt)
        if self.calibration.s_vis is not None:
            s_vis = self.calibration.s_vis(s_vis)
        if self.calibration.s_ali is not None:
            s_ali = self.calibration.s_ali(s_ali)
        return [
            Score(float(vis), float(ali) if fit is not None else None, fit)
            for vis, ali, fit in zip(s_vis, s_ali, fits)
        ]

    def calibrate(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[str | None],
        mos_quality: Sequence[float],
        mos_align: Sequence[float | None] | None = None,
        batch_size: int = 8,
        visual_from_prompt: bool = False,
    ) -> Calibration:
        """Fit the monotonic linear maps on a small labelled split (paper 3.3.6) and keep them.

        s_vis is fitted on every row; s_ali only on rows with a prompt and a finite alignment
        MOS. Rank order is unchanged (positive slope), so SRCC/KRCC are unaffected.
        """
        images = as_images(images)
        if len(mos_quality) != len(images) or (mos_align is not None and len(mos_align) != len(images)):
            raise ValueError("images, prompts and MOS lists must have the same length")
        raw_vis, raw_ali = self.raw_scores(images, prompts, batch_size, visual_from_prompt)  # as score() will
        s_vis = LinearCalibration.fit(raw_vis, np.asarray(mos_quality, dtype=np.float64))
        s_ali = None
        if mos_align is not None:
            keep = [i for i, (prompt, mos) in enumerate(zip(prompts, mos_align))
                    if has_prompt(prompt) and mos is not None and np.isfinite(mos)]
            s_ali = LinearCalibration.fit(raw_ali[keep], np.asarray([mos_align[i] for i in keep], dtype=np.float64))
        self.calibration = Calibration(s_vis=s_vis, s_ali=s_ali)
        return self.calibration

    @property
    def fingerprint(self) -> str:
        """Identity of what produces the scores: adapter, head weights, calibration."""
        digest = hashlib.sha256()
        digest.update(adapter_fingerprint(self.adapter_dir).encode())
        for tensor_name, tensor in sorted(self.head.state_dict().items()):
            digest.update(tensor_name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        digest.update(json.dumps(self.calibration.to_dict(), sort_keys=True).encode())
        return "eliq-bundle-sha256:" + digest.hexdigest()


def read_bundle_meta(bundle_dir: str | Path) -> dict[str, Any]:
    """The parsed manifest of a bundle, itself checked (parse, keys, manifest_sha256), not the
    files it lists: :func:`verify_bundle` checks those."""
    root = Path(bundle_dir)
    path = root / BUNDLE_META_FILE
    if not root.is_dir():
        raise FileNotFoundError(f"bundle folder {root} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not an ELIQ scorer bundle (no {BUNDLE_META_FILE})")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:  # e.g. truncated: "Unterminated string"
        raise BundleDamagedError(root, [(BUNDLE_META_FILE, f"not valid JSON ({exc})")]) from exc
    if not isinstance(meta, dict):
        raise BundleDamagedError(root, [(BUNDLE_META_FILE, f"not a JSON object but {type(meta).__name__}")])
    # Checked first: an edited byte anywhere in a sealed manifest (its format too) is damage.
    if "manifest_sha256" in meta and meta["manifest_sha256"] != _manifest_digest(meta):
        raise BundleDamagedError(root, [(BUNDLE_META_FILE, "content does not match its manifest_sha256 (modified after export)")])
    if meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path} is not an ELIQ scorer bundle (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"{path}: unsupported format_version {version!r} (this code reads "
            f"{', '.join(map(str, READABLE_VERSIONS))})"
        )
    missing = [key for key in _REQUIRED_KEYS[version] if key not in meta]
    if missing:
        raise BundleDamagedError(root, [(BUNDLE_META_FILE, f"missing keys {', '.join(missing)}")])
    if version == 1:
        return meta
    files = meta["files"]
    well_formed = isinstance(files, dict) and all(
        _valid_manifest_name(name) and isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
        and isinstance(entry.get("size"), int) for name, entry in files.items()
    )
    if not well_formed:
        raise BundleDamagedError(root, [(BUNDLE_META_FILE, "its files list is malformed")])
    return meta
