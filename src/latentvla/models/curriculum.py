"""The curriculum as data: which CoT components are explicit / latent, loss weights and learning-rate multipliers
per stage. The model reads only the `StageSpec` it is handed; `train/curriculum.py` maps steps to stages.

These types live in `models/` (not `train/`) because the model, the policy and the config all read them: imports
point one way, data/envs -> models -> train -> eval/serve/scripts.

LaRA-VLA (§3.3, Fig. 8, Table 5) trains one model through
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
        name="III",
        latent_components=comps,
        explicit_components=(),
        visual_latents=visual,
        discrete_actions=False,
        train_head=True,
        w_head=1.0,
    )
    return [(stage_i, 0.2), *[(s, 0.1) for s in stage_ii], (stage_iii, 0.5)]


def _stage(name: str, **kw) -> StageSpec:
    """A stage with no reasoning tokens and no action output unless `kw` says otherwise."""
    base = dict(
        latent_components=(),
        explicit_components=(),
        visual_latents=False,
        discrete_actions=False,
        train_head=False,
    )
    return StageSpec(name=name, **{**base, **kw})


def _schedule_table() -> dict[str, list[tuple[StageSpec, float]]]:
    """LaRA Table 4 as schedules that differ from `lara` in ONE factor each: all use the flow expert, the same
    total steps and the same stage-III share (50 %); only `lara` has visual latents."""
    comps = COT_COMPONENTS
    head = dict(train_head=True, w_head=1.0)
    tokens = dict(discrete_actions=True, w_act=1.0)
    return {
        # row 4, the full curriculum: latent text + latent vision (the paper's best)
        "lara": _lara_stages(visual=True),
        # row 3, latent text only: `lara` without visual latents
        "lara-latent-text": _lara_stages(visual=False),
        # row 2, explicit text: the CoT is never compressed. Stage I for the 50 % that `lara` spends in I + II,
        # then the expert learns on the explicit text (teacher-forced; like `lara`'s stage III only the expert's
        # loss counts, and stage mixing rehearses stage I). At inference it writes its CoT, then acts.
        "lara-explicit": [
            (_stage("I", explicit_components=comps, w_cot=1.0, **tokens), 0.5),
            (_stage("III", explicit_components=comps, **head), 0.5),
        ],
        # row 1, no reasoning: the same 50 % of backbone training on action tokens alone, then the expert
        "no-cot": [(_stage("I", **tokens), 0.5), (_stage("III", **head), 0.5)],
        # ECoT-style token-action model (Zawalski et al.): explicit CoT text, then discrete action tokens, no
        # action expert; the explicit-CoT latency baseline (one stage)
        "ecot": [(_stage("I", explicit_components=comps, w_cot=1.0, **tokens), 1.0)],
        # RD-VLA: backbone with query tokens + recurrent head, L1 from step 0
        "rd": [(_stage("RD", **head), 1.0)],
        # plain behaviour cloning (models/bc.py): L1 on the chunk from step 0, no backbone sequence at all
        "bc": [(_stage("BC", **head), 1.0)],
    }


SCHEDULES = _schedule_table()


@dataclass(frozen=True)
class CurriculumConfig:
    """A named schedule, optionally custom stage fractions (same length as the schedule), and stage mixing.

    `mix_prob` is Coconut's `uniform_prob` (its code: 0 in its main runs, 0.3 "to mix other stages"): with this
    probability a training step uses an earlier stage, drawn uniformly, instead of the scheduled one, so explicit
    CoT (stage I) and discrete actions keep being rehearsed after their stage ends. Without it a `lara` model's
    explicit decoding drifts after stage III (README). Coconut mixes per sample; we mix per step (one layout per
    batch) and draw from (seed, step) only, so every DDP rank trains the same stage.
    """

    schedule: str = "lara"
    fractions: tuple[float, ...] | None = None
    mix_prob: float = 0.3

    def __post_init__(self) -> None:
        stages = lookup(SCHEDULES, self.schedule, "curriculum schedule")
        if not 0.0 <= self.mix_prob <= 1.0:
            raise ValueError(f"mix_prob must be in [0, 1], got {self.mix_prob}")
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
