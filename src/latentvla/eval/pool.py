"""Simulator workers step environments; ONE policy, in the calling process, batches their observations.

    workers = 1   the environment runs in this process next to the policy (no subprocess)
    workers = N   N spawned env processes; each runs whole episodes and, when its action queue runs dry, sends
                  its observation here; the policy answers all pending observations with one batched call

The policy (a 4 B VLM on a GPU, say) is loaded once, not once per worker. Rounds are lock-step: each round takes
exactly one message from every busy worker, in worker order (an observation, or a finished episode), then
answers the observations in batches of at most `max_batch`. Which observations share a batch is therefore a
function of the jobs alone, never of timing, so a run is reproducible bit for bit. Every episode owns a
generator seeded from (seed, task, episode) and a batched call draws each row with its row's generator
(models/row_rng.py), so the random draws are those of an unbatched call; the only difference a batch makes is
float rounding in batched matmuls (~1e-7 on CPU). `max_batch=1` answers one observation at a time: then the
actions are bitwise those of the one-process path.

The env processes are `envs.workers.WorkerPool`'s (shared with data collection): they ignore SIGINT / SIGTERM
(a terminal's Ctrl-C and SLURM's scancel signal the whole process group); the parent decides, kills them at once
and keeps what finished (eval/episodes_log.py).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from latentvla.constants import OBS_IMAGES
from latentvla.envs.workers import WorkerPool


@dataclass
class Chunk:
    """The actions of one inference call that run before the next (the execution horizon applied)."""

    actions: np.ndarray  # (n, A)
    iterations: int | None
    latency_ms: float


def infer_chunks(policy: Any, settings: Any, observations: list[dict], generators: list) -> list[Chunk]:
    """One batched policy call; row i drawn with `generators[i]`. Latency is the call's own time."""
    from latentvla.models.halting import parse_halting

    start = time.perf_counter()
    res = policy.infer_batch(
        observations,
        mode=settings.mode,
        iterations=settings.iterations,
        halting=parse_halting(settings.halting),
        generator=list(generators),
    )
    ms = (time.perf_counter() - start) * 1e3  # infer_batch ends with a device -> host copy: synchronised
    return [Chunk(r["actions"][: policy.execution_length(r["iterations"])], r["iterations"], ms) for r in res]


class QueueAgent:
    """`runtime.Agent`: one action per step from its queue; `fetch(obs)` gives the next chunk when it runs dry."""

    def __init__(self, fetch: Callable[[dict], Chunk]) -> None:
        self.fetch = fetch
        self.queue: deque[np.ndarray] = deque()

    def reset(self) -> None:
        self.queue.clear()

    def get_action(self, observation: dict) -> dict:
        if self.queue:
            return {"action": self.queue.popleft(), "chunk": False, "iterations": None}
        c = self.fetch(observation)
        self.queue.extend(c.actions)
        return {
            "action": self.queue.popleft(),
            "chunk": True,
            "iterations": c.iterations,
            "latency_ms": c.latency_ms,
        }


def run_sim_episode(settings: Any, envs: dict, cameras: tuple, image_size: int, job: tuple, agent: Any) -> dict:
    """Roll out one (task, episode, video_stem) job; envs are built lazily, one per task (LIBERO's hold ~1 GB)."""
    from latentvla.envs.registry import get_simulator
    from latentvla.eval.episode import MAX_ENVS_PER_WORKER, SimEpisode, write_video
    from latentvla.eval.runtime import ActionRecorder, FrameRecorder, run_episode

    task, episode, video_stem = job
    sim, max_steps = get_simulator(settings.env), settings.steps_for(task)
    if task not in envs:
        while len(envs) >= MAX_ENVS_PER_WORKER:
            envs.pop(next(iter(envs))).close()
        limit = max_steps + settings.sim_protocol.warmup_steps  # the warm-up steps run in the env too
        envs[task] = sim.make(task, cameras=tuple(cameras), image_size=image_size, max_steps=limit)
    env = SimEpisode(envs[task], episode, settings.seed, settings.sim_protocol, settings.gripper_mode)
    actions = ActionRecorder()
    frames = FrameRecorder(f"{OBS_IMAGES}.{cameras[0]}") if video_stem else None
    result = run_episode(env, agent, max_steps, [actions] + ([frames] if frames else []))
    videos = write_video(frames.frames, video_stem) if frames else []
    return {
        "task": task,
        "episode": episode,
        **asdict(result),
        "actions": np.stack(actions.actions),
        "video_paths": videos,
    }


def _seed_for(settings: Any, job: tuple) -> int:
    from latentvla.envs.registry import get_simulator
    from latentvla.eval.episode import episode_torch_seed

    return episode_torch_seed(settings.seed, get_simulator(settings.env).task_id(job[0]), job[1])


# ---------------------------------------------------------------------------------------- one process


def run_local(policy: Any, settings: Any, jobs: list[tuple], on_done: Callable[[dict], None]) -> None:
    import torch

    c = policy.config
    gen = torch.Generator(device=policy.device)
    agent = QueueAgent(lambda obs: infer_chunks(policy, settings, [obs], [gen])[0])
    envs: dict = {}
    try:
        for job in jobs:
            gen.manual_seed(_seed_for(settings, job))
            on_done(run_sim_episode(settings, envs, tuple(c.cameras), c.image_size, job, agent))
    finally:
        for env in envs.values():
            env.close()


# ------------------------------------------------------------------------------------------ env workers


class SimEpisodeRunner:
    """An env worker's runner (envs/workers.py): rolls out the jobs it is sent and asks the parent for each
    chunk."""

    def __init__(self, ask: Callable[[Any], Any], settings: Any, cameras: tuple, image_size: int) -> None:
        self.settings, self.cameras, self.image_size = settings, cameras, image_size
        # dict(): a LIBERO observation renders its images only when read (envs/lazy.py), here, at a query step;
        # the lazy mapping itself holds the renderer and does not pickle
        self.agent, self.envs = QueueAgent(lambda obs: Chunk(*ask(dict(obs)))), {}

    def __call__(self, job: tuple) -> dict:
        return run_sim_episode(self.settings, self.envs, self.cameras, self.image_size, job, self.agent)

    def close(self) -> None:
        for env in self.envs.values():
            env.close()


def run_pool(
    policy: Any,
    settings: Any,
    jobs: list[tuple],
    workers: int,
    on_done: Callable[[dict], None],
    max_batch: int | None = None,
) -> None:
    """`workers` env processes, this process's policy answering their observations in lock-step batches."""
    import torch

    c = policy.config
    max_batch = max_batch or workers
    generators = [torch.Generator(device=policy.device) for _ in range(workers)]

    def on_start(worker: int, job: tuple) -> None:
        generators[worker].manual_seed(_seed_for(settings, job))

    def answer(requests: list[tuple[int, dict]]) -> list[tuple]:
        replies = []
        for i in range(0, len(requests), max_batch):
            part = requests[i : i + max_batch]
            chunks = infer_chunks(policy, settings, [o for _, o in part], [generators[w] for w, _ in part])
            replies += [(ch.actions, ch.iterations, ch.latency_ms) for ch in chunks]
        return replies

    # normal end: the workers are told to stop; interrupted or failed: killed at once (they ignore TERM)
    with WorkerPool(workers, SimEpisodeRunner, (settings, tuple(c.cameras), c.image_size)) as pool:
        pool.run(jobs, on_done, answer=answer, on_start=on_start)
