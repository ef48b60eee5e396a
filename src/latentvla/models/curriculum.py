"""The curriculum as data: which CoT components are explicit / latent, loss weights and learning-rate multipliers
per stage (SPEC C10). The model reads only the `StageSpec` it is handed; `train/curriculum.py` maps steps to stages.

These types live in `models/` (not `train/`) because the model, the policy and the config all read them: imports
point one way, data/envs -> models -> train -> eval/serve/scripts.

LaRA-VLA (papers.md §1.6-1.7, Table 5) trains one model through
    I    explicit CoT text + visual latents (w 0.1) + discrete action tokens
    II-1 Subtask  -> 1 thinking token; BBox, Reasoning still explicit;   visual w 0.2
    II-2 +BBox    -> 2 thinking tokens; Reasoning explicit
    II-3 +Reason  -> 3 thinking tokens; no explicit text left (L_cot has annealed to zero)
    III  flow-matching action expert on the fully latent prompt (discrete action tokens dropped)
each stage starting from the previous one's weights. Every paper ablation is a named schedule here (Coconut's
lesson: ablations as names, not boolean flags), and the model only ever reads the `StageSpec` it is handed.

Stage lengths are fractions of the run's total steps (`--steps` is the total). The default split for `lara`
(I 20 %, II 3 x 10 %, III 50 %) keeps the paper's order and gives the action expert — which starts from scratch
in stage III — half of the budget (the paper's LIBERO split 5k / 3x2k / 40k is even more expert-heavy).
"""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.constants import COT_COMPONENTS
from latentvla.registry import lookup


@dataclass(frozen=True, kw_only=True)
class StageSpec:
    """Everything a training step needs to know about its curriculum stage (keyword-only: seven look-alike fields)."""

    name: str
    latent_components: tuple[str, ...]  # prefix of COT_COMPONENTS replaced by one thinking token each
    explicit_components: tuple[str, ...]  # supervised as text after <end_of_thinking>
    visual_latents: bool  # <img_next> tokens in the sequence (their loss weight is w_vis)
    discrete_actions: bool  # action tokens in the backbone, CE loss (LaRA stages I/II)
    train_head: bool  # continuous action head (flow expert or recurrent head) trained
    w_cot: float = 0.0
    w_vis: float = 0.0
    w_act: float = 0.0  # discrete action tokens
    w_head: float = 0.0  # flow matching (LaRA III) or L1 (RD-VLA)
    lr_backbone: float = 1.0  # multipliers on TrainConfig.lr_backbone / lr_head
    lr_head: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.latent_components)
        if self.latent_components != COT_COMPONENTS[:n]:
            raise ValueError(
                f"latent components must be a prefix of {COT_COMPONENTS}, got {self.latent_components}"
            )
        if set(self.latent_components) & set(self.explicit_components):
            raise ValueError("a CoT component cannot be both latent and explicit")
        if not (self.discrete_actions or self.train_head):
            raise ValueError(f"stage {self.name!r} trains no action output")

    @property
    def num_thinking(self) -> int:
        return len(self.latent_components)


def _lara_stages(visual: bool) -> list[tuple[StageSpec, float]]:
    """LaRA-VLA's five stages with the paper's loss weights (Table 5)."""
    w1, w2 = (0.1, 0.2) if visual else (0.0, 0.0)
    comps = COT_COMPONENTS
    tokens = dict(visual_latents=visual, discrete_actions=True, train_head=False, w_cot=1.0, w_act=1.0)
    stage_i = StageSpec(name="I", latent_components=(), explicit_components=comps, w_vis=w1, **tokens)
    stage_ii = [
        StageSpec(name=f"II-{k}", latent_components=comps[:k], explicit_components=comps[k:], w_vis=w2, **tokens)
        for k in (1, 2, 3)
    ]
    # Stage III: only the action expert's loss (paper: "DiT loss" 1.0); the backbone keeps training at its LR.
    stage_iii = StageSpec(
        name="III", latent_components=comps, explicit_components=(), visual_latents=visual,
        discrete_actions=False, train_head=True, w_head=1.0,
    )  # fmt: skip
    return [(stage_i, 0.2), *[(s, 0.1) for s in stage_ii], (stage_iii, 0.5)]


def _head_only(name: str) -> StageSpec:
    """No reasoning tokens: backbone + continuous action head from step 0."""
    return StageSpec(
        name=name, latent_components=(), explicit_components=(), visual_latents=False,
        discrete_actions=False, train_head=True, w_head=1.0,
    )  # fmt: skip


def _schedule_table() -> dict[str, list[tuple[StageSpec, float]]]:
    comps = COT_COMPONENTS
    return {
        # the full curriculum: latent text + latent vision (paper's best, Table 4 row 4)
        "lara": _lara_stages(visual=True),
        # latent text only (Table 4 row 3)
        "lara-latent-text": _lara_stages(visual=False),
        # explicit CoT, stage I only: the ECoT-style baseline; acts through discrete action tokens (row 2)
        "lara-explicit": [
            (
                StageSpec(
                    name="I",
                    latent_components=(),
                    explicit_components=comps,
                    visual_latents=True,
                    discrete_actions=True,
                    train_head=False,
                    w_cot=1.0,
                    w_vis=0.1,
                    w_act=1.0,
                ),
                1.0,
            )
        ],  # fmt: skip
        # no reasoning at all: backbone + flow expert from step 0 (row 1)
        "no-cot": [(_head_only("III"), 1.0)],
        # RD-VLA: backbone with query tokens + recurrent head, L1 from step 0
        "rd": [(_head_only("RD"), 1.0)],
    }


SCHEDULES = _schedule_table()


@dataclass(frozen=True)
class CurriculumConfig:
    """A named schedule and, optionally, custom stage fractions (same length as the schedule)."""

    schedule: str = "lara"
    fractions: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        stages = lookup(SCHEDULES, self.schedule, "curriculum schedule")
        if self.fractions is not None:
            if len(self.fractions) != len(stages):
                raise ValueError(
                    f"schedule {self.schedule!r} has {len(stages)} stages but {len(self.fractions)} fractions were given"
                )
            if any(f < 0 for f in self.fractions) or sum(self.fractions) <= 0:
                raise ValueError(f"stage fractions must be >= 0 and sum to > 0, got {self.fractions}")

    def stages(self) -> list[StageSpec]:
        return [s for s, _ in SCHEDULES[self.schedule]]

    def stage_fractions(self) -> list[float]:
        fr = self.fractions or tuple(f for _, f in SCHEDULES[self.schedule])
        total = sum(fr)
        return [f / total for f in fr]


def final_stage(cfg: CurriculumConfig) -> StageSpec:
    """The stage a finished run ends in: what `sample_actions` uses at inference."""
    return cfg.stages()[-1]
