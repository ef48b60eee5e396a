"""Lazy per-sample decoding: nothing decoded at open, a sample decodes only its own frames, samples
equal the eager (decode-everything) path bit for bit, DDP ranks decode only their shard, caches are bounded."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from latentvla.data import frames as frames_mod
from latentvla.data.dataset import VLADataset
from latentvla.data.decoding import DECODE_COUNTS
from latentvla.data.frames import LRUCache
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset
from latentvla.train.sampler import ResumableBatchSampler

torch.set_num_threads(1)
CAMS = ("corner4", "top")
KEYS = [f"observation.images.{c}" for c in CAMS]
LENGTH = 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("frames") / "ds", num_episodes=4, length=LENGTH, cameras=CAMS
    )


@pytest.fixture
def decoded_rows(monkeypatch):
    """Records (key, file row) of every PNG cell the lazy path reads and decodes."""
    rows = []
    original = frames_mod._ParquetImages.cell

    def cell(self, path, key, row):
        rows.append((key, row))
        return original(self, path, key, row)

    monkeypatch.setattr(frames_mod._ParquetImages, "cell", cell)
    DECODE_COUNTS.clear()
    return rows


def test_open_decodes_nothing_and_a_sample_decodes_only_its_frames(root, decoded_rows):
    ds = VLADataset(root, chunk_size=3, cameras=list(CAMS))
    assert sum(DECODE_COUNTS.values()) == 0 and decoded_rows == []
    ds[LENGTH + 5]  # episode 1, frame 5: primary frames 5 and 6, second camera frame 5
    assert DECODE_COUNTS["png"] == 3
    first = ds.frames.locations[KEYS[0]][1].first_row
    assert sorted(decoded_rows) == sorted([(KEYS[0], first + 5), (KEYS[0], first + 6), (KEYS[1], first + 5)])
    ds[LENGTH + 5]  # the same sample again: served by the decoded-frame cache
    assert DECODE_COUNTS["png"] == 3
    ds[LENGTH - 1]  # last frame of episode 0: no next frame to decode
    assert DECODE_COUNTS["png"] == 5


def _eager_sample(reader, ds, i, shift):
    """Today's eager path: every frame decoded at open into (N, H, W, 3) arrays, sliced per sample."""
    images = {
        k: np.concatenate([reader.episode(e)[k] for e in range(reader.num_episodes)]) for k in ds.camera_keys
    }
    end = int(ds.end[i])
    out = {k: VLADataset._to_tensor(images[k][i], shift) for k in ds.camera_keys}
    primary = ds.camera_keys[0]
    nxt = images[primary][i + 1] if i + 1 < end else np.zeros_like(images[primary][i])
    out[primary + ".next"] = VLADataset._to_tensor(nxt, shift)
    return out


@pytest.mark.parametrize("augment", [False, True])
def test_lazy_samples_equal_the_eager_path_bit_for_bit(root, augment):
    reader = LeRobotDatasetReader(root)
    ds = VLADataset(root, chunk_size=4, cameras=list(CAMS), augment=augment)
    for i in (0, 5, LENGTH - 1, LENGTH, 3 * LENGTH + 7, 4 * LENGTH - 1):
        torch.manual_seed(i)
        sample = ds[i]
        torch.manual_seed(i)
        expected = _eager_sample(reader, ds, i, ds._shift())
        for key, value in expected.items():
            assert torch.equal(sample[key], value), (i, key)


def test_ddp_rank_decodes_only_its_shard(root, decoded_rows):
    ds = VLADataset(root, chunk_size=2, cameras=list(CAMS[:1]), next_frame=False)
    rank_batches = [
        ResumableBatchSampler(len(ds), 8, seed=0, rank=r, world_size=2).batch(c) for r in (0, 1) for c in range(2)
    ]
    mine = [i for batch in rank_batches[:2] for i in batch]
    for i in mine:  # rank 0's first two micro-batches
        ds[i]
    rows = {row for _, row in decoded_rows}
    first = {e: loc.first_row for e, loc in enumerate(ds.frames.locations[KEYS[0]])}
    expected = {first[int(ds.episode_index[i])] + int(ds.frame_index[i]) for i in mine}
    assert rows == expected and DECODE_COUNTS["png"] == len(set(mine))
    other = {first[int(ds.episode_index[i])] + int(ds.frame_index[i]) for b in rank_batches[2:] for i in b}
    assert other - expected and not rows & (other - expected)  # rank 1's own frames were never touched


def test_decoded_cache_stays_within_budget(root):
    ds = VLADataset(root, chunk_size=2, cameras=list(CAMS), decoded_cache_mb=4 * 32 * 32 * 3 / 2**20)
    for i in range(len(ds)):
        ds[i]
    cache = ds.frames._decoded
    assert len(cache) == 4 and cache.nbytes == 4 * 32 * 32 * 3


def test_lru_cache_evicts_least_recently_used_by_bytes():
    cache = LRUCache(max_bytes=10)
    cache.put("a", 1, 4)
    cache.put("b", 2, 4)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3, 4)  # 12 bytes > 10: evicts "b"
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3 and cache.nbytes == 8
    cache.put("huge", 0, 11)  # larger than the budget: not cached, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


def test_encoded_row_groups_are_read_once_when_the_dataset_fits_the_budget(root):
    """A random pass over the dataset reads each camera's row groups once with the default budget (was ~3 MB per
    frame on libero_object_20 with a 64 MB budget); with no budget every frame re-reads its group."""
    order = np.random.default_rng(0).permutation(LENGTH * 4)

    def group_reads(**budget):
        ds = VLADataset(root, chunk_size=2, cameras=list(CAMS), decoded_cache_mb=0, **budget)
        for i in order:
            ds[int(i)]
        return ds.frames._parquet.group_reads, ds

    reads, ds = group_reads()
    files = {loc.path for key in ds.camera_keys for loc in ds.frames.locations[key]}
    groups = sum(pq.ParquetFile(f).metadata.num_row_groups for f in files) * len(CAMS)
    assert reads == groups
    assert group_reads(encoded_cache_mb=0)[0] > 2 * len(order)  # current + next frame, per camera, each re-read
