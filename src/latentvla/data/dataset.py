"""The torch `Dataset` of training samples (docs/design.md "training sample"), images decoded lazily per sample.

Opening reads only the columns without pixels (state, actions, CoT, indices: small) and normalizes state and
actions once with the `Normalizer` (the same one saved with the checkpoint). Images stay on disk: `__getitem__`
asks a `FrameStore` (data/frames.py) for exactly the frames the sample needs (each camera's frame t, and t+1 of
the primary camera), decoded from PNG-in-parquet or video, through small per-worker caches. So opening costs
time and memory proportional to the metadata, and a dataset larger than RAM trains on every DDP rank.

Action chunks follow LeRobot's `delta_timestamps` semantics: frame t gets actions
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
    COT_BBOX_TEXT,
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
from latentvla.data.cot import format_box
from latentvla.data.frames import DECODED_CACHE_MB, ENCODED_CACHE_MB, FrameStore, ParquetLocation
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.stats import DEFAULT_MODES, Normalizer
from latentvla.data.validate import validate_dataset
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


def shift_box(
    box: np.ndarray, visible: bool, shift: tuple[int, int] | None, size: tuple[int, int]
) -> tuple[np.ndarray, bool]:
    """The normalized xyxy `box` after the random shift `shift` = (dy, dx) crop offset into the image padded by
    AUGMENT_PAD: content moves by (AUGMENT_PAD - dy, AUGMENT_PAD - dx) px; the box moves with it and is clipped
    to the frame, and a box clipped to nothing is no longer visible (the BBox text must describe the pixels the
    model sees, not the unshifted frame: at 64 px a 4 px error is larger than the goal dots)."""
    if shift is None or not visible:
        return box, visible
    h, w = size
    off = np.array([(AUGMENT_PAD - shift[1]) / w, (AUGMENT_PAD - shift[0]) / h] * 2, dtype=np.float32)
    moved = np.clip(box + off, 0.0, 1.0).astype(np.float32)
    return moved, bool(moved[2] > moved[0] and moved[3] > moved[1])


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
        decoded_cache_mb: float = DECODED_CACHE_MB,
        encoded_cache_mb: float = ENCODED_CACHE_MB,
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
        validate_dataset(reader, camera_keys=self.camera_keys)  # NaN/inf, stats, empty, image shape: one line
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
        self.frames = self._open_frames(decoded_cache_mb, encoded_cache_mb)

    def _open_frames(self, decoded_cache_mb: float, encoded_cache_mb: float) -> FrameStore:
        """Where each selected episode's frames live, per camera (metadata only: nothing is decoded)."""
        reader, kinds, locations = self.reader, {}, {}
        first_rows = None
        for key in self.camera_keys:
            kinds[key] = reader.features[key]["dtype"]
            if kinds[key] == "image":
                first_rows = first_rows or reader.first_rows(self.episode_indices)
                locations[key] = [ParquetLocation(path, row) for path, row in first_rows]
            else:
                locations[key] = [reader.video_location(i, key) for i in self.episode_indices]
        shape = {k: tuple(reader.features[k]["shape"]) for k in self.camera_keys}
        return FrameStore(
            kinds,
            locations,
            shape,
            video_timestamps=self._timestamps,
            decoded_cache_mb=decoded_cache_mb,
            encoded_cache_mb=encoded_cache_mb,
        )

    def _load(self) -> None:
        """Read the selected episodes' non-image columns into flat arrays indexed by position in this dataset."""
        reader = self.reader
        parts: dict[str, list] = {k: [] for k in (OBS_STATE, ACTION, COT_BBOX, COT_BBOX_VISIBLE)}
        self._timestamps: list[np.ndarray] = []
        strings: dict[str, list[str]] = {k: [] for k in _COT_STRINGS}
        ends, episode_index, frame_index, index, task_index, offset = [], [], [], [], [], 0
        for i in self.episode_indices:
            ep, meta = reader.episode(i, images=False), reader.episodes[i]
            length = len(ep[ACTION])
            self._timestamps.append(np.asarray(ep.get("timestamp", np.arange(length) / reader.fps), np.float64))
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
        self.state = self.normalizer.normalize(OBS_STATE, np.concatenate(parts[OBS_STATE])).astype(np.float32)
        self.action = self.normalizer.normalize(ACTION, np.concatenate(parts[ACTION])).astype(np.float32)
        self.end = np.concatenate(ends)  # exclusive end (position in this dataset) of each frame's episode
        self._episode_ends = np.cumsum([len(t) for t in self._timestamps])
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
        return tuple(self.reader.features[self.camera_keys[0]]["shape"][:2])

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
        episode, t = int(np.searchsorted(self._episode_ends, i, side="right")), int(self.frame_index[i])
        has_next = self.next_frame and i + 1 < end
        sample: dict[str, Any] = {}
        for n, key in enumerate(self.camera_keys):
            # the primary camera's current and next frame come from one decode pass (one seek for video)
            frames = self.frames.frames(key, episode, [t, t + 1] if has_next and n == 0 else [t])
            sample[key] = self._to_tensor(frames[0], shift)
            if n == 0 and self.next_frame:
                nxt = frames[1] if has_next else np.zeros_like(frames[0])
                sample[key + NEXT_IMAGE_SUFFIX] = self._to_tensor(nxt, shift)
                sample[NEXT_IMAGE_IS_PAD] = torch.tensor(not has_next)
        sample[OBS_STATE] = torch.from_numpy(self.state[i])
        sample[ACTION] = torch.from_numpy(self.action[np.minimum(steps, end - 1)])  # (H, A), last action repeated
        sample[ACTION_IS_PAD] = torch.from_numpy(steps >= end)
        sample[TASK] = self.tasks[int(self.task_index[i])]
        for key in _COT_STRINGS:
            sample[key] = self.strings[key][i]
        box, visible = shift_box(self.bbox[i], bool(self.bbox_visible[i]), shift, self.image_size)
        sample[COT_BBOX] = torch.from_numpy(box)
        sample[COT_BBOX_VISIBLE] = torch.tensor(visible)
        sample[COT_BBOX_TEXT] = format_box(box, visible)  # the CoT's box string, made here where host work is free
        sample["has_cot"] = torch.tensor(self.has_cot and bool(self.strings[COT_TEXT][i]))
        for name in ("episode_index", "frame_index", "index", "task_index"):
            sample[name] = torch.tensor(int(getattr(self, name)[i]), dtype=torch.int64)
        return sample
