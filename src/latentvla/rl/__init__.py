"""Reinforcement post-training in simulation: a trained policy improves from its own rollouts.

    latentvla rl RUN --env metaworld --tasks reach --algo ppo --updates 50 --out runs/rl_reach

One concept per file:

    config.py      RLConfig (every knob, recorded in each checkpoint's config.json under "train")
    likelihood.py  Gaussian log-densities and the Flow-Noise chain (pure functions)
    advantages.py  GAE over chunk-level decisions, group-normalised (GRPO) advantages (pure functions)
    losses.py      PPO clipped surrogate, value loss, KL estimators (pure functions)
    actor.py       the stochastic policy around a trained checkpoint: features, sampling, log-probabilities, value
    rollout.py     N environments of a registered simulator stepped in lockstep, one batched policy call per
                   decision; held-out evaluation
    ray_workers.py the same environments on Ray actors (`--ray-workers N`, optional [ray] extra)
    loop.py        the loop: rollout -> advantages -> epochs of minibatch updates -> log -> checkpoint
    summary.py     docs/results/rl/summary.json + plot from before/after evaluations and RL runs
"""
