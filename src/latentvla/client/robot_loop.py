"""Example robot loop: drive one Meta-World episode through a running policy server.

    latentvla serve runs/my_run --port 8000 &
    python -m latentvla.client.robot_loop --host 127.0.0.1 --port 8000 --task reach --episodes 3

The loop is what a real robot would run: read the camera and the proprioceptive state, send them as the
policy's observation keys, execute the returned chunk one action per control step (`ActionChunkBroker`),
repeat. Only numpy, msgpack and websockets are needed on this side; Meta-World is imported lazily and needs the
sim extra (`pip install -e ".[sim]"`).
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


def run_metaworld_episode(
    client: InferencePolicy,
    task: str,
    episode: int = 0,
    image_size: int = 128,
    camera: str = "corner4",
    max_steps: int = 200,
    action_horizon: int | None = None,
) -> EpisodeResult:
    """Run held-out episode `episode` of Meta-World `task` with actions from `client` (the server)."""
    try:
        from latentvla.envs.metaworld import MetaWorldConfig, MetaWorldEnv
    except ImportError as e:
        raise ImportError(f'The robot loop needs Meta-World: pip install -e ".[sim]" ({e}).') from e
    horizon = action_horizon or int(getattr(client, "metadata", {}).get("horizon", 1))
    broker = ActionChunkBroker(client, horizon)
    env = MetaWorldEnv(MetaWorldConfig(task=task, cameras=(camera,), image_size=image_size))
    start = time.perf_counter()
    obs, info = env.reset(episode=episode, split="eval", seed=0)
    success, steps = False, 0
    try:
        for steps in range(1, max_steps + 1):  # noqa: B007  (steps is reported after the loop)
            action = np.asarray(broker.action(obs), dtype=np.float32)
            obs, _reward, terminated, truncated, info = env.step(action)
            success = bool(info.get("success", False))
            if success or terminated or truncated:
                break
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()
    return EpisodeResult(success, steps, broker.num_queries, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--task", required=True, help="Meta-World task name, e.g. reach")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--action-horizon", type=int, default=None, help="actions executed per query (default H)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server")
    args = parser.parse_args(argv)
    with WebsocketPolicyClient(args.host, args.port, timeout=args.timeout) as client:
        meta = client.metadata
        camera, image_size = meta["cameras"][0], int(meta["image_size"])
        successes = 0
        for episode in range(args.episodes):
            result = run_metaworld_episode(
                client, args.task, episode, image_size, camera, args.max_steps, args.action_horizon
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
