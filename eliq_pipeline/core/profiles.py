"""Model profiles: `tiny` (toy-sized real architectures, CPU, offline) and `production` (the paper's models).

Both profiles run the same code; a profile only changes sizes, model references and budgets.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

TINY_BACKBONE = "tiny:qwen3-vl"


@dataclass(frozen=True)
class Profile:
    name: str
    backbone: str  # hub id, local path, or "tiny:qwen3-vl" (built from a config in code)
    n_prompts: int
    prompt_seed: int
    image_height: int
    image_width: int
    generation_steps: int
    heldout_fraction: float
    tuples_per_positive: int  # one tuple per technical-negative method, cycling aesthetic negatives
    sft: dict[str, Any] = field(default_factory=dict)
    scorer: dict[str, Any] = field(default_factory=dict)
    embed_batch_size: int = 16
    generation_batch_size: int = 1
    sft_preset: str = "default"  # "tiny": settings that make a random toy backbone learn on CPU
    negative_families: tuple[str, ...] = ("conventional", "ai_specific")  # Table 4 ablation switch
    supervision_aspects: tuple[str, ...] = ("tec", "aes", "ali")  # Table 5: SFT labels and ranking terms used
    tuple_exclude_methods: tuple[str, ...] = ()  # negatives built and checked but not put in tuples
    premature_fraction: float = 0.34  # premature decoding stops after this share of the steps
    # "bank": the generated prompt bank (or the user's prompt file); "import": the distinct prompts
    # of the era's imported positives (real exports whose prompts are not in any bank).
    prompt_source: str = "bank"
    technical_methods: tuple[str, ...] = ("jpeg_recompress", "gaussian_noise")  # registered tec degradations
    # Registered aes degradations; () means the era's editors (the offline editor, plus the era's
    # editing model if it names one). Given explicitly, they replace the offline editor.
    aesthetic_methods: tuple[str, ...] = ()
    severity_levels: tuple[int | None, ...] = (None,)  # graded severities per degradation (None: ungraded)
    negatives_per_aspect: int = 0  # conventional (method, level) negatives made per positive and aspect; 0: all
    # z_ali(I-, p) for visual negatives (critic/data.tuple_requests); False: they share I+'s z_ali
    embed_negative_alignment: bool = True

    # Settings added after profiles were first fingerprinted: left out of the fingerprint while
    # they hold their default, so adding a setting does not mark every existing era out of date.
    _LATER_FIELDS = ("prompt_source", "technical_methods", "aesthetic_methods", "severity_levels",
                     "negatives_per_aspect", "embed_negative_alignment")

    def fingerprint(self) -> str:
        """Hash of every setting; a materialization built under other settings is out of date."""
        values = asdict(self)
        for name in self._LATER_FIELDS:
            if values[name] == getattr(Profile, name):
                del values[name]
        payload = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def sft_config(self, **extra: Any):
        """The profile's SFT settings; a keyword given here (an experiment's ``max_steps``) wins."""
        from eliq_pipeline.critic.instruction_tuning import SFTConfig

        values = {**self.sft, **extra}
        return SFTConfig.tiny(**values) if self.sft_preset == "tiny" else SFTConfig(**values)

    def scorer_config(self, **extra: Any):
        from eliq_pipeline.critic.head.config import ScorerConfig

        return ScorerConfig(**{"aspects": tuple(self.supervision_aspects), **self.scorer, **extra})


TINY = Profile(
    name="tiny",
    backbone=TINY_BACKBONE,
    n_prompts=32,
    prompt_seed=0,
    image_height=64,
    image_width=64,
    generation_steps=6,
    heldout_fraction=0.25,
    tuples_per_positive=2,
    sft={"max_steps": 500, "batch_size": 16},
    scorer={},
    embed_batch_size=16,
    sft_preset="tiny",
    # Random toy denoisers never produce a clean image and barely follow their prompt, so their
    # degraded-prompt, early-stopped and appearance-prompt renders are not worse than their
    # "positives" (measured by the direction check: 36% / 42% move as intended): they are built
    # and checked in tiny, but not put in tuples.
    tuple_exclude_methods=("degraded_prompt", "premature_decode", "appearance_prompt"),
)

PRODUCTION = Profile(
    name="production",
    backbone="Qwen/Qwen3-VL-8B-Instruct",
    n_prompts=400,
    prompt_seed=0,
    image_height=1024,
    image_width=1024,
    generation_steps=28,
    heldout_fraction=0.1,
    tuples_per_positive=2,
    sft={},
    scorer={},
    embed_batch_size=8,
    generation_batch_size=4,
)

# Real images on 2 CPU cores (issue 11): a Qwen3-VL-architecture backbone from random init,
# label-free, on imported real AI images (e.g. supagruen-sd15: four SD-1.5 renders per prompt) and
# their graded conventional degradations. Settings were chosen on held-out accuracy (prompt-disjoint
# split of the era's own tuples), never tuned on a benchmark; the measurements, the attempts and
# what AGIQA-3K gave after each are in ARCHITECTURE.md ("The cpu profile"), with their commands
# (bench/cpu_profile_probe.py, bench/real_image_attempt.py, make cpu-demo). On supagruen-sd15 the
# era trains in about 20 minutes on 2 cores; AGIQA-3K visual SRCC 0.360 [0.328, 0.391].
CPU = Profile(
    name="cpu",
    backbone="tiny:qwen3-vl-256",  # 64 image tokens at 256 px, widths 128 (tiny/backbone.py CPU_256_SPEC)
    n_prompts=0,  # every prompt of the import (a number caps it: a seeded subset, for smoke runs)
    prompt_seed=0,
    image_height=256,
    image_width=256,
    generation_steps=1,  # imported images: no sampler runs
    heldout_fraction=0.1,
    tuples_per_positive=2,
    sft={
        # The random vision blocks stay frozen (their high-pass patch filters already see blur and
        # blocking; trained at 3e-3 they collapse: loss pinned at ln 2; pretrained label-free by
        # masked image modelling, attempts Q-S, they lift aes but leave the SFT at ln 2 on some
        # seed); the merger, lm_head and LLM LoRA learn.
        "modules_to_save": ("visual.merger", "lm_head"),
        # lr 1e-3 (attempt U): over training seeds 0-2, held-out tec label accuracy 0.758 / 0.776 /
        # 0.774 and aes 0.573 / 0.613 / 0.598 at 2,500 steps (3e-3: 0.770 / 0.687 / 0.784 and
        # 0.538 / 0.563 / 0.563); a larger LoRA, the deepstack merger trained or a curriculum of
        # the strongest negatives first did not leave the ln 2 plateau sooner (attempt T).
        "learning_rate": 1e-3, "warmup_steps": 20, "lora_rank": 16, "lora_alpha": 32,
        "max_steps": 2500, "batch_size": 12, "checkpoint_every": 250,
        # "style of <artist>" prompts carry little alignment signal a from-scratch model can learn
        "aspect_loss_weights": (("tec", 1.0), ("aes", 1.0), ("ali", 0.25)),
        # No weight average (ema_decay 0): attempt L's 0.998 met its one-seed rule, but over seeds
        # 0-2 it lowered the held-out tec label accuracy (mean 0.722 vs 0.747; a seed that learns
        # late is averaged with its earlier, weaker weights).
    },
    # s_vis trained with other tuples' z_ali (the visual pairs share I+'s, below): left free, how
    # much s_vis leaned on z_ali depended on the head's seed (two heads in eight on one set of
    # embeddings); with it, own-vs-shuffled-z_ali Spearman 1.000 for all eight, held-out tuple
    # accuracy as before or higher (ARCHITECTURE.md, attempt N).
    scorer={"shuffle_visual_alignment": True},
    embed_batch_size=16,
    sft_preset="tiny",
    negative_families=("conventional",),  # imported positives have no sampler for AI-specific renders
    prompt_source="import",
    # Blur, resolution loss and compression: what generators get wrong. Gaussian noise (registered,
    # switchable) is off: mixed with blur it asks for "clean = medium high-frequency energy", and a
    # from-scratch critic then learns neither (held-out tec accuracy 0.50 after 200 steps vs 0.70).
    # elastic_warp (registered) as a fourth method stalls learning the same way (attempt J).
    # No severity-ranking term (SFTConfig / ScorerConfig severity_ranking_weight): attempts H and I
    # raised the held-out severity order by at most 0.04, the SFT term cost 0.08 of tec accuracy,
    # and at weight 0.25 (attempt K) the SFT collapsed to one answer.
    technical_methods=("gaussian_blur", "downscale_upscale", "jpeg_recompress"),
    aesthetic_methods=("colour_cast", "desaturate", "contrast_crush", "exposure_shift"),
    severity_levels=(1, 2),
    negatives_per_aspect=2,  # = the levels: each positive gets one method's severity series per aspect
    # A visual negative shares I+'s z_ali, so the visual ranking cannot lean on the alignment
    # token (and 2 of 10 queries per tuple are saved: the era fits in 20 minutes on 2 cores).
    embed_negative_alignment=False,
)

PROFILES = {profile.name: profile for profile in (TINY, PRODUCTION, CPU)}


def get_profile(name: str, **overrides: Any) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (ELIQ_PROFILE); known: {', '.join(PROFILES)}")
    return replace(PROFILES[name], **overrides) if overrides else PROFILES[name]
