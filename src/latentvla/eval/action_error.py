"""How far are a policy's actions from the demonstrations' on dataset frames? (`latentvla analyze actions`)

An offline check that needs no simulator: on `frames_per_episode` evenly spaced frames of `episodes` episodes
(the frames `analyze cot` uses, without augmentation) the policy samples a chunk through the same path as
evaluation and serving (`Policy.sample`: raw observation in, unnormalized clipped actions out), and it is
compared with the demonstrated chunk, in the dataset's raw action units:

    l1_first / l1_first_per_dim    mean |error| of the first action of the chunk (what a closed loop executes first)
    l1_chunk / l1_chunk_per_dim    mean |error| over the whole chunk, padded steps past an episode's end excluded
    gripper_sign_agreement         share of chunk steps whose last action dimension has the demonstration's sign
                                   (the gripper in Meta-World and LIBERO: open / close)

Measured use (LOG.md 2026-12-07, stop 24): on LIBERO-Object, after the same 1,500 steps, `bc`'s mean chunk error
was 0.014 against 0.024-0.065 for every VLA run (docs/results/libero), matching its closed-loop lead. The
observation is rebuilt from the sample in raw units (state unnormalized) because `Policy.sample` normalizes it
itself: a normalized state passed in would be normalized twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from latentvla.constants import ACTION, ACTION_IS_PAD, OBS_IMAGES, OBS_STATE, TASK
from latentvla.eval.cot_analysis import frame_indices, load_run_and_dataset


def _observation(sample: dict, cameras: tuple[str, ...] | list[str], normalizer: Any) -> dict:
    """A dataset sample as the raw observation a simulator or robot would send (images float CHW in [0, 1])."""
    obs = {TASK: sample[TASK], OBS_STATE: normalizer.unnormalize(OBS_STATE, sample[OBS_STATE].numpy())}
    for cam in cameras:
        obs[f"{OBS_IMAGES}.{cam}"] = sample[f"{OBS_IMAGES}.{cam}"].numpy()
    return obs


def analyze_actions(
    policy: Any,
    dataset: Any,
    *,
    episodes: int = 12,
    frames_per_episode: int = 8,
    seed: int = 0,
    batch_size: int = 16,
) -> dict:
    """The metrics above for one policy on one `VLADataset` built with the policy's normalizer and horizon."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if dataset.chunk_size != policy.config.horizon:
        raise ValueError(
            f"the dataset's chunk_size {dataset.chunk_size} != the policy's horizon {policy.config.horizon}"
        )
    policy.eval()
    norm = dataset.normalizer
    gen = torch.Generator(device=policy.device).manual_seed(seed)
    idx = frame_indices(dataset, episodes, frames_per_episode)
    first, chunk, valid, agree = [], [], [], []
    for b in range(0, len(idx), batch_size):
        samples = [dataset[i] for i in idx[b : b + batch_size]]
        pred, _ = policy.sample([_observation(s, policy.config.cameras, norm) for s in samples], generator=gen)
        target = norm.unnormalize(ACTION, np.stack([s[ACTION].numpy() for s in samples]))
        err = np.abs(pred.astype(np.float64) - target)  # (B, H, A)
        ok = ~np.stack([s[ACTION_IS_PAD].numpy() for s in samples])  # (B, H)
        first.append(err[:, 0])
        chunk.append(err)
        valid.append(ok)
        agree.append((np.sign(pred[..., -1]) == np.sign(target[..., -1]))[ok])
    err, ok = np.concatenate(chunk), np.concatenate(valid)
    per_dim_chunk = err[ok].mean(axis=0)  # over valid (frame, step) pairs
    per_dim_first = np.concatenate(first).mean(axis=0)
    return {
        "l1_first": float(per_dim_first.mean()),
        "l1_first_per_dim": [round(float(x), 5) for x in per_dim_first],
        "l1_chunk": float(per_dim_chunk.mean()),
        "l1_chunk_per_dim": [round(float(x), 5) for x in per_dim_chunk],
        "gripper_sign_agreement": float(np.concatenate(agree).mean()),
        "n_frames": len(idx),
        "horizon": int(policy.config.horizon),
        "units": "the dataset's raw action units",
    }


def analyze_actions_run(run: str | Path, dataset_dir: str | Path, **kwargs: Any) -> dict:
    """`analyze_actions` for a checkpoint or run directory and a LeRobot dataset directory."""
    policy, ds = load_run_and_dataset(run, dataset_dir)
    return {"run": str(run), "dataset": str(dataset_dir), **analyze_actions(policy, ds, **kwargs)}
