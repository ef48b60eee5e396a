"""`latentvla rl RUN`: reinforcement post-training of a trained policy on its own simulator rollouts.

    latentvla rl runs/lara --env metaworld --tasks reach --algo ppo --updates 50 --out runs/rl/lara_reach
    latentvla rl runs/rdvla --tasks reach,push,pick-place --algo grpo --num-envs 12 --group-size 4 --minutes 60 \
        --out runs/rl/rdvla_grpo
    latentvla rl runs/lara --tasks reach --out runs/rl/lara_reach --resume --updates 80     # after a kill
    latentvla rl runs/libero --env libero --tasks libero_object:0 --algo grpo --updates 3 --out runs/rl/libero

RUN is any `latentvla train` output (run or checkpoint directory; every head: lara, lara-no-cot, rdvla, lara-rd,
bc). OUT becomes an ordinary run directory: OUT/checkpoints/NNNNNN load in `eval`, `serve` and
`Policy.from_pretrained`; OUT/metrics.jsonl and OUT/tensorboard hold the curves (held-out success vs updates and
vs env steps, rollout success, return, approx KL, log-std / entropy, value loss); OUT/rl_summary.json the
held-out success before and after. `--set KEY=VALUE ...` sets any RLConfig field (rl/config.py), e.g.
`--set clip=0.1 epochs=4 kl_coef=0.05 reward=dense`.
"""

from __future__ import annotations

import argparse
import sys

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "rl",
        help="RL post-training in simulation (PPO / GRPO)",
        description=__doc__.splitlines()[0],
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="starting checkpoint: a training run or checkpoint directory")
    p.add_argument("--env", default="metaworld", help="simulator: {simulators}")
    p.add_argument("--tasks", required=True, help="comma-separated task names and/or suites")
    p.add_argument("--algo", default="ppo", help="ppo | grpo")
    p.add_argument("--out", required=True, help="RL run directory")
    p.add_argument("--updates", type=int, default=None, help="policy updates (a cap when --minutes is set)")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of rollouts + updates")
    p.add_argument("--num-envs", type=int, default=None, help="environments stepped in lockstep")
    p.add_argument("--group-size", type=int, default=None, help="GRPO: rollouts per initial configuration")
    p.add_argument("--eval-episodes", type=int, default=None, help="held-out episodes per task for the curve")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        help="run the environments on N Ray actors (pip install -e '.[ray]'; RAY_ADDRESS joins a cluster)",
    )
    p.add_argument("--device", default=None, help="cpu (default) or cuda: where the policy runs")
    p.add_argument("--resume", action="store_true", help="continue OUT from its newest intact checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run at OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="RLConfig fields (rl/config.py), e.g. --set clip=0.1 kl_coef=0.05",
    )
    p.set_defaults(func=main)


def build_config(args: argparse.Namespace):
    from latentvla.config import apply_overrides
    from latentvla.rl.config import RLConfig

    fields = {
        "updates": args.updates,
        "minutes": args.minutes,
        "num_envs": args.num_envs,
        "group_size": args.group_size,
        "eval_episodes": args.eval_episodes,
        "seed": args.seed,
        "device": args.device,
        "ray_workers": args.ray_workers,
    }
    kw = {k: v for k, v in fields.items() if v is not None}
    if args.minutes is not None and args.updates is None:
        kw["updates"] = 1_000_000  # the clock decides
    base = RLConfig(
        init=args.run, env=args.env, tasks=tuple(t for t in args.tasks.split(",") if t), algo=args.algo, **kw
    )
    return apply_overrides(base, list(args.overrides))


def main(args: argparse.Namespace) -> int:
    from latentvla.checkpoint_check import CorruptCheckpointError
    from latentvla.train.loop import TrainingInterrupted

    try:
        from latentvla.rl.loop import run_rl

        cfg = build_config(args)
        summary = run_rl(
            args.out, cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ImportError,
        CorruptCheckpointError,
        FloatingPointError,
    ) as e:
        raise UserError(str(e)) from e
    except TrainingInterrupted as e:  # SIGTERM / SIGINT: checkpoint written; 128 + signal like a shell reports
        print(f"interrupted: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    print(
        f"{summary['model']} {summary['algorithm']}: held-out success {summary['before_success']:.1f}% -> "
        f"{summary['after_success']:.1f}% after {summary['updates']} updates, {summary['env_steps']} env steps, "
        f"{summary['minutes']:.1f} min; wrote {args.out}"
    )
    return 0
