"""Validate a client's observation dict and map it onto the policy's LeRobot keys.

Two key styles are accepted (LeRobot's, and openpi's LIBERO example's):

    LeRobot                          openpi LIBERO-style
    observation.images.<cam>         observation/image (first camera), observation/wrist_image (second camera)
    observation.state                observation/state
    task                             prompt

Images may be uint8 HWC (what openpi clients send), CHW, or float in [0, 1] (openpi's image parsers accept the
same), of any size: they are resized to the model's square `image_size` with PIL bilinear (antialiased when
shrinking, i.e. area-like). Non-square frames are stretched, not padded: the policy was trained on square
camera frames. Anything else raises `BadRequest` naming the key, what arrived and what was expected. The checks
themselves live in `latentvla/observation.py`, shared with `Policy.infer`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.observation import (  # noqa: F401  (MAX_* re-exported for the server and its tests)
    MAX_IMAGE_SIDE,
    MAX_TASK_CHARS,
    BadObservation,
    prepare_image,
    prepare_state,
    prepare_task,
)

# openpi LIBERO example keys (openpi `examples/libero/main.py`), mapped onto our cameras by position.
OPENPI_IMAGE_KEYS = ("observation/image", "observation/wrist_image")
OPENPI_STATE = "observation/state"
OPENPI_PROMPT = "prompt"

# The image / state / instruction checks are the ones `Policy.infer` runs too (latentvla/observation.py).
BadRequest = BadObservation  # the server's name for a malformed request


@dataclass(frozen=True)
class ObservationSpec:
    """What the served policy needs: camera names, square image side, state length."""

    cameras: tuple[str, ...]
    image_size: int
    state_dim: int

    def __post_init__(self) -> None:
        if not self.cameras:
            raise ValueError("ObservationSpec needs at least one camera name.")
        if self.image_size <= 0 or self.state_dim < 0:
            raise ValueError(
                f"Bad ObservationSpec sizes: image_size={self.image_size}, state_dim={self.state_dim}."
            )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> ObservationSpec:
        """Build from `Policy.metadata` (keys `cameras`, `image_size`, `state_dim`)."""
        return cls(tuple(metadata["cameras"]), int(metadata["image_size"]), int(metadata["state_dim"]))

    def image_key(self, camera: str) -> str:
        return f"{OBS_IMAGES}.{camera}"

    def camera_aliases(self, index: int) -> tuple[str, ...]:
        """Keys accepted for camera number `index`: the LeRobot key, the client keys the simulator adapters map
        onto it (`Simulator.client_keys`, envs/registry.py), then the positional openpi alias if any."""
        from latentvla.envs.registry import client_key_map

        key = self.image_key(self.cameras[index])
        declared = [alias for alias, target in client_key_map().items() if target == key]
        positional = [OPENPI_IMAGE_KEYS[index]] if index < len(OPENPI_IMAGE_KEYS) else []
        return tuple(dict.fromkeys([key, *declared, *positional]))

    def describe(self) -> str:
        """The expected request, for error messages."""
        cams = ", ".join(" or ".join(repr(k) for k in self.camera_aliases(i)) for i in range(len(self.cameras)))
        side = self.image_size
        return (
            f"expected images {cams} (uint8 HxWx3, any size; resized to {side}x{side}), "
            f"{OBS_STATE!r} or {OPENPI_STATE!r} (float, shape ({self.state_dim},)), {TASK!r} or {OPENPI_PROMPT!r} (str)"
        )


def _first_present(raw: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[str, Any] | None:
    for key in keys:
        if key in raw:
            return key, raw[key]
    return None


def prepare_observation(raw: Any, spec: ObservationSpec) -> dict[str, Any]:
    """Map and validate a decoded request into the policy's observation dict (LeRobot keys), or BadRequest."""
    if not isinstance(raw, Mapping):
        raise BadRequest(
            f"Expected a dict (msgpack map) of observations, got {type(raw).__name__}; {spec.describe()}."
        )
    missing: list[str] = []
    obs: dict[str, Any] = {}
    for i, camera in enumerate(spec.cameras):
        found = _first_present(raw, spec.camera_aliases(i))
        if found is None:
            missing.append(" or ".join(repr(k) for k in spec.camera_aliases(i)))
        else:
            obs[spec.image_key(camera)] = prepare_image(found[0], found[1], spec.image_size)
    state = _first_present(raw, (OBS_STATE, OPENPI_STATE))
    task = _first_present(raw, (TASK, OPENPI_PROMPT))
    if state is None:
        missing.append(f"{OBS_STATE!r} or {OPENPI_STATE!r}")
    if task is None:
        missing.append(f"{TASK!r} or {OPENPI_PROMPT!r}")
    if missing:
        got = ", ".join(repr(k) for k in list(raw)[:20])
        raise BadRequest(f"Missing {'; '.join(missing)}. Got keys [{got}]; {spec.describe()}.")
    obs[OBS_STATE] = prepare_state(state[0], state[1], spec.state_dim)
    obs[TASK] = prepare_task(task[0], task[1])
    return obs
