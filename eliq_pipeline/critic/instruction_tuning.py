"""Quality-aware instruction tuning (paper 3.3.1): LoRA SFT of the MLLM on low/high pseudo-labels.

Over 400 lines: one cohesive algorithm (LoRA SFT with resumable checkpoints and the tuned-backbone folder it publishes).

Each example asks one aspect question about one image and the target is the single label token
``low`` or ``high``; the loss covers that token only. Training is resumable from checkpoints in a
work directory (adapter + optimizer state as safetensors, progress as json; nothing is pickled).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from PIL import Image
from torch.optim.swa_utils import get_ema_multi_avg_fn

from eliq_pipeline.core.atomic import staged_dir
from eliq_pipeline.critic.severity import VISUAL_ASPECTS, series_order_accuracy
from eliq_pipeline.critic.shared_prefix import batched_final_states, final_token_states, label_logits
from eliq_pipeline.critic.backbone import (
    ASPECTS,
    INSTRUCTIONS,
    LABELS,
    backbone_fingerprint,
    build_inputs,
    default_dtype,
    directory_fingerprint,
    label_token_ids,
    load_backbone,
    load_processor,
)

# The LLM's attention and MLP projections (Qwen3 names). The vision tower uses other names
# (qkv/proj/linear_fc*), and the regex below also pins the scope to the language model.
LLM_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

TUNED_META_FILE = "eliq_backbone.json"
TUNED_FORMAT = "eliq-tuned-backbone/1"

_CKPT_ADAPTER = "adapter_model.safetensors"
_CKPT_OPTIMIZER = "optimizer.safetensors"
_CKPT_STATE = "trainer_state.json"


@dataclass
class SFTExample:
    """One instruction-tuning query: (image, aspect[, prompt]) -> label token."""

    image: Image.Image
    aspect: str
    prompt: str | None
    label: str
    # Examples of one comparison tuple share a group: the sampler keeps a group together so the
    # questions about one image are trained from one shared image-prefix pass. None: alone.
    group: int | None = None
    # Place in a severity series, (positive, method, level): I+ is (positive, None, 0), a graded
    # negative (positive, its method, its level). The severity-ranking term orders two tec (or
    # two aes) examples of one positive when they are I+ and a negative, or the same method at
    # two levels. None: in no series.
    rank: tuple[Any, str | None, int] | None = None

    def __post_init__(self) -> None:
        if self.aspect not in ASPECTS:
            raise ValueError(f"unknown aspect {self.aspect!r}; expected one of {ASPECTS}")
        if self.label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {self.label!r}")
        if self.aspect == "ali" and not self.prompt:
            raise ValueError("an alignment example needs a prompt")
        if self.aspect != "ali":
            # tec/aes instructions never see the prompt (paper 3.3.1); drop it so it cannot leak.
            self.prompt = None


def _get(row: Any, name: str) -> Any:
    if isinstance(row, Mapping):
        return row[name]
    return getattr(row, name)


def _get_optional(row: Any, name: str) -> Any:
    return row.get(name) if isinstance(row, Mapping) else getattr(row, name, None)


def pseudo_label_examples(tuples: Iterable[Any]) -> list[SFTExample]:
    """Turn comparison tuples (I+, I-tec, I-aes, p, p-ali) into SFT examples, exactly per 3.3.1.

    Each row (a mapping or an object) has ``positive``, ``tec_negative``, ``aes_negative``
    (PIL images), ``prompt`` and ``mismatched_prompt``. I+ is high on all three aspects (ali with
    p); I-tec is low on tec only, I-aes low on aes only, (I+, p-ali) low on ali only. Non-primary
    aspects of negatives get no label: they are not guaranteed by construction. An optional
    ``ali_negative`` image replaces I+ in the alignment-negative pair (AI-specific alignment
    negatives: an image rendered from a prompt variant, paired with the original prompt).
    """
    examples: list[SFTExample] = []
    for group, row in enumerate(tuples):
        positive = _get(row, "positive")
        prompt = _get(row, "prompt")
        series = _get_optional(row, "series")  # the positive's identity, when the row says it
        ranks = {"pos": None if series is None else (series, None, 0)}
        for aspect in ("tec", "aes"):
            level = _get_optional(row, f"{aspect}_severity")
            ranks[aspect] = None if series is None or level is None else (series, _get(row, f"{aspect}_method"), int(level))
        # The questions about I+ come first and together, so a micro-batch cut splits them rarely.
        examples += [
            SFTExample(positive, "tec", None, "high", group, ranks["pos"]),
            SFTExample(positive, "aes", None, "high", group, ranks["pos"]),
            SFTExample(positive, "ali", prompt, "high", group),
            SFTExample(_get_optional(row, "ali_negative") or positive, "ali", _get(row, "mismatched_prompt"), "low", group),
            SFTExample(_get(row, "tec_negative"), "tec", None, "low", group, ranks["tec"]),
            SFTExample(_get(row, "aes_negative"), "aes", None, "low", group, ranks["aes"]),
        ]
    return examples


def severity_rank_pairs(examples: Sequence[SFTExample]) -> list[tuple[int, int]]:
    """(i, j): example i should answer "high" more confidently than example j -- the same aspect
    question about one positive's series, i less degraded (I+ before any of its negatives, a mild
    level before a strong one of the same method). Equal ranks (I+ asked twice) form no pair."""
    pairs = []
    for i, a in enumerate(examples):
        for j, b in enumerate(examples):
            if (a.rank is not None and b.rank is not None and a.aspect == b.aspect and a.rank[0] == b.rank[0]
                    and a.rank[2] < b.rank[2] and (a.rank[1] is None or a.rank[1] == b.rank[1])):
                pairs.append((i, j))
    return pairs


@dataclass
class SFTConfig:
    """LoRA SFT settings. Defaults are common LoRA-SFT values for the 8B production backbone
    (the paper's main text gives none); see :meth:`tiny` for the CPU toy profile.

    ``steps`` are optimizer steps (``batch_size * grad_accum`` examples each). The learning rate
    is constant after a linear warmup, so stopping early and resuming with a larger
    ``max_steps`` follows exactly the same trajectory as one uninterrupted run.
    """

    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = LLM_PROJECTIONS
    # Whole modules trained and saved with the adapter (peft ``modules_to_save``), e.g.
    # ("lm_head",), ("visual",) or ("merger",). A pretrained backbone needs none.
    modules_to_save: tuple[str, ...] = ()
    learning_rate: float = 1e-4
    # Per-module learning rates, (name fragment, lr): a trainable parameter whose name contains the
    # fragment (first match) uses that rate instead of ``learning_rate``, e.g. (("visual", 3e-4),).
    # A vision tower trained from random init collapses at the rate that suits LoRA and lm_head.
    module_learning_rates: tuple[tuple[str, float], ...] = ()
    weight_decay: float = 0.0
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accum: int = 4
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = True  # only on CUDA; CPU trains in float32
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_batch_size: int = 8
    # Per-aspect weight of the label-token NLL (eq. 5 is the all-ones case). The tiny preset sets
    # "ali" to 0: its random toy generators' images do not depict their prompts, so the alignment
    # labels carry no learnable signal at toy scale, and any weight on them stalls the visual
    # aspects (measured: held-out tec accuracy 0.5 at weight 1, 0.77-0.89 at weight 0).
    aspect_loss_weights: tuple[tuple[str, float], ...] = (("tec", 1.0), ("aes", 1.0), ("ali", 1.0))
    # Weight of the severity-ranking term (0: none): a logistic loss on the high-minus-low label
    # logit of every severity pair in a micro-batch (``severity_rank_pairs``: I+ over its graded
    # negatives, mild over strong), added to the label NLL. Binary labels call a mild and a strong
    # negative both "low"; this term asks for the order between them. With it, the sampler keeps
    # all tuples of one positive in one micro-batch (their examples' ``rank`` series).
    severity_ranking_weight: float = 0.0
    # Exponential moving average of the trainable weights (0: none), updated after every optimizer
    # step and checkpointed with it; the returned (and saved) model carries the average, the
    # trajectory itself is unchanged. At a constant learning rate the raw weights of a from-scratch
    # run jitter from checkpoint to checkpoint; the average (horizon about 1 / (1 - decay) steps)
    # is the usual remedy. It is debiased (started at zero, divided by 1 - decay^steps, as Adam's
    # moments are): the random initial weights are no part of it, however short the run.
    ema_decay: float = 0.0
    # Curriculum (0: none): the first ``curriculum_steps`` steps sample only the strongest graded
    # negatives' questions and their tuples' I+ questions (``strongest_level_examples``), then the
    # whole mix. A from-scratch backbone sits at the ln 2 plateau for its first ~1,000 steps on the
    # mix, and how soon it leaves depends on the seed; the strong copies differ most from their
    # positives, so they give the largest image-dependent gradient to start from.
    curriculum_steps: int = 0
    # Questions about the same image in a micro-batch share one vision encode and prefix pass
    # (critic/shared_prefix.py); False runs one row per question. Same loss up to float noise.
    share_image_prefix: bool = True

    # Fields that do not change the training trajectory: a checkpoint written under other values
    # of these is still a valid resume point.
    _NON_TRAJECTORY = ("max_steps", "epochs", "checkpoint_every", "keep_checkpoints", "eval_batch_size",
                       "share_image_prefix")
    # The micro-batch sampler; a new one changes every trajectory, so it is part of the run key.
    SAMPLER = "example-groups/1"

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"SFTConfig.ema_decay must be in [0, 1) (0: no average), got {self.ema_decay}")
        if self.curriculum_steps < 0:
            raise ValueError(f"SFTConfig.curriculum_steps must be >= 0 (0: no curriculum), got {self.curriculum_steps}")

    @classmethod
    def tiny(cls, **overrides: Any) -> "SFTConfig":
        """CPU settings under which a random tiny backbone learns a toy tec task in ~80 steps.

        ``lm_head`` is trained because, in a random model, the frozen final RMSNorm fixes the
        hidden-state norm and the small random head then bounds every logit to about +-1: LoRA
        alone cannot make ``low``/``high`` win over the rest of the vocabulary. Training the
        whole vision tower as well was tried and learns slower at this learning rate.
        """
        values: dict[str, Any] = dict(
            lora_rank=8,
            lora_alpha=16,
            lora_dropout=0.0,
            modules_to_save=("lm_head",),
            learning_rate=3e-3,
            warmup_steps=5,
            max_steps=80,
            batch_size=8,
            grad_accum=1,
            bf16=False,
            checkpoint_every=20,
            eval_batch_size=16,
        )
        values.update(overrides)
        return cls(**values)

    def run_key(self) -> dict[str, Any]:
        """The trajectory-defining settings, stored in checkpoints to refuse foreign ones."""
        data = asdict(self)
        for name in self._NON_TRAJECTORY:
            data.pop(name, None)
        data["target_modules"] = list(self.target_modules)
        data["modules_to_save"] = list(self.modules_to_save)
        data["aspect_loss_weights"] = [[aspect, float(w)] for aspect, w in self.aspect_loss_weights]
        data["sampler"] = self.SAMPLER
        if self.module_learning_rates:  # absent when unused: earlier checkpoints stay resumable
            data["module_learning_rates"] = [[name, float(lr)] for name, lr in self.module_learning_rates]
        else:
            data.pop("module_learning_rates")
        for name in ("severity_ranking_weight", "ema_decay", "curriculum_steps"):
            if not data[name]:  # likewise
                data.pop(name)
        if self.ema_decay:  # a checkpoint's average from the earlier scheme (started at the init) differs
            data["ema_start"] = "zero-debiased"
        return data


@dataclass
class SFTResult:
    model: Any = field(repr=False)
    processor: Any = field(repr=False)
    loss_curve: list[float]
    heldout_accuracy: dict[str, float]
    heldout_counts: dict[str, int]
    # graded negatives: mild answered "high" more confidently than strong (``severity_order``)
    heldout_severity_order: dict[str, float]
    steps: int
    resumed_from_step: int
    trainable_params: int
    total_params: int


# --------------------------------------------------------------------------------------------
# Checkpoints (safetensors + json; atomic by rename)
# --------------------------------------------------------------------------------------------


def _saved_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU, contiguous, detached copy of ``tensor`` for safetensors."""
    return tensor.detach().cpu().contiguous().clone()


def _flatten_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state_dict["state"].items():
        for name, value in entry.items():
            key = f"state.{index}.{name}"
            if isinstance(value, torch.Tensor):
                tensors[key] = _saved_copy(value)
            else:
                scalars[key] = value
    return tensors, scalars


def _unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[int, dict[str, Any]]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(scalars.items()):
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    return state


def _rng_tensors() -> dict[str, torch.Tensor]:
    # Saved so dropout after a resume draws the same numbers as an uninterrupted run.
    tensors = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    return tensors


def _restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    cuda_states = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


def _checkpoint_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / _CKPT_STATE).is_file())


def _save_checkpoint(
    root: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    step: int,
    loss_curve: list[float],
    run_key: dict,
    keep: int,
    ema: Sequence[torch.Tensor] | None = None,
) -> Path:
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    final = root / f"step-{step:08d}"
    with staged_dir(final) as staging:  # the rename publishes the checkpoint whole
        adapter = {k: _saved_copy(v) for k, v in get_peft_model_state_dict(model).items()}
        save_file(adapter, str(staging / _CKPT_ADAPTER))
        tensors, scalars = _flatten_optimizer_state(optimizer.state_dict())
        averages = {f"ema.{i}": _saved_copy(t) for i, t in enumerate(ema or ())}
        save_file({**tensors, **_rng_tensors(), **averages}, str(staging / _CKPT_OPTIMIZER))
        state = {"step": step, "loss_curve": loss_curve, "run_key": run_key, "optimizer_scalars": scalars}
        (staging / _CKPT_STATE).write_text(json.dumps(state, indent=2, sort_keys=True))
    for old in _checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(
    path: Path, model: Any, optimizer: torch.optim.Optimizer, device: str, ema: Sequence[torch.Tensor] | None = None,
) -> dict[str, Any]:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / _CKPT_STATE).read_text())
    set_peft_model_state_dict(model, load_file(str(path / _CKPT_ADAPTER), device=str(device)))
    saved = load_file(str(path / _CKPT_OPTIMIZER))
    rng = {k: v for k, v in saved.items() if k.startswith("rng.")}
    tensors = {k: v for k, v in saved.items() if k.startswith("state.")}
    current = optimizer.state_dict()
    optimizer.load_state_dict(
        {
            "state": _unflatten_optimizer_state(tensors, state["optimizer_scalars"]),
            "param_groups": current["param_groups"],
        }
    )
    _restore_rng(rng)
    for i, average in enumerate(ema or ()):
        average.copy_(saved[f"ema.{i}"])
    return state


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def example_groups(examples: Sequence[SFTExample], by_series: bool = False) -> list[list[int]]:
    """Indices of examples that the sampler keeps together (same ``group``), in first-seen order.
    With ``by_series``, the groups (tuples) of one positive's severity series are kept together."""
    series = {e.group: e.rank[0] for e in examples if by_series and e.rank is not None and e.group is not None}
    groups: dict[Any, list[int]] = {}
    for index, example in enumerate(examples):
        if example.group in series:
            key: Any = ("series", series[example.group])
        else:
            key = ("alone", index) if example.group is None else ("group", example.group)
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def strongest_level_examples(examples: Sequence[SFTExample]) -> list[int]:
    """Indices of the examples a curriculum starts on: of each tuple (``group``) and visual
    aspect, the I+ and negative questions only where that negative is at the strongest graded
    level present; a milder negative's question and its tuple's I+ question of that aspect are
    left out together, so each aspect stays balanced between "high" and "low". Alignment and
    ungraded examples all stay."""
    graded = [e for e in examples if e.rank is not None and e.rank[1] is not None]
    if not graded:
        return list(range(len(examples)))
    top = max(e.rank[2] for e in graded)
    milder = {(e.group, e.aspect) for e in graded if e.rank[2] < top and e.group is not None}
    return [i for i, e in enumerate(examples)
            if not (e.rank is not None and e.rank[1] is not None and e.rank[2] < top)
            and (e.group is None or (e.group, e.aspect) not in milder)]


def _epoch_order(groups: Sequence[Sequence[int]], seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [index for g in torch.randperm(len(groups), generator=generator).tolist() for index in groups[g]]


class _SampleStream:
    """Deterministic shuffled stream over epochs: micro-batch g is a pure function of (seed, g),
    so a resumed run sees exactly the examples the uninterrupted run would have seen. Groups
    are shuffled, their examples stay adjacent (singleton groups: a plain shuffle)."""

    def __init__(self, groups: Sequence[Sequence[int]], seed: int) -> None:
        self.groups, self.seed = groups, seed
        self.n = sum(len(group) for group in groups)
        self._orders: dict[int, list[int]] = {}

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for k in range(start, start + count):
            epoch, position = divmod(k, self.n)
            if epoch not in self._orders:
                self._orders = {epoch: _epoch_order(self.groups, self.seed, epoch)}
            out.append(self._orders[epoch][position])
        return out


def _lora_model(model: Any, cfg: SFTConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    names = "|".join(sorted(set(cfg.target_modules)))
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        # Regex (full match): only the language model's projections get LoRA.
        target_modules=rf".*\.language_model\..*\.({names})",
        modules_to_save=list(cfg.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Seeded (without touching the caller's RNG) so LoRA init is reproducible for a cfg.seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return get_peft_model(model, lora)


def sft_batch(processor: Any, examples: Sequence[SFTExample]) -> dict[str, torch.Tensor]:
    """Model inputs for a micro-batch, with ``labels`` -100 everywhere but the label token."""
    return build_inputs(
        processor,
        [e.image for e in examples],
        [e.aspect for e in examples],
        [e.prompt for e in examples],
        add_label=[e.label for e in examples],
    )


def _label_logits(
    model: Any, processor: Any, examples: Sequence[SFTExample], device: str, share_image_prefix: bool
) -> torch.Tensor:
    """Logits ``[n, vocab]`` of the token after each example's final input token (its label)."""
    states = final_token_states(model, processor, [e.image for e in examples], [e.aspect for e in examples],
                                [e.prompt for e in examples], device, share_image_prefix)
    return label_logits(model, states)


@torch.no_grad()
def label_probabilities(
    model: Any, processor: Any, examples: Sequence[SFTExample], batch_size: int = 8, device: str = "cpu",
    share_image_prefix: bool = True,
) -> torch.Tensor:
    """P(high) from the two label logits at the final input token, one per example. Examples
    about the same image object share its prefix pass; ``batch_size`` rows per forward pass."""
    ids = label_token_ids(processor.tokenizer)
    pair = torch.tensor([ids["low"], ids["high"]])
    was_training = model.training
    model.eval()
    out = torch.empty(len(examples))
    for batch, states in batched_final_states(model, processor, [e.image for e in examples],
                                              [e.aspect for e in examples], [e.prompt for e in examples],
                                              batch_size, device, share_image_prefix):
        logits = label_logits(model, states)
        out[batch] = torch.softmax(logits.float()[:, pair.to(logits.device)], dim=-1)[:, 1].cpu()
    model.train(was_training)
    return out


def heldout_accuracy(
    model: Any, processor: Any, examples: Sequence[SFTExample], batch_size: int = 8, device: str = "cpu",
    p_high: torch.Tensor | None = None,
) -> tuple[dict[str, float], dict[str, int]]:
    """Per-aspect accuracy of argmax over the {low, high} logits; aspects without examples omitted.
    ``p_high``: the examples' P(high), when already computed."""
    if not examples:
        return {}, {}
    if p_high is None:
        p_high = label_probabilities(model, processor, examples, batch_size, device)
    correct: dict[str, int] = {}
    counts: dict[str, int] = {}
    for example, prob in zip(examples, p_high.tolist()):
        predicted = "high" if prob > 0.5 else "low"
        counts[example.aspect] = counts.get(example.aspect, 0) + 1
        correct[example.aspect] = correct.get(example.aspect, 0) + int(predicted == example.label)
    accuracy = {aspect: correct[aspect] / counts[aspect] for aspect in ASPECTS if aspect in counts}
    return accuracy, {aspect: counts[aspect] for aspect in ASPECTS if aspect in counts}


def severity_order(examples: Sequence[SFTExample], p_high: Sequence[float]) -> dict[str, float]:
    """Per visual aspect, how often a milder graded negative gets a higher P(high) than a stronger one
    of the same method on the same positive (``critic.severity``); aspects without such pairs omitted."""
    order = {}
    for aspect in VISUAL_ASPECTS:
        value = series_order_accuracy(((e.rank[0], e.rank[1]), e.rank[2], float(p)) for e, p in zip(examples, p_high)
                                      if e.aspect == aspect and e.rank is not None and e.rank[2] > 0)
        if value is not None:
            order[aspect] = value
    return order


def _resume(
    ckpt_root: Path,
    model: Any,
    optimizer: torch.optim.Optimizer,
    run_key: dict,
    device: str,
    say: Callable[[str], None],
    ema: Sequence[torch.Tensor] | None = None,
) -> tuple[int, list[float]]:
    """(step, loss curve) of the newest matching checkpoint, loaded into model/optimizer/RNG."""
    checkpoints = _checkpoint_dirs(ckpt_root)
    if not checkpoints:
        return 0, []
    latest = checkpoints[-1]
    if json.loads((latest / _CKPT_STATE).read_text()).get("run_key") != run_key:
        say(f"checkpoints in {ckpt_root} come from other settings or examples; starting fresh")
        shutil.rmtree(ckpt_root)
        return 0, []
    state = _load_checkpoint(latest, model, optimizer, device, ema)
    say(f"resumed from {latest.name} (step {state['step']})")
    return int(state["step"]), list(state["loss_curve"])


def _label_loss(
    model: Any, processor: Any, batch: Sequence[SFTExample], weights: Sequence[float], device: str,
    share_image_prefix: bool = True, severity_weight: float = 0.0,
) -> torch.Tensor:
    """NLL of each example's label token given its question, weighted per example by its aspect,
    plus ``severity_weight`` times the severity-ranking loss of the batch's severity pairs.

    With ``share_image_prefix`` the questions about one image run from one prefix pass and the
    gradient of all of them flows through it; the loss equals the one-row-per-question loss."""
    ids = label_token_ids(processor.tokenizer)
    logits = _label_logits(model, processor, batch, device, share_image_prefix)
    target = torch.tensor([ids[e.label] for e in batch], device=logits.device)
    nll = torch.nn.functional.cross_entropy(logits.float(), target, reduction="none")
    weight = torch.tensor(weights, dtype=nll.dtype, device=nll.device)
    loss = (nll * weight).sum() / weight.sum().clamp_min(1e-8)
    pairs = severity_rank_pairs(batch) if severity_weight else []
    if pairs:
        margin = logits[:, ids["high"]].float() - logits[:, ids["low"]].float()
        better, worse = (torch.tensor(side, device=logits.device) for side in zip(*pairs))
        # logistic (RankNet) loss: the less degraded side's high-minus-low margin should be larger
        loss = loss + severity_weight * torch.nn.functional.softplus(margin[worse] - margin[better]).mean()
    return loss


def _train_steps(
    model: Any,
    processor: Any,
    optimizer: torch.optim.Optimizer,
    examples: Sequence[SFTExample],
    cfg: SFTConfig,
    *,
    steps: range,
    loss_curve: list[float],
    ckpt_root: Path,
    run_key: dict,
    device: str,
    trainable: list[torch.nn.Parameter],
    say: Callable[[str], None],
    progress: Callable[[int, int], None] | None = None,
    ema: list[torch.Tensor] | None = None,
) -> None:
    """Optimizer steps ``steps``, appending to ``loss_curve`` and checkpointing as configured."""
    groups = example_groups(examples, by_series=cfg.severity_ranking_weight > 0)
    stream = _SampleStream(groups, cfg.seed)
    if cfg.curriculum_steps:  # its own stream over the strongest level's examples, groups kept together
        start = set(strongest_level_examples(examples))
        start_stream = _SampleStream([kept for kept in ([i for i in g if i in start] for g in groups) if kept],
                                     cfg.seed)
    weights = dict(cfg.aspect_loss_weights)
    total_steps = steps.stop
    ema_update = get_ema_multi_avg_fn(cfg.ema_decay) if ema is not None else None
    model.train()
    for step in steps:
        scale = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        for group in optimizer.param_groups:
            group["lr"] = group.get("base_lr", cfg.learning_rate) * scale
        optimizer.zero_grad(set_to_none=True)
        micro_losses = []
        for micro in range(cfg.grad_accum):
            source = start_stream if step < cfg.curriculum_steps else stream
            indices = source.take((step * cfg.grad_accum + micro) * cfg.batch_size, cfg.batch_size)
            batch = [examples[i] for i in indices]
            loss = _label_loss(model, processor, batch, [weights[e.aspect] for e in batch], device,
                               cfg.share_image_prefix, cfg.severity_ranking_weight)
            (loss / cfg.grad_accum).backward()
            micro_losses.append(float(loss.detach()))
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        if ema_update is not None:
            ema_update(ema, [p.detach().float() for p in trainable], None)
        loss_curve.append(sum(micro_losses) / len(micro_losses))
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == total_steps:
            _save_checkpoint(ckpt_root, model, optimizer, done, loss_curve, run_key, cfg.keep_checkpoints, ema)
        if done % max(1, total_steps // 20) == 0 or done == total_steps:  # ~20 progress lines a run
            say(f"step {done}/{total_steps} loss {loss_curve[-1]:.4f}")
        if progress is not None:
            progress(done, total_steps)


def examples_fingerprint(examples: Sequence[SFTExample]) -> str:
    """Hash of the training examples in order: pixels (once per image object), aspect, prompt,
    label and group."""
    digest = hashlib.sha256()
    pixels: dict[int, str] = {}
    for example in examples:
        key = id(example.image)
        if key not in pixels:
            image = example.image
            pixels[key] = hashlib.sha256(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
        digest.update(json.dumps([pixels[key], example.aspect, example.prompt, example.label, example.group]).encode())
    return digest.hexdigest()[:32]


def _param_groups(model: Any, cfg: SFTConfig) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate (``cfg.module_learning_rates``, first match);
    each group keeps its ``base_lr`` for the warmup schedule."""
    rates = [(name, float(lr)) for name, lr in cfg.module_learning_rates]
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = next((rate for fragment, rate in rates if fragment in name), float(cfg.learning_rate))
            groups.setdefault(lr, []).append(param)
    unused = [fragment for fragment, _ in rates
              if not any(fragment in n for n, p in model.named_parameters() if p.requires_grad)]
    if unused:
        raise ValueError(f"module_learning_rates names {unused}, which match no trainable parameter")
    return [{"params": params, "lr": lr, "base_lr": lr} for lr, params in groups.items()]


def _lora_backbone(base_path: str, cfg: SFTConfig, device: str, dtype: torch.dtype) -> tuple[Any, Any, list]:
    """The base MLLM with LoRA adapters (and gradient checkpointing if asked); returns the model,
    its processor and the trainable parameters."""
    model, processor = load_backbone(base_path, device=device, dtype=dtype)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = _lora_model(model, cfg)
    return model, processor, [p for p in model.parameters() if p.requires_grad]


def tune_backbone(
    base_path: str,
    examples_train: Sequence[SFTExample],
    examples_heldout: Sequence[SFTExample],
    cfg: SFTConfig,
    work_dir: Path,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SFTResult:
    """LoRA-tune ``base_path`` on the label-token objective; resumes from ``work_dir`` checkpoints.
    ``log`` gets about 20 lines a run (step, loss); ``progress(done, total)`` every optimizer step.

    A rerun with the same trajectory settings continues from the newest checkpoint (a finished
    run only re-evaluates). A checkpoint from different settings is discarded, not resumed.
    """
    if not examples_train:
        raise ValueError("no training examples")
    say = log or (lambda message: None)
    work_dir = Path(work_dir)
    ckpt_root = work_dir / "checkpoints"
    dtype = torch.bfloat16 if (cfg.bf16 and str(device).startswith("cuda")) else default_dtype("cpu")
    model, processor, trainable = _lora_backbone(base_path, cfg, device, dtype)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    per_step = cfg.batch_size * cfg.grad_accum
    total_steps = cfg.max_steps if cfg.max_steps is not None else math.ceil(cfg.epochs * len(examples_train) / per_step)
    # The examples are part of the key: a checkpoint of a run on other examples (new negatives,
    # same count) must not be resumed -- it once was, and a finished run then re-evaluated only.
    run_key = {**cfg.run_key(), "n_train": len(examples_train), "examples": examples_fingerprint(examples_train),
               "base": backbone_fingerprint(base_path)}

    # Training draws (dropout) come from a forked RNG: seeded by cfg.seed for a fresh run, the
    # saved state for a resumed one, and the caller's global RNG is left untouched either way.
    rng_devices = [torch.device(device).index or 0] if str(device).startswith("cuda") else []
    # The average starts at zero and is debiased at the end (a resume overwrites it with the saved
    # one); started at the initial weights instead, a 900-step run at decay 0.998 would keep 17% of
    # them. Float32: a bf16 average would round away increments of (1 - decay) of a weight.
    ema = [torch.zeros_like(p, dtype=torch.float32) for p in trainable] if cfg.ema_decay else None
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(cfg.seed)
        start_step, loss_curve = _resume(ckpt_root, model, optimizer, run_key, device, say, ema)
        if start_step > total_steps:
            raise ValueError(f"checkpoint is at step {start_step}, beyond max_steps={total_steps}")
        _train_steps(
            model,
            processor,
            optimizer,
            examples_train,
            cfg,
            steps=range(start_step, total_steps),
            loss_curve=loss_curve,
            ckpt_root=ckpt_root,
            run_key=run_key,
            device=device,
            trainable=trainable,
            say=say,
            progress=progress,
            ema=ema,
        )
    if ema is not None and total_steps > 0:  # the model evaluated, returned and saved is the average
        weight = 1.0 - cfg.ema_decay ** total_steps
        with torch.no_grad():
            for param, average in zip(trainable, ema):
                param.copy_(average / weight)
    model.eval()

    p_high = (label_probabilities(model, processor, examples_heldout, cfg.eval_batch_size, device)
              if examples_heldout else torch.empty(0))
    accuracy, counts = heldout_accuracy(model, processor, examples_heldout, p_high=p_high)
    order = severity_order(examples_heldout, p_high.tolist())
    if accuracy:
        say("held-out accuracy " + ", ".join(f"{a}={v:.3f}" for a, v in accuracy.items())
            + "".join(f"; severity order {a}={v:.3f}" for a, v in order.items()))
    return SFTResult(
        model=model,
        processor=processor,
        loss_curve=loss_curve,
        heldout_accuracy=accuracy,
        heldout_counts=counts,
        heldout_severity_order=order,
        steps=total_steps,
        resumed_from_step=start_step,
        trainable_params=sum(p.numel() for p in trainable),
        total_params=sum(p.numel() for p in model.parameters()),
    )


# --------------------------------------------------------------------------------------------
# Saving / loading the tuned backbone
# --------------------------------------------------------------------------------------------


def _trained_base_fingerprint(model: Any, base_ref: str) -> str | None:
    """Fingerprint of the base the adapter was trained on.

    Prefer the path peft recorded at training time (``base_ref`` may be symbolic, e.g. a profile
    name resolved elsewhere); ``None`` when neither resolves here (e.g. offline, uncached hub id).
    """
    config = getattr(model, "peft_config", {}).get("default")
    candidates = [getattr(config, "base_model_name_or_path", None), base_ref]
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return backbone_fingerprint(candidate)
    for candidate in candidates:
        if candidate:
            try:
                return backbone_fingerprint(candidate)
            except Exception:  # hub lookups fail in many ways offline; try the next reference
                continue
    return None


def save_tuned_backbone(model: Any, processor: Any, out_dir: Path, base_ref: str) -> Path:
    """Write the peft adapter, the processor and ``eliq_backbone.json`` (base reference, the
    fingerprint of the base actually trained on, instructions) atomically to ``out_dir``.

    ``base_ref`` is what :func:`load_tuned_backbone` loads by default: a hub id or path, or a
    symbolic reference when loads always pass ``base_override``.
    """
    with staged_dir(out_dir) as staging:
        model.save_pretrained(str(staging))
        processor.save_pretrained(str(staging))
        meta = {
            "format": TUNED_FORMAT,
            "base_ref": base_ref,
            "base_fingerprint": _trained_base_fingerprint(model, base_ref),
            "label_token_ids": label_token_ids(processor.tokenizer),
            # The instructions shape every embedding, so they belong to the fingerprint.
            "instructions": INSTRUCTIONS,
        }
        (staging / TUNED_META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if not (staging / "adapter_config.json").is_file():
            raise TypeError("model.save_pretrained did not write a peft adapter; pass the tuned PeftModel")
    return out_dir


def read_tuned_meta(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / TUNED_META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a tuned ELIQ backbone (no {TUNED_META_FILE})")
    return json.loads(path.read_text())


def load_tuned_backbone(
    adapter_dir: Path,
    base_override: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    merge: bool = False,
) -> tuple[Any, Any]:
    """Load the base through :func:`load_backbone` and apply the adapter -> (model, processor).

    ``base_override`` points at the same base elsewhere (e.g. a local mirror of a hub id).
    ``merge`` folds LoRA into the weights: faster inference, float-rounding-level differences.
    """
    from peft import PeftModel

    meta = read_tuned_meta(adapter_dir)
    base_ref = base_override or meta["base_ref"]
    model, _ = load_backbone(base_ref, device=device, dtype=dtype)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    model.to(device)
    model.eval()
    if merge:
        model = model.merge_and_unload()
        model.eval()
    processor = load_processor(str(adapter_dir))
    return model, processor


def adapter_fingerprint(adapter_dir: Path, base_override: str | None = None) -> str:
    """Cache key for embeddings of a tuned backbone: adapter, processor, instructions, base.

    The base's fingerprint is already inside ``eliq_backbone.json``; an override mixes in its own.
    """
    key = directory_fingerprint(Path(adapter_dir), exclude=("_COMPLETE",))  # artifact-store marker, new per upload
    if base_override is not None:
        key = hashlib.sha256(f"{key}\n{backbone_fingerprint(base_override)}".encode()).hexdigest()
    return "adapter-sha256:" + key
