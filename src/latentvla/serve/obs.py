"""Validate a client's observation dict and map it onto the policy's LeRobot keys.

Two key styles are accepted (ecosystem.md §2):

    LeRobot                          openpi LIBERO-style
    observation.images.<cam>         observation/image (first camera), observation/wrist_image (second camera)
    observation.state                observation/state
    task                             prompt

Images may be uint8 HWC (what openpi clients send), CHW, or float in [0, 1] (openpi's image parsers accept the
same), of any size: they are resized to the model's square `image_size` with PIL bilinear (antialiased when
shrinking, i.e. area-like). Non-square frames are stretched, not padded: the policy was trained on square
camera frames. Anything else raises `BadRequest` naming the key, what arrived and what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK

# openpi LIBERO example keys (openpi `examples/libero/main.py`), mapped onto our cameras by position.
OPENPI_IMAGE_KEYS = ("observation/image", "observation/wrist_image")
OPENPI_STATE = "observation/state"
OPENPI_PROMPT = "prompt"

MAX_TASK_CHARS = 2000  # an instruction is a sentence; a megabyte "prompt" is a mistake, not a task
MAX_IMAGE_SIDE = 4096  # larger frames are almost certainly a wrong array, and resizing them costs seconds


class BadRequest(ValueError):
    """The client's request is malformed; the message says which key and what was expected."""


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


def _as_array(key: str, value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple):  # plain msgpack lists from a client that skipped numpy packing
        try:
            return np.asarray(value)
        except ValueError as e:
            raise BadRequest(f"{key!r}: could not read the list as an array ({e}); expected {what}.") from None
    raise BadRequest(f"{key!r}: expected {what} as a numpy array, got {type(value).__name__}.")


def _to_uint8_hwc(key: str, img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from uint8/int/float HWC or CHW, or BadRequest."""
    if img.ndim != 3 or 3 not in (img.shape[0], img.shape[-1]):
        raise BadRequest(f"{key!r}: expected an RGB image of shape (H, W, 3) or (3, H, W), got shape {img.shape}.")
    if img.shape[-1] != 3:  # CHW -> HWC (an HxWx3 image with H == 3 stays as is)
        img = np.moveaxis(img, 0, -1)
    h, w = img.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_IMAGE_SIDE:
        raise BadRequest(f"{key!r}: image sides must be in [1, {MAX_IMAGE_SIDE}], got shape {img.shape}.")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype.kind in "iu":
        if img.min() < 0 or img.max() > 255:
            raise BadRequest(f"{key!r}: integer image values must be in [0, 255], got [{img.min()}, {img.max()}].")
        return img.astype(np.uint8)
    if img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise BadRequest(f"{key!r}: image contains NaN or inf.")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise BadRequest(
                f"{key!r}: float images must be in [0, 1], got [{lo:.3g}, {hi:.3g}]; send uint8 or divide by 255."
            )
        return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    raise BadRequest(f"{key!r}: expected a uint8 (or float in [0, 1]) image, got dtype {img.dtype}.")


def prepare_image(key: str, value: Any, image_size: int) -> np.ndarray:
    """Validate one camera frame and resize it to uint8 (image_size, image_size, 3)."""
    img = _to_uint8_hwc(key, _as_array(key, value, "a uint8 HxWx3 image"))
    if img.shape[:2] == (image_size, image_size):
        return img.copy()  # decoded arrays are read-only views onto the message buffer
    resized = Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8).copy()


def prepare_state(key: str, value: Any, state_dim: int) -> np.ndarray:
    """Validate the proprioceptive state: finite real numbers of shape (state_dim,), returned as float32."""
    state = _as_array(key, value, f"float of shape ({state_dim},)")
    if state.dtype.kind not in "fiu":
        raise BadRequest(f"{key!r}: expected a float array of shape ({state_dim},), got dtype {state.dtype}.")
    if state.shape != (state_dim,):
        raise BadRequest(f"{key!r}: expected shape ({state_dim},), got {state.shape}.")
    state = state.astype(np.float32)
    if not np.isfinite(state).all():
        raise BadRequest(f"{key!r}: state contains NaN or inf (or values beyond float32 range): {state.tolist()}.")
    return state


def prepare_task(key: str, value: Any) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
        value = str(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{key!r}: instruction bytes are not valid UTF-8.") from None
    if not isinstance(value, str):
        raise BadRequest(f"{key!r}: expected the instruction as a str, got {type(value).__name__}.")
    if len(value) > MAX_TASK_CHARS:
        raise BadRequest(f"{key!r}: instruction is {len(value)} characters; the limit is {MAX_TASK_CHARS}.")
    return value


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
