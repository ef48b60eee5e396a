"""One observation validator for `Policy` and the server: uint8 HWC or float
CHW/HWC in [0, 1] (scaled by 255 exactly once), NaN state refused, one instruction-length limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentvla.config import get_preset
from latentvla.constants import ACTION, OBS_IMAGES, OBS_STATE, TASK
from latentvla.data.stats import Normalizer

KEY = f"{OBS_IMAGES}.corner4"
SIZE = 32


@pytest.fixture(scope="module")
def policy():
    from dataclasses import replace

    from latentvla.policy import Policy

    stats = {
        OBS_STATE: {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)},
        ACTION: {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)},
    }
    normalizer = Normalizer(stats, {OBS_STATE: "mean_std", ACTION: "min_max"})
    cfg = replace(get_preset("lara", "micro").policy, image_size=SIZE, state_dim=4, action_dim=4)
    torch.manual_seed(0)
    return Policy(cfg, normalizer).eval()


def _obs(image, state=None, task="push the block") -> dict:
    return {KEY: image, OBS_STATE: np.zeros(4, np.float32) if state is None else state, TASK: task}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


def test_float_image_in_unit_range_is_not_divided_again(policy, image):
    reference = policy.make_batch([_obs(image)])[KEY]
    assert reference.max() > 0.5  # a real image, not black
    as_float = policy.make_batch([_obs(image.astype(np.float32) / 255.0)])[KEY]
    torch.testing.assert_close(as_float, reference, rtol=0, atol=0)


def test_float_chw_lerobot_convention_is_accepted(policy, image):
    reference = policy.make_batch([_obs(image)])[KEY]
    chw = np.moveaxis(image, -1, 0).astype(np.float32) / 255.0  # LeRobot: float32 (C, H, W) in [0, 1]
    torch.testing.assert_close(policy.make_batch([_obs(chw)])[KEY], reference, rtol=0, atol=0)
    torch.testing.assert_close(policy.make_batch([_obs(torch.from_numpy(chw).numpy())])[KEY], reference)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((SIZE, SIZE, 3), 200.0, np.float32), r"float images must be in \[0, 1\]"),
        (np.full((SIZE, SIZE, 3), np.nan, np.float32), "NaN or inf"),
        (np.zeros((SIZE, SIZE), np.uint8), r"shape \(H, W, 3\) or \(3, H, W\)"),
        (np.zeros((SIZE, SIZE, 3), np.complex64), "dtype complex64"),
        ("not an image", "numpy array"),
    ],
)
def test_bad_images_are_clear_errors(policy, bad, message):
    from latentvla.observation import BadObservation

    with pytest.raises(BadObservation, match=message):
        policy.infer(_obs(bad))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_state_is_refused(policy, image, value):
    from latentvla.observation import BadObservation

    with pytest.raises(BadObservation, match="state contains NaN or inf"):
        policy.infer(_obs(image, state=np.array([0.0, value, 0.0, 0.0], np.float32)))


def test_missing_key_is_named(policy, image):
    from latentvla.observation import BadObservation

    with pytest.raises(BadObservation, match="observation.state"):
        policy.infer({KEY: image, TASK: "x"})


def test_instruction_length_limit_is_shared_with_the_server(policy, image):
    from latentvla.observation import MAX_TASK_CHARS, BadObservation
    from latentvla.serve import obs as server_obs

    assert server_obs.MAX_TASK_CHARS is MAX_TASK_CHARS == 2000
    assert policy.infer(_obs(image, task="x" * MAX_TASK_CHARS))["actions"].shape == (policy.config.horizon, 4)
    with pytest.raises(BadObservation, match="instruction is 60000 characters; the limit is 2000"):
        policy.infer(_obs(image, task="x" * 60_000))  # used to run for 215 s in 18 GB


def test_server_and_policy_prepare_the_same_image(policy, image):
    from latentvla.serve.obs import ObservationSpec, prepare_observation

    chw = np.moveaxis(image, -1, 0).astype(np.float32) / 255.0
    served = prepare_observation(
        {KEY: chw, OBS_STATE: np.zeros(4, np.float32), TASK: "x"}, ObservationSpec.from_metadata(policy.metadata)
    )
    torch.testing.assert_close(policy.make_batch([served])[KEY], policy.make_batch([_obs(chw)])[KEY])
