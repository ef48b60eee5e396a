"""`latentvla eval RUN`: simulator rollouts under a named protocol, LeRobot-schema eval_info.json, sweeps.

    latentvla eval runs/lara --tasks reach,push,pick-place --episodes 10 --out runs/lara/eval
    latentvla eval runs/libero --env libero --tasks libero_object --out eval/libero   # papers' protocol: 50 ep/task
    latentvla eval runs/libero --env libero --tasks libero_10:3 --protocol lerobot --gripper binarize --out e
    latentvla eval runs/rdvla --tasks mt10 --episodes 5 --halting mse --delta 5e-4 --video --out runs/rdvla/eval
    latentvla eval runs/rdvla --tasks reach --episodes 10 --sweep-iterations 1,2,4,8,12,16,24,32 --out sweep
    latentvla eval runs/rdvla --tasks reach --episodes 10 --sweep-delta 1e-4,5e-4,1e-3 --out sweep

RUN is a checkpoint directory or a training run directory (then RUN/checkpoints/last). Episodes come from the
env's eval split (Meta-World: disjoint from the training episodes by construction; LIBERO: init state i) and are
deterministic for a --seed. --episodes, --seed and --max-steps default to the protocol's (eval_info.json
records the protocol).

The policy is loaded once, on --device (cpu by default; cuda / auto for a GPU, with bf16 autocast + TF32 there);
--workers simulator processes step their environments and the policy batches their observations. Each finished
episode is appended to OUT/episodes.jsonl at once: after Ctrl-C / SIGTERM (one line, exit 130 / 143) the same
command resumes where it stopped (--no-resume starts over).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentvla.errors import UserError
from latentvla.scripts.choices import RegistryHelpFormatter

HALTING_CHOICES = ("mse", "cosine")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a policy in simulation",
        description=__doc__.splitlines()[0],
        formatter_class=RegistryHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="checkpoint directory or training run directory")
    p.add_argument("--env", default="metaworld", help="simulator: {simulators}")
    p.add_argument(
        "--tasks",
        required=True,
        help="comma-separated task names and/or suites (mt10, easy, libero_object, libero_10:3, ...)",
    )
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the protocol's)")
    p.add_argument(
        "--protocol",
        default=None,
        help="the simulator's evaluation protocol (libero: papers [default] or lerobot)",
    )
    p.add_argument(
        "--gripper",
        default=None,
        choices=("none", "binarize", "openvla"),
        help="gripper post-processing (default: the protocol's)",
    )
    p.add_argument(
        "--execution",
        default=None,
        help="execution horizon, e.g. fixed:4 (default: protocol; LIBERO papers = whole chunk)",
    )
    p.add_argument(
        "--mode",
        choices=("latent", "explicit", "none"),
        default=None,
        help="reasoning at inference (default: what the model was trained for: explicit CoT text if its last stage writes it, else latent)",
    )
    p.add_argument(
        "--iterations", type=int, default=None, help="fixed recurrent depth K (with --halting: the maximum depth)"
    )
    p.add_argument("--halting", choices=HALTING_CHOICES, default=None, help="adaptive-depth halting rule")
    p.add_argument("--delta", type=float, default=None, help="halting threshold (mse δ, or cosine similarity)")
    p.add_argument("--seed", type=int, default=None, help="evaluation seed (default: the protocol's)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="policy steps per episode (default: the protocol's; Meta-World max 500)",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="simulator processes; one policy here batches their observations"
    )
    p.add_argument("--device", default="cpu", help="where the policy runs: cpu (default), cuda, cuda:N, auto")
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="auto: bf16 autocast + TF32 on a CUDA GPU that supports them, fp32 on CPU",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="most observations per policy call (default: --workers; 1 = bitwise the 1-worker actions)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if OUT/episodes.jsonl holds episodes of this interrupted evaluation",
    )
    p.add_argument("--video", action="store_true", help="GIF (+ MP4 with PyAV) of the first episode per task")
    p.add_argument("--sweep-iterations", default=None, metavar="LIST", help="e.g. 1,2,4,8,12,16,24,32")
    p.add_argument(
        "--sweep-delta", default=None, metavar="LIST", help="e.g. 1e-4,5e-4,1e-3 (with --halting, default mse)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from latentvla.eval.evaluate import evaluate, markdown_table
    from latentvla.eval.sweeps import parse_list, sweep_delta, sweep_iterations
    from latentvla.models.halting import halting_spec

    out = Path(args.out)
    if out.exists() and not out.is_dir():  # before anything runs (it used to fail only after the evaluation)
        raise UserError(f"--out {out} is an existing file; eval writes a directory there: pick another path.")
    from latentvla.eval.evaluate import EvalInterrupted

    common = dict(
        mode=args.mode,
        seed=args.seed,
        max_steps=args.max_steps,
        workers=args.workers,
        progress=not args.quiet,
        env=args.env,
        protocol=args.protocol,
        gripper=args.gripper,
        execution=args.execution,
        device=args.device,
        precision=args.precision,
        max_batch=args.max_batch,
        resume=not args.no_resume,
    )
    try:
        if args.sweep_iterations and args.sweep_delta:
            raise ValueError("run --sweep-iterations and --sweep-delta separately (different output tables)")
        if args.sweep_iterations:
            if args.halting or args.iterations:
                raise ValueError("--sweep-iterations sets the depth itself; drop --iterations/--halting")
            depths = parse_list(args.sweep_iterations, int)
            res = sweep_iterations(args.run, args.tasks, args.episodes, depths, out_dir=out, **common)
            print(res["table"] + f"\nplot: {res['plot']}")
            return 0
        if args.sweep_delta:
            deltas = parse_list(args.sweep_delta, float)
            res = sweep_delta(
                args.run,
                args.tasks,
                args.episodes,
                deltas,
                out_dir=out,
                strategy=args.halting or "mse",
                iterations=args.iterations,
                **common,
            )
            print(res["table"] + f"\nplot: {res['plot']}")
            return 0
        info = evaluate(
            args.run,
            args.tasks,
            args.episodes,
            iterations=args.iterations,
            halting=halting_spec(args.halting, args.delta),
            video_dir=out / "videos" if args.video else None,
            out_dir=out,
            **common,
        )
    except EvalInterrupted as e:  # the finished episodes are on disk; the same command resumes
        print(str(e), file=sys.stderr)
        return 128 + int(e.signum)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise UserError(str(e)) from e
    except RuntimeError as e:  # an env worker failed or died (eval/pool.py): one line, the cause included
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown_table(info))
    o = info["overall"]
    print(
        f"{o['pc_success']:.1f}% success over {o['n_episodes']} episodes in {o['eval_s']:.0f}s; "
        f"wrote {out / 'eval_info.json'} and {out / 'eval_table.md'}"
    )
    return 0
