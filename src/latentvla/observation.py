"""One validator for raw observations, shared by `Policy.infer` and the policy server (issues 10 and 14).

Images: uint8 HWC (what robots and openpi clients send), uint8 CHW, or float HWC / CHW in [0, 1] (LeRobot's
convention is float CHW in [0, 1]); a float image is scaled by 255 exactly once and rounded to the uint8 the model
was trained on, any size is resized to the model's square side (PIL bilinear, antialiased when shrinking).
Float images outside [0, 1] (e.g. 0..255 floats), NaN/inf pixels, other dtypes or shapes are an error naming
the key, what arrived and what was expected. State: finite reals of the policy's `state_dim`. Instruction: a
str (or UTF-8 bytes) of at most `MAX_TASK_CHARS` characters: a 60k-character prompt took 215 s and 18 GB in
`Policy.infer` before this limit; the server has always refused more than 2,000. `Policy` also refuses more than
`MAX_TASK_TOKENS` tokens of its own tokenizer (an emoji costs 4 byte tokens).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

MAX_TASK_CHARS = 2000  # an instruction is a sentence; a megabyte "prompt" is a mistake, not a task
# ... and characters are not the cost: 2,000 emoji are 8,000 byte tokens (4.8 s, 300 MB per call).
# `Policy.make_batch` bounds the tokens too, at the cost the character limit already allowed (2,000 ASCII
# characters are at most 2,000 tokens, one per byte); a LIBERO / Meta-World instruction is under 40.
MAX_TASK_TOKENS = MAX_TASK_CHARS
MAX_IMAGE_SIDE = 4096  # larger frames are almost certainly a wrong array, and resizing them costs seconds


class BadObservation(ValueError):
    """A raw observation is malformed; the message says which key and what was expected."""


def _as_array(key: str, value: Any, what: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, list | tuple):  # plain msgpack lists from a client that skipped numpy packing
        try:
            return np.asarray(value)
        except ValueError as e:
            raise BadObservation(f"{key!r}: could not read the list as an array ({e}); expected {what}.") from None
    raise BadObservation(f"{key!r}: expected {what} as a numpy array, got {type(value).__name__}.")


def _to_uint8_hwc(key: str, img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) from uint8/int/float HWC or CHW, or BadObservation."""
    if img.ndim != 3 or 3 not in (img.shape[0], img.shape[-1]):
        raise BadObservation(
            f"{key!r}: expected an RGB image of shape (H, W, 3) or (3, H, W), got shape {img.shape}."
        )
    if img.shape[-1] != 3:  # CHW -> HWC (an HxWx3 image with H == 3 stays as is)
        img = np.moveaxis(img, 0, -1)
    h, w = img.shape[:2]
    if min(h, w) < 1 or max(h, w) > MAX_IMAGE_SIDE:
        raise BadObservation(f"{key!r}: image sides must be in [1, {MAX_IMAGE_SIDE}], got shape {img.shape}.")
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype.kind in "iu":
        if img.min() < 0 or img.max() > 255:
            raise BadObservation(
                f"{key!r}: integer image values must be in [0, 255], got [{img.min()}, {img.max()}]."
            )
        return img.astype(np.uint8)
    if img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise BadObservation(f"{key!r}: image contains NaN or inf.")
        lo, hi = float(img.min()), float(img.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise BadObservation(
                f"{key!r}: float images must be in [0, 1], got [{lo:.3g}, {hi:.3g}]; send uint8 or divide by 255."
            )
        return np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    raise BadObservation(f"{key!r}: expected a uint8 (or float in [0, 1]) image, got dtype {img.dtype}.")


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
        raise BadObservation(f"{key!r}: expected a float array of shape ({state_dim},), got dtype {state.dtype}.")
    if state.shape != (state_dim,):
        raise BadObservation(f"{key!r}: expected shape ({state_dim},), got {state.shape}.")
    state = state.astype(np.float32)
    if not np.isfinite(state).all():
        raise BadObservation(
            f"{key!r}: state contains NaN or inf (or values beyond float32 range): {state.tolist()}."
        )
    return state


def check_task_tokens(key: str, text: str, n_tokens: int) -> None:
    """Refuse an instruction of more than `MAX_TASK_TOKENS` tokens (the model's tokenizer counted them)."""
    if n_tokens > MAX_TASK_TOKENS:
        raise BadObservation(
            f"{key!r}: instruction is {n_tokens} tokens ({len(text)} characters); the limit is {MAX_TASK_TOKENS} "
            "tokens (emoji and words outside the tokenizer's vocabulary cost one token per UTF-8 byte): shorten it."
        )


def prepare_task(key: str, value: Any) -> str:
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
        value = str(value)
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadObservation(f"{key!r}: instruction bytes are not valid UTF-8.") from None
    if not isinstance(value, str):
        raise BadObservation(f"{key!r}: expected the instruction as a str, got {type(value).__name__}.")
    if len(value) > MAX_TASK_CHARS:
        raise BadObservation(f"{key!r}: instruction is {len(value)} characters; the limit is {MAX_TASK_CHARS}.")
    return value
