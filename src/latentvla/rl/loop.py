"""THE RL loop. Read `run_rl` top to bottom:

    setup    simulator + tasks; `_RLRun`: the starting checkpoint (or the run's newest intact one on --resume),
             Actor (learned log-std / Flow-Noise std, critic for PPO), AdamW, RNG streams, N environments, logger
    loop     held-out eval (eval split, deterministic policy)  ->  `_RLRun.step`: rollout (train split, one episode
             per env)  ->  advantages (GAE per trajectory | group-normalised)  ->  `update`: `epochs` x
             `minibatches` clipped steps (`_minibatch_loss`)  ->  log  ->  checkpoint
    finish   final held-out eval, checkpoint, RUN/rl_summary.json

Training and evaluation configurations are disjoint twice over: rollouts reset with split "train" and episode
indices drawn from [eval_episodes, eval_episodes + train_pool); held-out evaluation resets with split "eval"
(episodes 0..eval_episodes-1, the protocol's seed: what `latentvla eval` measures). LIBERO ignores `split` and
takes episode % 50 init states, so there the pool is capped at 50 - eval_episodes.

Exact resume (CPU, fixed seed): checkpoints fall between updates, when no episode is in flight (every reset
re-seeds its environment from (task, split, episode, seed), envs/base.py), so the state is the policy weights
(model.safetensors), the RL parameters, AdamW, the two torch generators (exploration noise / minibatch order, and
the episode draws) and the global python / numpy / torch RNG states (train/checkpoint.py). The output is an
ordinary checkpoint: `eval`, `serve` and `Policy.from_pretrained` load RUN or RUN/checkpoints/NNNNNN. SIGTERM /
SIGINT finish the current update, write a checkpoint and raise `TrainingInterrupted` (as `latentvla train`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentvla.config import config_from_dict, config_to_dict
from latentvla.envs.registry import get_simulator
from latentvla.policy import Policy, resolve_checkpoint
from latentvla.rl.actor import Actor
from latentvla.rl.advantages import gae, group_advantages
from latentvla.rl.config import RLConfig
from latentvla.rl.losses import approx_kl, clipped_surrogate, value_loss
from latentvla.rl.rollout import Rollout, Slots, collect, evaluate_heldout, index_batch
from latentvla.train import checkpoint as ckpt_lib
from latentvla.train.logging import METRICS_FILE, MetricsLogger
from latentvla.train.loop import TrainingInterrupted, _StopSignals

# what the progress bar shows during RL (a training run's loss / LR do not exist here)
RL_POSTFIX = ("heldout_success", "rollout_success", "approx_kl", "log_std")

SUMMARY = "rl_summary.json"
# May change between a run and its resumption (budget, cadence, threads): none changes the maths of an update.
RESUME_FREE = {"updates", "minutes", "eval_every", "save_every", "keep_last", "threads", "device", "ray_workers"}


def _check_fits(policy: Policy, sim: Any) -> None:
    c = policy.config
    if c.state_dim != sim.state_dim or c.action_dim != sim.action_dim:
        raise ValueError(
            f"the checkpoint acts with state {c.state_dim} / action {c.action_dim} dims, {sim.name} has "
            f"{sim.state_dim} / {sim.action_dim}: pass a checkpoint trained on {sim.name} data"
        )
    sim.validate(cameras=tuple(c.cameras), image_size=c.image_size)


def chunk_execution(policy: Policy, cfg: RLConfig, sim: Any) -> int:
    """Env steps per chunk: --execute, else what `latentvla eval` runs (the protocol's whole chunk, or the
    checkpoint's fixed execution horizon; adaptive rules run the whole chunk)."""
    H = policy.config.horizon
    if cfg.execute is not None:
        return min(cfg.execute, H)
    if sim.protocol().execute_full_chunk:
        return H
    spec = policy.config.execution
    return min(int(spec.split(":")[1]), H) if spec.startswith("fixed:") else H


def _prepare(run_dir: Path, resume: bool, overwrite: bool) -> None:
    exists = (run_dir / ckpt_lib.CHECKPOINTS).exists() or (run_dir / METRICS_FILE).exists()
    if exists and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{run_dir} already holds an RL run; pass --resume to continue it or --overwrite"
            )
        shutil.rmtree(run_dir)
    if resume and not exists:
        raise FileNotFoundError(f"--resume: {run_dir} holds no RL run to continue (drop --resume to start one)")


def advantages(ro: Rollout, cfg: RLConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-decision advantages, PPO returns or None). PPO: GAE along each environment's trajectory, normalised
    over the batch; GRPO: the episode's group-normalised return on each of its decisions."""
    if cfg.algo == "grpo":
        groups = torch.arange(len(ro.returns)) // cfg.group_size
        ep_adv = group_advantages(torch.as_tensor(ro.returns, dtype=torch.float32), groups)
        return ep_adv[ro.slot], None
    adv, ret = torch.zeros_like(ro.reward), torch.zeros_like(ro.reward)
    for i in range(len(ro.returns)):
        idx = torch.nonzero(ro.slot == i).squeeze(1)  # decisions are stored in time order
        boot = 0.0 if ro.terminated[i] else float(ro.bootstrap[i])
        a, r = gae(ro.reward[idx], ro.value[idx].float().cpu(), boot, cfg.gamma, cfg.lam)
        adv[idx], ret[idx] = a, r
    if len(adv) > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv, ret


def update(
    actor: Actor,
    ro: Rollout,
    adv: torch.Tensor,
    ret: torch.Tensor | None,
    opt: torch.optim.Optimizer,
    cfg: RLConfig,
    gen: torch.Generator,
    ref: Actor | None = None,
) -> dict[str, float]:
    """`epochs` passes of `minibatches` clipped-surrogate steps over one rollout; returns the mean metrics.

    With `recompute_logprob` the old log-probabilities are recomputed before the first step with exactly the
    minibatches and code path of the first epoch (gradients enabled: the recurrent head's training path), so the
    ratio of the first minibatch is exactly 1 (the rollout's own no-grad path agrees only to float rounding)."""
    D, dev = len(ro.reward), ro.logp.device
    adv, ret = adv.to(dev), None if ret is None else ret.to(dev)
    n_mb = min(cfg.minibatches, D)
    perms = [torch.randperm(D, generator=gen) for _ in range(cfg.epochs)]
    split = lambda p: [m for m in torch.tensor_split(p, n_mb) if len(m)]  # noqa: E731
    sub = lambda m: (index_batch(ro.batch, m), {k: v[m] for k, v in ro.aux.items()})  # noqa: E731
    old = ro.logp
    if cfg.recompute_logprob:
        old = torch.empty_like(ro.logp)
        for m in split(perms[0]):
            old[m] = actor.distribution(*sub(m)).log_prob().detach()
    ref_mean = None
    if ref is not None:
        ref_mean = torch.cat([ref.means(*sub(m)) for m in torch.split(torch.arange(D), 64)])
    sums: dict[str, float] = {}
    count = 0
    params = [p for g in opt.param_groups for p in g["params"]]
    for epoch, perm in enumerate(perms):
        for j, m in enumerate(split(perm)):
            targets = (old[m], adv[m], None if ret is None else ret[m], None if ref_mean is None else ref_mean[m])
            loss, stats, ent = _minibatch_loss(actor, sub(m), *targets, cfg, first=epoch == 0 and j == 0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            opt.step()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
    out = {k: v / (1 if k == "ratio_dev_first" else count) for k, v in sums.items()}
    out["entropy"] = float(ent.detach())
    out["log_std"] = float(actor.log_std.detach().mean())
    return out


def _minibatch_loss(
    actor: Actor,
    batch: tuple[dict, dict],
    old: torch.Tensor,
    adv: torch.Tensor,
    ret: torch.Tensor | None,
    ref_mean: torch.Tensor | None,
    cfg: RLConfig,
    first: bool,
) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
    """(loss, its logged terms, the policy entropy) of one minibatch: clipped surrogate (+ value loss for PPO,
    - entropy bonus, + KL to the starting policy). A non-finite loss stops the run."""
    dist = actor.distribution(*batch)
    logp = dist.log_prob()
    pg, ratio, clipfrac = clipped_surrogate(logp, old, adv, cfg.clip, cfg.ratio_level)
    loss = pg
    stats = {"loss_pg": pg.item(), "clipfrac": clipfrac.item(), "approx_kl": approx_kl(logp, old).item()}
    if first:
        stats["ratio_dev_first"] = (ratio - 1.0).abs().max().item()
    if ret is not None:
        vl = value_loss(dist.value, ret)
        loss = loss + cfg.vf_coef * vl
        stats["loss_value"] = vl.item()
    ent = (dist.log_std + 0.5 * (1.0 + math.log(2 * math.pi))).mean()
    if cfg.ent_coef:
        loss = loss - cfg.ent_coef * ent
    if ref_mean is not None:  # KL(pi || pi_start) of two Gaussians with this sigma, per element (exact)
        var = torch.exp(2 * dist.log_std.detach())
        kl = ((dist.mean - ref_mean).pow(2) / (2 * var)).mean()
        loss = loss + cfg.kl_coef * kl
        stats["kl_ref"] = kl.item()
    if not torch.isfinite(loss):
        raise FloatingPointError("the RL loss became non-finite; lower --lr or raise min_std")
    return loss, stats, ent


def _episodes(cfg: RLConfig, gen: torch.Generator, pool: int) -> list[int]:
    """One training episode index per environment; the G environments of a GRPO group share theirs."""
    draws = (cfg.eval_episodes + torch.randint(pool, (cfg.groups,), generator=gen)).tolist()
    G = cfg.group_size if cfg.algo == "grpo" else 1
    return [draws[i // G] for i in range(cfg.num_envs)]


def build_optimizer(actor: Actor, cfg: RLConfig) -> torch.optim.Optimizer:
    lrs = {"policy": cfg.lr, "noise": cfg.lr_noise, "value": cfg.lr_value}
    groups = [{"params": ps, "lr": lrs[name], "name": name} for name, ps in actor.param_groups().items() if ps]
    return torch.optim.AdamW(groups, weight_decay=0.0)


@dataclass
class _Progress:
    """What the loop advances and a checkpoint keeps: updates done, environment steps, seconds, held-out curve."""

    update: int = 0
    env_steps: int = 0
    elapsed: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def more(self, cfg: RLConfig) -> bool:
        """Another update fits the run (its count and its minutes)."""
        return self.update < cfg.updates and (cfg.minutes is None or self.elapsed < cfg.minutes * 60)


def _starting_point(
    run_dir: Path, cfg: RLConfig, init: Path, resume: bool
) -> tuple[Policy, dict[str, Any] | None]:
    """The policy to start from and, on --resume, the run's newest intact checkpoint's training state (its config
    checked against `cfg`: only the budget and cadence may change)."""
    if not resume:
        return Policy.from_pretrained(init, device=cfg.device), None
    last = ckpt_lib.latest_intact_checkpoint(run_dir)
    if last is None:
        raise FileNotFoundError(f"--resume: no intact checkpoint under {run_dir / ckpt_lib.CHECKPOINTS}")
    stored = config_from_dict(RLConfig, ckpt_lib.load_train_config_dict(last))
    for f in dataclasses.fields(RLConfig):
        if f.name not in RESUME_FREE and getattr(stored, f.name) != getattr(cfg, f.name):
            raise ValueError(
                f"--resume: {f.name} was {getattr(stored, f.name)!r} in {run_dir}, now {getattr(cfg, f.name)!r}; "
                "resume with the same settings (only the budget and cadence may change)"
            )
    state = ckpt_lib.load_training_state(last)
    return Policy.from_pretrained(last, device=cfg.device), state


class _RLRun:
    """One RL run's objects, built in a fixed order (exact resume depends on the RNG draws of each step), with the
    three things the loop does: an update, a held-out evaluation, a checkpoint."""

    def __init__(
        self, run_dir: Path, cfg: RLConfig, sim: Any, tasks: list[str], init: Path, resume: bool, progress: bool
    ) -> None:
        self.run_dir, self.cfg, self.tasks = run_dir, cfg, tasks
        self.policy, state = _starting_point(run_dir, cfg, init, resume)
        _check_fits(self.policy, sim)
        execute = chunk_execution(self.policy, cfg, sim)
        torch.manual_seed(cfg.seed)  # the critic's init
        # eval mode throughout (rollouts and updates): dropout or bc's proprio noise would make the re-scored
        # log-probability of a decision differ from the one it was sampled with
        self.actor = Actor(self.policy, cfg, execute=execute).to(cfg.device).eval()
        self.ref = None
        if cfg.kl_coef > 0:
            self.ref = Actor(Policy.from_pretrained(init, device=cfg.device), cfg, execute=execute, critic=False)
            self.ref.requires_grad_(False)
        self.opt = build_optimizer(self.actor, cfg)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # exploration noise, minibatch order
        self.ep_gen = torch.Generator().manual_seed(cfg.seed + 1)  # training episode draws
        self.prog = _Progress() if state is None else self._restore(state)
        self.pool = min(cfg.train_pool, 50 - cfg.eval_episodes) if sim.name == "libero" else cfg.train_pool
        if self.pool < 1:
            raise ValueError("libero has 50 init states per task: keep --eval-episodes below 50")
        self.slots = Slots.build(sim, tasks, cfg, self.policy, execute, ray_workers=cfg.ray_workers)
        self.eval_seed = sim.protocol().seed
        self.logger = MetricsLogger(
            run_dir,
            cfg.updates,
            start_step=self.prog.update,
            show_progress=progress,
            desc="rl",
            postfix_keys=RL_POSTFIX,
        )
        self.env_tb = _env_step_writer(run_dir, purge=self.prog.env_steps if resume else None)

    def _restore(self, state: dict[str, Any]) -> _Progress:
        self.actor.log_std.data.copy_(state["log_std"].to(self.cfg.device))
        if self.actor.value_head is not None:
            self.actor.value_head.load_state_dict(state["value_head"])
        self.opt.load_state_dict(state["optimizer"])
        self.gen.set_state(state["generator"])
        self.ep_gen.set_state(state["episode_generator"])
        ckpt_lib.set_rng_state(state["rng"][0])
        return _Progress(
            int(state["update"]), int(state["env_steps"]), float(state["elapsed_s"]), json.loads(state["heldout"])
        )

    def step(self) -> dict[str, float]:
        """One update: rollout (train split) -> advantages -> clipped updates; its metrics."""
        cfg, prog = self.cfg, self.prog
        t0 = time.perf_counter()
        ro = collect(
            self.actor,
            self.slots,
            _episodes(cfg, self.ep_gen, self.pool),
            self.gen,
            cfg.seed,
            cfg.dense_scale if cfg.reward == "dense" else None,
        )
        t1 = time.perf_counter()
        adv, ret = advantages(ro, cfg)
        metrics = update(self.actor, ro, adv, ret, self.opt, cfg, self.gen, self.ref)
        t2 = time.perf_counter()
        prog.elapsed += t2 - t0
        prog.update += 1
        prog.env_steps += ro.env_steps
        metrics.update(
            rollout_s=t1 - t0,
            update_s=t2 - t1,
            elapsed_s=prog.elapsed,
            env_steps=float(prog.env_steps),
            rollout_success=100.0 * float(np.mean(ro.success)),
            return_mean=float(np.mean(ro.returns)),
            decisions=float(len(ro.reward)),
        )
        return metrics

    def heldout(self) -> dict[str, Any]:
        """Held-out evaluation (eval split, deterministic policy), appended to the curve."""
        prog = self.prog
        res = evaluate_heldout(self.actor, self.slots, self.tasks, self.cfg.eval_episodes, self.eval_seed)
        row = {
            "update": prog.update,
            "env_steps": prog.env_steps,
            "success": res["success"],
            "per_task": res["per_task"],
        }
        prog.history.append(row)
        if self.env_tb is not None:
            self.env_tb.add_scalar("heldout_success_vs_env_steps", res["success"], prog.env_steps)
        return row

    def save(self) -> None:
        cfg, prog, actor = self.cfg, self.prog, self.actor
        ts = {
            "update": prog.update,
            "env_steps": prog.env_steps,
            "elapsed_s": prog.elapsed,
            "log_std": actor.log_std.detach().cpu(),
            "optimizer": self.opt.state_dict(),
            "generator": self.gen.get_state(),
            "episode_generator": self.ep_gen.get_state(),
            "heldout": json.dumps(prog.history),
        }
        if actor.value_head is not None:
            ts["value_head"] = actor.value_head.state_dict()
        extra = {
            "rl": {
                "init": cfg.init,
                "algo": cfg.algo,
                "env": cfg.env,
                "tasks": list(self.tasks),
                "update": prog.update,
            }
        }
        ckpt_lib.save_checkpoint(
            self.run_dir, prog.update, self.policy, cfg, ts, keep_last=cfg.keep_last, extra_config=extra
        )

    def close(self) -> None:
        self.logger.close()
        if self.env_tb is not None:
            self.env_tb.close()
        self.slots.close()


def run_rl(
    run_dir: str | Path, cfg: RLConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run (or continue) RL into `run_dir`; returns the summary written to RUN/rl_summary.json."""
    run_dir = Path(run_dir)
    torch.set_num_threads(cfg.threads)
    sim = get_simulator(cfg.env)
    tasks = sim.resolve_tasks(list(cfg.tasks))
    init = resolve_checkpoint(cfg.init)
    cfg = dataclasses.replace(cfg, init=str(init), tasks=tuple(tasks))
    sim.require()
    _prepare(run_dir, resume, overwrite)
    run = _RLRun(run_dir, cfg, sim, tasks, init, resume, progress)
    prog = run.prog
    # SIGTERM / SIGINT (train/loop.py's handler): finish the current update, write a checkpoint, stop
    with _StopSignals() as stop:
        try:
            if prog.update == 0:
                row = run.heldout()
                run.logger.log(0, "rl", {"heldout_success": row["success"], "env_steps": 0.0}, cfg.num_envs)
            while prog.more(cfg):
                metrics = run.step()
                last = not prog.more(cfg)
                if last or (cfg.eval_every and prog.update % cfg.eval_every == 0):
                    metrics["heldout_success"] = run.heldout()["success"]
                run.logger.log(prog.update, "rl", metrics, cfg.num_envs)
                run.logger.advance(1)
                if last or prog.update % cfg.save_every == 0 or stop.signum is not None:
                    run.save()
                if stop.signum is not None:
                    raise TrainingInterrupted(
                        f"{signal.Signals(stop.signum).name}: stopped after update {prog.update}, wrote "
                        f"{ckpt_lib.checkpoint_dir(run_dir, prog.update)}; continue with --resume",
                        stop.signum,
                    )
            if not prog.history or prog.history[-1]["update"] != prog.update:  # budget ended between evaluations
                run.heldout()
                run.save()
        finally:
            run.close()
    return _write_summary(run, cfg, tasks)


def _write_summary(run: _RLRun, cfg: RLConfig, tasks: list[str]) -> dict[str, Any]:
    prog, history = run.prog, run.prog.history
    summary = {
        "model": run.policy.config.preset,
        "algorithm": cfg.algo,
        "env": cfg.env,
        "tasks": list(tasks),
        "init": cfg.init,
        "updates": prog.update,
        "env_steps": prog.env_steps,
        "minutes": prog.elapsed / 60.0,
        "before": history[0]["per_task"],
        "after": history[-1]["per_task"],
        "before_success": history[0]["success"],
        "after_success": history[-1]["success"],
        "heldout_episodes_per_task": cfg.eval_episodes,
        "curve": history,
        "config": config_to_dict(cfg),
    }
    (run.run_dir / SUMMARY).write_text(json.dumps(summary, indent=2))
    return summary


def _env_step_writer(run_dir: Path, purge: int | None):
    """A TensorBoard writer whose x axis is environment steps (the held-out success curve)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard" / "env_steps"), purge_step=purge or None)
