"""Per-feature normalization statistics and the `Normalizer` that applies them.

Statistics follow LeRobot's `compute_stats.py`: per feature `mean, std, min, max, q01, q99,
count`. Images are uint8 `(T, H, W, 3)` and get per-channel stats of shape `(3, 1, 1)` on the [0, 1] scale,
computed on a subsample of frames and pixels (exact image stats are never needed: images are not normalized by
the policy, the stats are only informative). Per-episode stats are merged with `aggregate_stats` (exact for
mean/std/min/max/count; quantiles are the count-weighted mean of per-episode quantiles, LeRobot's approximation).

`Normalizer` reduces every mode to one affine map `x_norm = (x - center) / scale`:

    mean_std   center = mean,            scale = std
    min_max    center = (min + max) / 2, scale = (max - min) / 2        -> [-1, 1]
    quantile   center = (q01 + q99) / 2, scale = (q99 - q01) / 2        -> [-1, 1] (not clipped)
    identity   center = 0,               scale = 1

A dimension whose scale is below `eps` (a constant dimension, e.g. a gripper that never moves) gets scale 1, so
it maps to exactly 0 and round-trips exactly instead of blowing up to 1e8.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from latentvla.constants import ACTION, OBS_STATE

STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99", "count")
MODES = ("mean_std", "min_max", "quantile", "identity")
DEFAULT_MODES = {OBS_STATE: "mean_std", ACTION: "min_max"}
_IMAGE_MAX_FRAMES = 16  # frames per episode used for image stats
_IMAGE_MAX_SIDE = 32  # pixels per side (strided) used for image stats

Stats = dict[str, dict[str, np.ndarray]]


def is_image_array(x: np.ndarray) -> bool:
    """uint8 `(T, H, W, 3)` arrays are images (channels-last, as in the episode format)."""
    return x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] == 3


def _image_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    num_frames, height, width, _ = images.shape
    frames = np.unique(np.linspace(0, num_frames - 1, min(num_frames, _IMAGE_MAX_FRAMES)).round().astype(int))
    stride = max(1, max(height, width) // _IMAGE_MAX_SIDE)
    pixels = images[frames, ::stride, ::stride].reshape(-1, 3).astype(np.float32) / 255.0
    stats = _vector_stats(pixels)
    stats = {k: v.reshape(3, 1, 1) for k, v in stats.items() if k != "count"}
    stats["count"] = np.array([num_frames], dtype=np.int64)
    return stats


def _vector_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    x = x.astype(np.float64)
    q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
    return {
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "q01": q01,
        "q99": q99,
        "count": np.array([x.shape[0]], dtype=np.int64),
    }


def compute_stats(arrays: Mapping[str, np.ndarray]) -> Stats:
    """Stats of each numeric `(T, ...)` array: `{feature: {mean, std, min, max, q01, q99, count}}`.

    Vectors get stats of shape `(k,)` (scalars `(1,)`); uint8 images per-channel `(3, 1, 1)` in [0, 1].
    """
    out: Stats = {}
    for key, value in arrays.items():
        x = np.asarray(value)
        if x.ndim == 0 or x.shape[0] == 0:
            raise ValueError(f"compute_stats: {key!r} is empty or not a (T, ...) array (shape {x.shape}).")
        if is_image_array(x):
            out[key] = _image_stats(x)
        else:
            out[key] = _vector_stats(x.reshape(x.shape[0], -1))
    return out


def aggregate_stats(stats_list: Sequence[Mapping[str, Mapping[str, Any]]]) -> Stats:
    """Merge per-episode stats into dataset stats (pooled variance; count-weighted quantiles)."""
    if not stats_list:
        raise ValueError("aggregate_stats needs at least one set of stats.")
    keys = list(stats_list[0])
    out: Stats = {}
    for key in keys:
        parts = [{k: np.asarray(v, dtype=np.float64) for k, v in s[key].items()} for s in stats_list if key in s]
        counts = np.array([p["count"].reshape(-1)[0] for p in parts], dtype=np.float64)
        w = counts / counts.sum()
        w_ = w.reshape((-1,) + (1,) * parts[0]["mean"].ndim)
        means = np.stack([p["mean"] for p in parts])
        mean = (w_ * means).sum(axis=0)
        # Pooled variance: E[x^2] - E[x]^2 over the union, from each part's (mean, var).
        var = (w_ * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(axis=0)
        out[key] = {
            "mean": mean,
            "std": np.sqrt(np.maximum(var, 0.0)),
            "min": np.stack([p["min"] for p in parts]).min(axis=0),
            "max": np.stack([p["max"] for p in parts]).max(axis=0),
            "count": np.array([int(counts.sum())], dtype=np.int64),
        }
        for q in ("q01", "q99"):  # LeRobot v2.1 episode stats have no quantiles: then the merge has none either
            if all(q in p for p in parts):
                out[key][q] = (w_ * np.stack([p[q] for p in parts])).sum(axis=0)
    return out


def stats_to_json(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """JSON-able copy (nested lists), the layout of LeRobot's meta/stats.json."""
    return {k: {s: np.asarray(v).tolist() for s, v in d.items()} for k, d in stats.items()}


def stats_from_json(data: Mapping[str, Mapping[str, Any]]) -> Stats:
    """Inverse of `stats_to_json` (count as int64, everything else float64)."""
    return {
        k: {s: np.asarray(v, dtype=np.int64 if s == "count" else np.float64) for s, v in d.items()}
        for k, d in data.items()
    }


def _center_scale(stats: Mapping[str, np.ndarray], mode: str) -> tuple[np.ndarray, np.ndarray]:
    if mode == "mean_std":
        center, scale = stats["mean"], stats["std"]
    elif mode == "min_max":
        center, scale = (stats["min"] + stats["max"]) / 2, (stats["max"] - stats["min"]) / 2
    elif mode == "quantile":
        center, scale = (stats["q01"] + stats["q99"]) / 2, (stats["q99"] - stats["q01"]) / 2
    else:  # identity
        center, scale = np.zeros_like(stats["mean"]), np.ones_like(stats["mean"])
    return np.asarray(center, np.float64), np.asarray(scale, np.float64)


_REQUIRED = {"mean_std": ("mean", "std"), "min_max": ("min", "max"), "quantile": ("q01", "q99"), "identity": ()}


class Normalizer:
    """Normalizes / unnormalizes named features with dataset stats (numpy arrays or torch tensors).

    `modes` maps feature key -> one of `MODES`; only those keys can be (un)normalized. The stats are the
    asset saved with every checkpoint (`to_dict` / `from_dict`), so a policy always uses its training stats.
    """

    def __init__(
        self,
        stats: Mapping[str, Mapping[str, Any]],
        modes: Mapping[str, str] | None = None,
        eps: float = 1e-6,
    ) -> None:
        self.modes = dict(DEFAULT_MODES if modes is None else modes)
        self.eps = float(eps)
        self.stats: Stats = {
            k: {s: np.asarray(v, dtype=np.float64) for s, v in d.items()} for k, d in stats.items()
        }
        self._affine: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, mode in self.modes.items():
            if mode not in MODES:
                raise ValueError(
                    f"Unknown normalization mode {mode!r} for {key!r}; choose from {', '.join(MODES)}."
                )
            if key not in self.stats:
                raise KeyError(
                    f"Normalization stats have no entry for {key!r} (they have: {', '.join(sorted(self.stats))}). "
                    "Recompute the stats on this dataset or drop the key from `modes`."
                )
            missing = [s for s in _REQUIRED[mode] if s not in self.stats[key]]
            if missing:
                raise KeyError(f"Stats for {key!r} lack {missing} needed by mode {mode!r}.")
            reference = self.stats[key].get("mean", self.stats[key].get("min"))
            if mode == "identity" and reference is None:
                raise KeyError(f"Stats for {key!r} need 'mean' or 'min' to know the feature shape.")
            center, scale = _center_scale(self.stats[key] | {"mean": reference}, mode)
            scale = np.where(scale < self.eps, 1.0, scale)  # constant dims -> exactly 0, exact round trip
            self._affine[key] = (center.astype(np.float32), scale.astype(np.float32))
        self._torch_cache: dict[tuple, tuple[Any, Any]] = {}

    @property
    def keys(self) -> list[str]:
        return list(self.modes)

    def shape(self, key: str) -> tuple[int, ...]:
        """The feature shape the stats were computed for."""
        return tuple(self._params(key)[0].shape)

    def _params(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self._affine:
            raise KeyError(f"No normalization mode for {key!r}; the normalizer knows {', '.join(self.keys)}.")
        return self._affine[key]

    def _check_shape(self, key: str, x: Any, center: np.ndarray) -> None:
        n = center.ndim
        data_shape = tuple(x.shape[-n:]) if n else ()
        if len(x.shape) < n or data_shape != center.shape:
            raise ValueError(
                f"stats for {key!r} have shape {center.shape} but the data has {data_shape}: "
                "were these stats computed on another dataset?"
            )

    def _apply(self, key: str, x: Any, inverse: bool) -> Any:
        center, scale = self._params(key)
        self._check_shape(key, x, center)
        torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
        if torch is not None and isinstance(x, torch.Tensor):
            cache_key = (key, x.device, x.dtype)
            if cache_key not in self._torch_cache:
                self._torch_cache[cache_key] = (
                    torch.as_tensor(center, device=x.device, dtype=x.dtype),
                    torch.as_tensor(scale, device=x.device, dtype=x.dtype),
                )
            c, s = self._torch_cache[cache_key]
        else:
            x = np.asarray(x, dtype=np.float32)
            c, s = center, scale
        return x * s + c if inverse else (x - c) / s

    def normalize(self, key: str, x: Any) -> Any:
        """`(x - center) / scale` for feature `key`; x has the feature shape as its trailing dims."""
        return self._apply(key, x, inverse=False)

    def unnormalize(self, key: str, x: Any) -> Any:
        """Inverse of `normalize`."""
        return self._apply(key, x, inverse=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: `{"stats": ..., "modes": ..., "eps": ...}` (only the normalized keys' stats)."""
        return {
            "stats": stats_to_json({k: self.stats[k] for k in self.modes}),
            "modes": dict(self.modes),
            "eps": self.eps,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        for field in ("stats", "modes"):
            if field not in data:
                raise KeyError(f"Normalizer.from_dict: missing {field!r} (expected the output of to_dict()).")
        return cls(stats_from_json(data["stats"]), data["modes"], eps=data.get("eps", 1e-6))
