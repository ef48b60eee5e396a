"""`RLConfig`: everything one `latentvla rl` run depends on; saved in every checkpoint's config.json ("train")."""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.registry import did_you_mean

ALGOS = ("ppo", "grpo")
RATIO_LEVELS = ("element", "chunk")
REWARDS = ("success", "dense")


@dataclass(frozen=True)
class RLConfig:
    """One RL run. Decisions are chunk-level: one policy call -> one (H, A) chunk -> `execute` env steps.

    Defaults follow the methods the issue names: PPO with clip 0.2, GAE gamma 0.99 / lambda 0.95 over decisions
    (pi-RL trains its critic on chunk-level decisions); GRPO as in SimpleVLA-RL (binary success reward, G rollouts
    from one initial configuration, group-normalised returns, no critic).
    """

    init: str = ""  # the starting checkpoint (resolved dir), recorded so a resume can rebuild the KL reference
    env: str = "metaworld"
    tasks: tuple[str, ...] = ()
    algo: str = "ppo"
    seed: int = 0
    updates: int = 10  # policy updates (each = one rollout + `epochs` passes); a cap when `minutes` is set
    minutes: float | None = None  # wall-clock budget of the RL phase (rollouts + updates; eval excluded)
    num_envs: int = 8  # environments stepped in lockstep (GRPO: groups x group_size)
    group_size: int = 4  # GRPO: rollouts per initial configuration
    max_steps: int | None = None  # env steps per episode (None: the simulator protocol's, per task group)
    execute: int | None = None  # env steps run per chunk (None: the whole chunk)
    reward: str = "success"  # "success": 1 at the decision that first succeeds; "dense": the simulator's reward
    dense_scale: float = 0.01
    gamma: float = 0.99
    lam: float = 0.95
    clip: float = 0.2
    ratio_level: str = "element"  # one ratio per action element (per-token PPO) or per chunk ("chunk")
    epochs: int = 2
    minibatches: int = 2
    lr: float = 1e-5  # the policy's own weights (backbone, head)
    lr_noise: float = 3e-3  # the learned log-std / Flow-Noise std
    lr_value: float = 1e-3
    vf_coef: float = 0.5
    ent_coef: float = 0.0
    kl_coef: float = 0.0  # > 0: KL anchor to the starting policy (k3 estimator on the sampled chain)
    init_std: float = 0.2  # initial exploration std in normalised action units (Gaussian) / per Euler step (flow)
    min_std: float = 0.02
    max_grad_norm: float = 1.0
    value_hidden: int = 128
    recompute_logprob: bool = True  # old log-probs recomputed with the update's code path: ratio exactly 1
    train_pool: int = 1000  # training episodes are drawn from [eval_episodes, eval_episodes + train_pool)
    eval_episodes: int = 10  # held-out (eval split) episodes per task for the in-run curve
    eval_every: int = 5  # updates between held-out evaluations (0: only before and after)
    save_every: int = 5
    keep_last: int = 2
    threads: int = 1
    ray_workers: int = 0  # > 0: the environments run on this many Ray actors (rl/ray_workers.py)
    device: str = "cpu"  # where the policy runs ("cuda": the GPU recipe; the simulators always step on CPU)

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(did_you_mean(self.algo, ALGOS, "RL algorithm"))
        if self.ratio_level not in RATIO_LEVELS:
            raise ValueError(did_you_mean(self.ratio_level, RATIO_LEVELS, "ratio level"))
        if self.reward not in REWARDS:
            raise ValueError(did_you_mean(self.reward, REWARDS, "reward"))
        if self.updates < 1 or self.num_envs < 1 or self.epochs < 1 or self.minibatches < 1:
            raise ValueError("updates, num_envs, epochs and minibatches must be >= 1")
        if self.algo == "grpo" and (self.group_size < 2 or self.num_envs % self.group_size):
            raise ValueError(
                f"GRPO needs group_size >= 2 dividing num_envs (got num_envs={self.num_envs}, "
                f"group_size={self.group_size}); e.g. --num-envs 8 --group-size 4"
            )
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if not 0 < self.min_std <= self.init_std:
            raise ValueError(f"need 0 < min_std <= init_std, got {self.min_std}, {self.init_std}")
        if self.execute is not None and self.execute < 1:
            raise ValueError(f"execute must be >= 1, got {self.execute}")
        if not (0 < self.gamma <= 1 and 0 <= self.lam <= 1 and self.clip > 0):
            raise ValueError("need 0 < gamma <= 1, 0 <= lam <= 1 and clip > 0")
        if self.eval_episodes < 1 or self.train_pool < 1:
            raise ValueError("eval_episodes and train_pool must be >= 1")
        object.__setattr__(self, "tasks", tuple(self.tasks))

    @property
    def groups(self) -> int:
        """Initial configurations per rollout (PPO: one per environment)."""
        return self.num_envs // self.group_size if self.algo == "grpo" else self.num_envs
