"""Example robot loop: drive simulator episodes through a running policy server.

    latentvla serve runs/my_run --port 8000 &
    python -m latentvla.client.robot_loop --host 127.0.0.1 --port 8000 --task reach --episodes 3
    python -m latentvla.client.robot_loop --env libero --task libero_object:0 --port 8000

The loop is what a real robot would run: read the cameras and the proprioceptive state, send them as the
policy's observation keys, execute the returned chunk one action per control step (`ActionChunkBroker`),
repeat. Only numpy, msgpack and websockets are needed on this side; the simulator is reached through the
simulator protocol (envs/base.py) and imported lazily (Meta-World needs `pip install -e ".[sim]"`, LIBERO
`pip install -e ".[sim,libero]"`). The simulator's default protocol supplies the no-op warm-up after reset.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np

from latentvla.client.action_chunk_broker import ActionChunkBroker, InferencePolicy
from latentvla.client.websocket_client import WebsocketPolicyClient


@dataclass(frozen=True)
class EpisodeResult:
    success: bool
    steps: int
    queries: int
    seconds: float


def run_sim_episode(
    client: InferencePolicy,
    task: str,
    episode: int = 0,
    image_size: int = 128,
    cameras: tuple[str, ...] = ("corner4",),
    max_steps: int = 200,
    action_horizon: int | None = None,
    env: str = "metaworld",
) -> EpisodeResult:
    """Run evaluation episode `episode` of `task` in simulator `env` with actions from `client` (the server)."""
    from latentvla.envs.registry import get_simulator

    sim = get_simulator(env)
    sim.require()  # ImportError naming the install command
    protocol = sim.protocol()
    horizon = action_horizon or int(getattr(client, "metadata", {}).get("horizon", 1))
    broker = ActionChunkBroker(client, horizon)
    task = sim.resolve_tasks(task)[0]
    sim_env = sim.make(
        task, cameras=tuple(cameras), image_size=image_size, max_steps=max_steps + protocol.warmup_steps
    )
    start = time.perf_counter()
    success, steps = False, 0
    try:
        obs, info = sim_env.reset(episode=episode, split="eval", seed=protocol.seed)
        for _ in range(protocol.warmup_steps):
            obs, *_ = sim_env.step(np.asarray(protocol.warmup_action, dtype=np.float32))
        for steps in range(1, max_steps + 1):  # noqa: B007  (steps is reported after the loop)
            action = np.asarray(broker.action(obs), dtype=np.float32)
            obs, _reward, terminated, truncated, info = sim_env.step(action)
            success = bool(info.get("success", False))
            if success or terminated or truncated:
                break
    finally:
        sim_env.close()
    return EpisodeResult(success, steps, broker.num_queries, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--env", default="metaworld", help="simulator (latentvla/envs/registry.py)")
    parser.add_argument("--task", required=True, help="task name, e.g. reach or libero_object:0")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--action-horizon", type=int, default=None, help="actions executed per query (default H)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    with WebsocketPolicyClient(args.host, args.port, timeout=args.timeout) as client:
        meta = client.metadata
        cameras, image_size = tuple(meta["cameras"]), int(meta["image_size"])
        successes = 0
        for episode in range(args.episodes):
            result = run_sim_episode(
                client, args.task, episode, image_size, cameras, args.max_steps, args.action_horizon, args.env
            )
            successes += result.success
            print(
                f"episode {episode}: success={result.success} steps={result.steps} "
                f"queries={result.queries} ({result.seconds:.1f} s)",
                flush=True,
            )
    print(f"{args.task}: {successes}/{args.episodes} successful", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
