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

Env workers ignore SIGINT / SIGTERM (a terminal's Ctrl-C and SLURM's scancel signal the whole process group):
the parent decides, kills them at once and keeps what finished (eval/episodes_log.py).
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from typing import Any

import numpy as np

from latentvla.constants import OBS_IMAGES


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
        observations, mode=settings.mode, iterations=settings.iterations, halting=parse_halting(settings.halting),
        generator=list(generators),
    )  # fmt: skip
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
        return {"action": self.queue.popleft(), "chunk": True, "iterations": c.iterations,
                "latency_ms": c.latency_ms}  # fmt: skip


def run_sim_episode(settings: Any, envs: dict, cameras: tuple, image_size: int, job: tuple, agent: Any) -> dict:
    """Roll out one (task, episode, video_stem) job; envs are built lazily, one per task (LIBERO's hold ~1 GB)."""
    from latentvla.envs.registry import get_simulator
    from latentvla.eval.evaluate import MAX_ENVS_PER_WORKER, SimEpisode, write_video
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
    return {"task": task, "episode": episode, **asdict(result), "actions": np.stack(actions.actions),
            "video_paths": videos}  # fmt: skip


def _seed_for(settings: Any, job: tuple) -> int:
    from latentvla.envs.registry import get_simulator
    from latentvla.eval.evaluate import episode_torch_seed

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


def env_worker(conn: Any, settings: Any, cameras: tuple, image_size: int) -> None:
    """A spawned env process: runs the jobs it is sent (None: stop); asks the parent for each chunk."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C / SIGTERM and kills us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("MUJOCO_GL", "egl")

    def fetch(obs: dict) -> Chunk:
        # dict(): a LIBERO observation renders its images only when read (envs/lazy.py), here, at a query step;
        # the lazy mapping itself holds the renderer and does not pickle
        conn.send(("obs", dict(obs)))
        return Chunk(*conn.recv())

    agent, envs = QueueAgent(fetch), {}
    try:
        while (job := conn.recv()) is not None:
            conn.send(("done", run_sim_episode(settings, envs, cameras, image_size, job, agent)))
    except (EOFError, BrokenPipeError):  # the parent is gone
        pass
    except Exception as e:  # noqa: BLE001 (reported to the parent, which raises it in one line)
        conn.send(("error", f"{type(e).__name__}: {e} [{traceback.format_exc(limit=-3).strip()}]"))
    finally:
        for env in envs.values():
            env.close()


class _Slot:
    def __init__(self, index: int, proc: Any, conn: Any, device: Any) -> None:
        import torch

        self.index, self.proc, self.conn = index, proc, conn
        self.generator = torch.Generator(device=device)

    def start(self, job: tuple, seed: int) -> None:
        self.generator.manual_seed(seed)
        self.conn.send(job)

    def recv(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(timeout=1)
            raise RuntimeError(
                f"env worker {self.index} exited unexpectedly (exit code {self.proc.exitcode})"
            ) from None


def run_pool(policy: Any, settings: Any, jobs: list[tuple], workers: int, on_done: Callable[[dict], None],
             max_batch: int | None = None) -> None:  # fmt: skip
    """`workers` env processes, this process's policy answering their observations in lock-step batches."""
    ctx = get_context("spawn")  # MuJoCo's EGL context and torch's thread pools do not survive fork
    c = policy.config
    max_batch = max_batch or workers
    slots: list[_Slot] = []
    finished = False
    try:
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=env_worker, args=(child, settings, tuple(c.cameras), c.image_size),
                               daemon=True, name=f"latentvla-env-{i}")  # fmt: skip
            proc.start()
            child.close()
            slots.append(_Slot(i, proc, parent, policy.device))
        queue, active = deque(jobs), []
        for s in slots:
            if queue:
                job = queue.popleft()
                s.start(job, _seed_for(settings, job))
                active.append(s)
            else:
                s.conn.send(None)
        while active:
            requests = []
            for s in list(active):  # one message from every busy worker, in worker order
                kind, payload = s.recv()
                if kind == "obs":
                    requests.append((s, payload))
                elif kind == "done":
                    on_done(payload)
                    if queue:
                        job = queue.popleft()
                        s.start(job, _seed_for(settings, job))
                    else:
                        s.conn.send(None)
                        active.remove(s)
                else:
                    raise RuntimeError(f"env worker {s.index} failed: {payload}")
            for i in range(0, len(requests), max_batch):
                part = requests[i : i + max_batch]
                chunks = infer_chunks(policy, settings, [o for _, o in part], [s.generator for s, _ in part])
                for (s, _), ch in zip(part, chunks):
                    s.conn.send((ch.actions, ch.iterations, ch.latency_ms))
        finished = True
    finally:  # normal end: the workers were told to stop; interrupted or failed: kill them now (they ignore TERM)
        for s in slots:
            s.proc.join(timeout=5 if finished else 0)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(timeout=5)
            s.conn.close()
