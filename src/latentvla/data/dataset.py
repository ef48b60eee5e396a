"""The torch `Dataset` of training samples (docs/design.md "training sample"), decoded into memory at init.

Datasets here are small (tens of thousands of 64-128 px frames), so every frame is decoded once into compact
uint8 arrays indexed by global frame position; `__getitem__` is then slicing plus one float conversion. State
and actions are normalized once at init with the `Normalizer` (the same one saved with the checkpoint).

Action chunks follow LeRobot's `delta_timestamps` semantics (ecosystem.md §1.1): frame t gets actions
t .. t+H-1; steps past the episode end repeat the last action and are flagged in `action_is_pad` so the loss
can mask them. The next-frame target (LaRA §3.3 visual latents) is frame t+1 of the primary camera, zeros and
`next_image_is_pad=True` at the last frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from latentvla.constants import (
    ACTION,
    ACTION_IS_PAD,
    COT_BBOX,
    COT_BBOX_VISIBLE,
    COT_REASONING,
    COT_SUBTASK,
    COT_TEXT,
    NEXT_IMAGE_IS_PAD,
    NEXT_IMAGE_SUFFIX,
    OBS_IMAGES,
    OBS_STATE,
    TASK,
)
from latentvla.data.lerobot_format import LeRobotDatasetReader
from latentvla.data.stats import DEFAULT_MODES, Normalizer
from latentvla.registry import did_you_mean

AUGMENT_PAD = 4  # random-shift augmentation: pad 4 px (replicate) then crop back (DrQ-style)
_COT_STRINGS = (COT_SUBTASK, COT_REASONING, COT_TEXT)


def make_normalizer(reader: LeRobotDatasetReader, modes: dict[str, str] | None = None) -> Normalizer:
    """A `Normalizer` from the dataset's meta/stats.json (default: state mean_std, action min_max)."""
    modes = dict(DEFAULT_MODES if modes is None else modes)
    missing = [k for k in modes if k not in reader.stats]
    if missing:
        raise KeyError(
            f"{reader.root}/meta/stats.json has no stats for {missing} (it has: {', '.join(sorted(reader.stats))}); "
            "the dataset's stats do not match its features."
        )
    return Normalizer(reader.stats, modes)


def _camera_key(name: str, available: list[str]) -> str:
    key = name if name.startswith(OBS_IMAGES + ".") else f"{OBS_IMAGES}.{name}"
    if key not in available:
        short = [k[len(OBS_IMAGES) + 1 :] for k in available]
        raise ValueError(did_you_mean(name.removeprefix(OBS_IMAGES + "."), short, "camera"))
    return key


class VLADataset(Dataset):
    """Training samples from a LeRobot dataset: images, normalized state, action chunk + pad mask, CoT fields."""

    def __init__(
        self,
        root_or_reader: str | Path | LeRobotDatasetReader,
        *,
        chunk_size: int,
        cameras: list[str] | None = None,
        normalizer: Normalizer | None = None,
        next_frame: bool = True,
        augment: bool = False,
        episodes: list[int] | None = None,
    ) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
        reader = root_or_reader
        if not isinstance(reader, LeRobotDatasetReader):
            reader = LeRobotDatasetReader(root_or_reader)
        self.reader, self.chunk_size, self.next_frame, self.augment = reader, chunk_size, next_frame, augment
        if not reader.camera_keys:
            raise ValueError(f"{reader.root} has no image features; a VLA dataset needs at least one camera.")
        self.camera_keys = [_camera_key(c, reader.camera_keys) for c in (cameras or reader.camera_keys)]
        self.cameras = [k[len(OBS_IMAGES) + 1 :] for k in self.camera_keys]
        for key in (OBS_STATE, ACTION):
            if key not in reader.features:
                raise KeyError(f"{reader.root} has no {key!r} feature (it has: {', '.join(reader.feature_keys)}).")
        self.normalizer = normalizer if normalizer is not None else make_normalizer(reader)
        for key in (OBS_STATE, ACTION):
            if key not in self.normalizer.keys:
                raise KeyError(f"The normalizer has no mode for {key!r}; it normalizes {self.normalizer.keys}.")
            data_shape = tuple(reader.features[key]["shape"])
            if self.normalizer.shape(key) != data_shape:
                raise ValueError(
                    f"stats for {key!r} have shape {self.normalizer.shape(key)} but the data has {data_shape}: "
                    "were these stats computed on another dataset?"
                )
        self.has_cot = all(k in reader.features for k in (*_COT_STRINGS, COT_BBOX, COT_BBOX_VISIBLE))
        self.episode_indices = list(range(reader.num_episodes)) if episodes is None else list(episodes)
        for i in self.episode_indices:
            if not 0 <= i < reader.num_episodes:
                raise IndexError(f"Episode {i} out of range: {reader.root} has {reader.num_episodes} episodes.")
        self._load()

    def _load(self) -> None:
        """Decode the selected episodes into flat arrays indexed by position in this dataset."""
        reader = self.reader
        parts: dict[str, list] = {
            k: [] for k in (*self.camera_keys, OBS_STATE, ACTION, COT_BBOX, COT_BBOX_VISIBLE)
        }
        strings: dict[str, list[str]] = {k: [] for k in _COT_STRINGS}
        ends, episode_index, frame_index, index, task_index, offset = [], [], [], [], [], 0
        for i in self.episode_indices:
            ep, meta = reader.episode(i), reader.episodes[i]
            length = len(ep[ACTION])
            for key in parts:
                if key in ep:
                    parts[key].append(ep[key])
            for key in strings:
                strings[key].extend(ep.get(key, [""] * length))
            offset += length
            ends.append(np.full(length, offset, dtype=np.int64))
            episode_index.append(np.full(length, meta["episode_index"], dtype=np.int64))
            frame_index.append(np.arange(length, dtype=np.int64))
            index.append(meta["dataset_from_index"] + np.arange(length, dtype=np.int64))
            task_index.append(np.full(length, reader.tasks.index(ep[TASK]), dtype=np.int64))
        self.images = {k: np.concatenate(parts[k]) for k in self.camera_keys}  # (N, H, W, 3) uint8
        self.state = self.normalizer.normalize(OBS_STATE, np.concatenate(parts[OBS_STATE])).astype(np.float32)
        self.action = self.normalizer.normalize(ACTION, np.concatenate(parts[ACTION])).astype(np.float32)
        self.end = np.concatenate(ends)  # exclusive end (position in this dataset) of each frame's episode
        self.episode_index, self.frame_index = np.concatenate(episode_index), np.concatenate(frame_index)
        self.index, self.task_index = np.concatenate(index), np.concatenate(task_index)
        self.strings = strings
        n = len(self.end)
        self.bbox = (
            np.concatenate(parts[COT_BBOX]).astype(np.float32) if self.has_cot else np.zeros((n, 4), np.float32)
        )
        self.bbox_visible = (
            np.concatenate(parts[COT_BBOX_VISIBLE]).astype(bool) if self.has_cot else np.zeros(n, bool)
        )

    def __len__(self) -> int:
        return len(self.end)

    @property
    def tasks(self) -> list[str]:
        return self.reader.tasks

    @property
    def state_dim(self) -> int:
        return int(self.state.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images[self.camera_keys[0]].shape[1:3])

    def _shift(self) -> tuple[int, int] | None:
        if not self.augment:
            return None
        dy, dx = torch.randint(0, 2 * AUGMENT_PAD + 1, (2,)).tolist()  # torch RNG: seeded per DataLoader worker
        return dy, dx

    @staticmethod
    def _to_tensor(image: np.ndarray, shift: tuple[int, int] | None) -> torch.Tensor:
        if shift is not None:
            h, w = image.shape[:2]
            padded = np.pad(image, ((AUGMENT_PAD, AUGMENT_PAD), (AUGMENT_PAD, AUGMENT_PAD), (0, 0)), mode="edge")
            image = padded[shift[0] : shift[0] + h, shift[1] : shift[1] + w]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"Sample {i} out of range for a dataset of {len(self)} frames.")
        i = int(i) % len(self)
        end = int(self.end[i])
        steps = np.arange(i, i + self.chunk_size)
        shift = self._shift()  # one shift per sample: current and next frames move together
        sample: dict[str, Any] = {k: self._to_tensor(self.images[k][i], shift) for k in self.camera_keys}
        if self.next_frame:
            primary = self.camera_keys[0]
            has_next = i + 1 < end
            nxt = self.images[primary][i + 1] if has_next else np.zeros_like(self.images[primary][i])
            sample[primary + NEXT_IMAGE_SUFFIX] = self._to_tensor(nxt, shift)
            sample[NEXT_IMAGE_IS_PAD] = torch.tensor(not has_next)
        sample[OBS_STATE] = torch.from_numpy(self.state[i])
        sample[ACTION] = torch.from_numpy(self.action[np.minimum(steps, end - 1)])  # (H, A), last action repeated
        sample[ACTION_IS_PAD] = torch.from_numpy(steps >= end)
        sample[TASK] = self.tasks[int(self.task_index[i])]
        for key in _COT_STRINGS:
            sample[key] = self.strings[key][i]
        sample[COT_BBOX] = torch.from_numpy(self.bbox[i])
        sample[COT_BBOX_VISIBLE] = torch.tensor(bool(self.bbox_visible[i]))
        sample["has_cot"] = torch.tensor(self.has_cot and bool(self.strings[COT_TEXT][i]))
        for name in ("episode_index", "frame_index", "index", "task_index"):
            sample[name] = torch.tensor(int(getattr(self, name)[i]), dtype=torch.int64)
        return sample
