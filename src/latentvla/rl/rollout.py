"""Rollouts through the simulator protocol (envs/base.py): N environments stepped in lockstep, one batched policy
call per decision.

    slots = Slots.build(sim, tasks, cfg, policy)      env i runs task tasks[(i // G) % n_tasks] (G: GRPO group)
    ro = collect(actor, slots, jobs, generator)        one episode per slot (training: exploration noise)
    ev = run_jobs(actor, slots, jobs, generator, deterministic=True)   held-out evaluation in waves

A decision is one chunk: the policy is called once for every live environment, then each runs `execute` steps of
its chunk (unnormalised, clipped to the dataset's action range, the protocol's gripper post-processing: exactly
what `latentvla eval` sends). The protocol's no-op warm-up runs after every reset. Environments are re-seeded by
every `reset(episode=i, split=s, seed=k)` (deterministic by the protocol), so no simulator state is live between
rollouts and a checkpoint between updates needs only the learner's RNGs (loop.py).

Where the environments live is the backend's business: `LocalEnvs` steps them in this process one after the other;
`RayEnvs` (rl/ray_workers.py, `--ray-workers N`, the optional [ray] extra) spreads them over N Ray actors, which
run their chunks in parallel while this process keeps the one batched policy call. Both give the same rollout.

Why not gymnasium's vector environments: the simulator protocol's reset takes (episode, split, seed) and returns
LeRobot-keyed observations with an instruction string, which `SyncVectorEnv` cannot batch; and a chunk of
`execute` steps per call (not one step) is what keeps remote workers busy between policy calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentvla.constants import ACTION
from latentvla.envs.base import postprocess_gripper
from latentvla.rl.env_group import ChunkResult, EnvGroup


class LocalEnvs:
    """All slots in this process, stepped one after the other."""

    def __init__(self, group: EnvGroup) -> None:
        self.group = group

    def reset_many(self, jobs: list[tuple[int, int, str, int]]) -> list[dict]:
        return [self.group.reset(*job) for job in jobs]

    def run_chunks(self, calls: list[tuple[int, np.ndarray, int]]) -> list[ChunkResult]:
        return [self.group.run_chunk(*call) for call in calls]

    def close(self) -> None:
        self.group.close()


@dataclass
class Slots:
    """The N environments (in this process, or on Ray workers), their tasks, and how one chunk is executed."""

    tasks: list[str]  # per slot
    max_steps: list[int]  # per slot: policy steps per episode
    execute: int
    gripper: str
    backend: Any  # LocalEnvs | rl.ray_workers.RayEnvs: reset_many(jobs), run_chunks(calls), close()

    @classmethod
    def build(cls, sim: Any, tasks: list[str], cfg: Any, policy: Any, execute: int, ray_workers: int = 0) -> Slots:
        protocol, pcfg = sim.protocol(), policy.config
        G = cfg.group_size if cfg.algo == "grpo" else 1
        if cfg.groups < len(tasks):
            raise ValueError(
                f"{cfg.groups} initial configurations per rollout cannot cover {len(tasks)} tasks; raise --num-envs "
                f"to at least {len(tasks) * G}"
            )
        slot_tasks = [tasks[(i // G) % len(tasks)] for i in range(cfg.num_envs)]
        limits = [cfg.max_steps or protocol.steps_for(sim.task_group(t)) for t in slot_tasks]
        specs = {i: (t, m) for i, (t, m) in enumerate(zip(slot_tasks, limits))}
        env_kw = dict(
            cameras=tuple(pcfg.cameras),
            image_size=pcfg.image_size,
            warmup_steps=protocol.warmup_steps,
            warmup_action=np.asarray(protocol.warmup_action, dtype=np.float32),
        )
        if ray_workers > 0:
            from latentvla.envs.registry import SIMULATORS
            from latentvla.rl.ray_workers import RayEnvs

            backend = RayEnvs(SIMULATORS[sim.name], specs, ray_workers, **env_kw)
        else:
            backend = LocalEnvs(EnvGroup(sim, specs, **env_kw))
        return cls(slot_tasks, limits, execute, protocol.gripper, backend)

    def close(self) -> None:
        self.backend.close()


@dataclass
class Rollout:
    """Decisions of one rollout, flattened in (time, slot) order, plus per-episode outcomes."""

    batch: dict  # concatenated model batches
    aux: dict[str, torch.Tensor]
    logp: torch.Tensor  # (D, E)
    value: torch.Tensor | None  # (D,)
    reward: torch.Tensor  # (D,)
    slot: torch.Tensor  # (D,) which environment
    success: np.ndarray  # (N,) per episode
    returns: np.ndarray  # (N,)
    terminated: np.ndarray  # (N,) ended by success (no bootstrap)
    bootstrap: torch.Tensor  # (N,) V(last observation) of episodes cut by the time limit, else 0
    env_steps: int
    episodes: list[tuple[str, int]] = field(default_factory=list)


def cat_batches(batches: list[dict]) -> dict:
    out: dict = {}
    for k in batches[0]:
        vals = [b[k] for b in batches]
        out[k] = torch.cat(vals, 0) if isinstance(vals[0], torch.Tensor) else [x for v in vals for x in v]
    return out


def index_batch(batch: dict, idx: torch.Tensor) -> dict:
    ii = idx.tolist()
    return {k: v[idx] if isinstance(v, torch.Tensor) else [v[i] for i in ii] for k, v in batch.items()}


def _to_env(policy: Any, actions: torch.Tensor, gripper: str) -> np.ndarray:
    """Normalised chunks -> what the simulator receives (Policy.sample's unnormalise + clip, then the gripper)."""
    acts = policy.normalizer.unnormalize(ACTION, actions.float().cpu().numpy())
    acts = np.clip(acts, policy.action_low, policy.action_high).astype(np.float32)
    return postprocess_gripper(acts, gripper)


def _lockstep(
    actor: Any,
    slots: Slots,
    jobs: list[tuple[int, str, int, str]],
    generator: torch.Generator,
    seed: int,
    deterministic: bool,
    dense: float | None,
    record: bool,
):
    """Run one episode per job (slot, task, episode, split) in lockstep: one batched policy call per decision for
    every live environment, then each runs its chunk (in parallel on Ray workers). Returns per-job outcome arrays
    and, with `record`, the decisions."""
    policy, n = actor.policy, len(jobs)
    obs = slots.backend.reset_many([(s, ep, split, seed) for s, _, ep, split in jobs])
    alive, success, ret = np.ones(n, bool), np.zeros(n, bool), np.zeros(n)
    terminated, steps = np.zeros(n, bool), np.zeros(n, int)
    decisions: list[dict] = []
    while alive.any():
        live = np.flatnonzero(alive)
        batch = policy.make_batch([obs[j] for j in live])
        step = actor.sample(batch, generator, deterministic=deterministic)
        env_actions = _to_env(policy, step.actions, slots.gripper)[:, : slots.execute]
        results = slots.backend.run_chunks(
            [(jobs[j][0], env_actions[r], int(steps[j])) for r, j in enumerate(live)]
        )
        rewards = np.zeros(len(live))
        for r, (j, res) in enumerate(zip(live, results)):
            obs[j], steps[j] = res.obs, steps[j] + res.steps
            # binary: 1 at the decision that first succeeds (the episode ends there); dense: the simulator's
            rewards[r] = float(res.success) if dense is None else dense * res.dense
            success[j] |= res.success
            if res.done:
                terminated[j], alive[j] = res.terminated, False
        ret[live] += rewards
        if record:
            decisions.append(
                {
                    "batch": batch,
                    "aux": step.aux,
                    "logp": step.logp,
                    "value": step.value,
                    "reward": torch.as_tensor(rewards, dtype=torch.float32),
                    "job": torch.as_tensor(live, dtype=torch.long),
                }
            )
    return obs, success, ret, terminated, steps, decisions


def collect(
    actor: Any, slots: Slots, episodes: list[int], generator: torch.Generator, seed: int, dense: float | None
) -> Rollout:
    """One training episode per slot (split "train", episode `episodes[i]`), sampled with exploration noise."""
    jobs = [(i, slots.tasks[i], episodes[i], "train") for i in range(len(slots.tasks))]
    obs, success, ret, terminated, steps, dec = _lockstep(actor, slots, jobs, generator, seed, False, dense, True)
    bootstrap = torch.zeros(len(jobs))
    cut = np.flatnonzero(~terminated)
    if actor.value_head is not None and len(cut):  # time-limit cuts are not terminal: bootstrap with V(s_T)
        bootstrap[torch.as_tensor(cut)] = actor.value(actor.policy.make_batch([obs[j] for j in cut])).float().cpu()
    aux = {k: torch.cat([d["aux"][k] for d in dec], 0) for k in dec[0]["aux"]}
    return Rollout(
        batch=cat_batches([d["batch"] for d in dec]),
        aux=aux,
        logp=torch.cat([d["logp"] for d in dec], 0),
        value=None if dec[0]["value"] is None else torch.cat([d["value"] for d in dec], 0),
        reward=torch.cat([d["reward"] for d in dec], 0),
        slot=torch.cat([d["job"] for d in dec], 0),
        success=success,
        returns=ret,
        terminated=terminated,
        bootstrap=bootstrap,
        env_steps=int(steps.sum()),
        episodes=[(t, e) for _, t, e, _ in jobs],
    )


def evaluate_heldout(actor: Any, slots: Slots, tasks: list[str], episodes: int, seed: int) -> dict[str, Any]:
    """Success of the deterministic policy on episodes 0..episodes-1 of the eval split of every task, run in
    waves over the slots of each task. The noise of the flow start / recurrent scratchpad comes from a generator
    seeded by `seed` alone, so every evaluation of a run sees the same draws."""
    gen = torch.Generator().manual_seed(seed)
    pending = {t: list(range(episodes)) for t in tasks}
    per_task: dict[str, list[bool]] = {t: [] for t in tasks}
    steps_total = 0
    while any(pending.values()):
        jobs = []
        for s, t in enumerate(slots.tasks):
            if pending[t]:
                jobs.append((s, t, pending[t].pop(0), "eval"))
        _, success, _, _, steps, _ = _lockstep(actor, slots, jobs, gen, seed, True, None, False)
        steps_total += int(steps.sum())
        for (_, t, _, _), ok in zip(jobs, success):
            per_task[t].append(bool(ok))
    pct = {t: 100.0 * float(np.mean(v)) for t, v in per_task.items()}
    return {"per_task": pct, "success": float(np.mean(list(pct.values()))), "env_steps": steps_total}
