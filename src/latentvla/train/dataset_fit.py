"""What a training run takes from its dataset, and what it refuses.

`fit_policy_to_dataset` (train/loop.py) calls these before the run directory is touched:

    resolve_cameras    the preset's cameras, or, when the preset's default camera is absent (a LIBERO-layout
                       dataset has `image` and `image2`, not `corner4`), every image feature of the dataset in its
                       stored order, printed and recorded in the run config (so in every checkpoint's config.json).
                       Cameras the user named explicitly are never replaced: a missing one is an error.
    check_image_size   `policy.image_size` set to something other than the dataset's resolution is refused: the
                       model is built at the dataset's size, and silently training at 64 px after the user asked
                       for 96 is a wrong result with exit 0.
    check_cot_columns  a preset that learns chain-of-thought text (any stage with explicit CoT components: lara,
                       lara-explicit, lara-latent-text, ecot, lara-rd) on a dataset without `cot.*` columns, or whose
                       CoT text is empty on every frame, is refused: every target would be the empty template
                       "Subtask: . BBox: none. Reasoning: " (data/cot.py) and the model would learn to reason about
                       nothing. The message names `latentvla annotate`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from latentvla.config import PolicyConfig
from latentvla.constants import COT_BBOX, COT_BBOX_VISIBLE, COT_REASONING, COT_SUBTASK, COT_TEXT, OBS_IMAGES

COT_COLUMNS = (COT_SUBTASK, COT_BBOX, COT_BBOX_VISIBLE, COT_REASONING, COT_TEXT)
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PolicyConfig) if f.default is not dataclasses.MISSING}


def _say(message: str) -> None:
    if int(os.environ.get("RANK", "0")) == 0:  # one line per run, not one per DDP rank
        print(message, flush=True)


def resolve_cameras(policy: PolicyConfig, reader: Any) -> tuple[str, ...]:
    """The cameras to train on (see the module docstring); raises ValueError for explicitly named missing ones."""
    available = [k.removeprefix(f"{OBS_IMAGES}.") for k in reader.camera_keys]
    if not available:
        raise ValueError(f"dataset {reader.root} has no image features; a VLA dataset needs at least one camera")
    missing = [c for c in policy.cameras if c not in available]
    if not missing:
        return tuple(policy.cameras)
    if tuple(policy.cameras) == _DEFAULTS["cameras"]:  # the preset's default, not a choice the user made
        _say(
            f"cameras: the preset's {list(policy.cameras)} is not in {reader.root}; training on the dataset's "
            f"image features in stored order: {available} (recorded in the run config as policy.cameras; choose "
            f"others with policy.cameras=...)"
        )
        return tuple(available)
    raise ValueError(
        f"cameras {missing} are not in dataset {reader.root} (it has {available}); "
        f"pick them with the override policy.cameras={','.join(available)}"
    )


def check_image_size(policy: PolicyConfig, reader: Any, camera_key: str, height: int) -> None:
    """Refuse a `policy.image_size` the user set that differs from the dataset's resolution."""
    asked = int(policy.image_size)
    if asked != height and asked != _DEFAULTS["image_size"]:
        raise ValueError(
            f"policy.image_size={asked} but dataset {reader.root} stores {height}x{height} images ({camera_key}); "
            f"the policy is built at the dataset's resolution: drop the override (or set policy.image_size={height}),"
            f" or write a {asked} px copy of the dataset first"
        )


def learns_cot(policy: PolicyConfig) -> bool:
    """True when some stage of the preset's curriculum supervises chain-of-thought text."""
    return policy.model == "vla" and any(s.explicit_components for s in policy.curriculum.stages())


def check_cot_columns(policy: PolicyConfig, reader: Any) -> None:
    """Refuse to train a reasoning preset on a dataset without CoT annotation (see the module docstring)."""
    if not learns_cot(policy) or reader.num_frames == 0:  # an empty dataset gets validate.py's own message
        return
    missing = [k for k in COT_COLUMNS if k not in reader.features]
    fix = (
        f"run `latentvla annotate {reader.root}` first (it adds the cot.* columns), or train a preset without "
        "reasoning (lara-no-cot, rdvla, bc)"
    )
    if missing:
        raise ValueError(
            f"preset {policy.preset!r} learns chain-of-thought but dataset {reader.root} has no {missing} "
            f"columns, so every reasoning target would be empty; {fix}"
        )
    if not any(reader.column(COT_TEXT)):
        raise ValueError(
            f"preset {policy.preset!r} learns chain-of-thought but every {COT_TEXT} of dataset {reader.root} is "
            f"empty, so every reasoning target would be empty; {fix}"
        )
