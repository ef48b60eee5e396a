"""The writer's output, pinned: digests of every meta and data file of two small synthetic datasets (PNG cameras,
and AV1 video cameras), taken with the code before `data/lerobot_format.py` was split into `data/lerobot/`.
A change to the layout, the column order, a feature spec (names included), the stats or the
episode metadata changes a digest.

Parquet files are digested by content (schema, metadata without the writer library's version, rows with PNG
cells as decoded pixels) and JSON files byte for byte, so a new zlib or parquet writer build does not move them;
video files are not digested (their bytes depend on the encoder build). A deliberate format change updates the
digests in the same commit, with the reason in its message.
"""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentvla.data.synthetic import write_synthetic_dataset

GOLDEN = {
    "png": {
        "data/chunk-000/file-000.parquet": "f4533e444c302ff7",
        "meta/episodes/chunk-000/file-000.parquet": "c1d6ffa1b8231f6a",
        "meta/info.json": "f94de27581079d42",
        "meta/stats.json": "df663f58a91f0d6c",
        "meta/tasks.parquet": "a876667764de5876",
    },
    "video": {
        "data/chunk-000/file-000.parquet": "cc17b386019bab71",
        "meta/episodes/chunk-000/file-000.parquet": "a4569358b5f8b80e",
        "meta/info.json": "8877c3b037b97c73",
        "meta/stats.json": "4c2ba696c27e9855",
        "meta/tasks.parquet": "a876667764de5876",
    },
}


def _cell(value):
    if isinstance(value, dict) and value.get("bytes") is not None:  # a PNG cell: its pixels, not its encoding
        pixels = np.asarray(Image.open(io.BytesIO(value["bytes"]))).tobytes()
        return {"pixels": hashlib.sha256(pixels).hexdigest(), "path": value["path"]}
    return value


def digest(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (".json", ".parquet")):
        if path.suffix == ".json":
            data = path.read_bytes()
        else:
            table = pq.read_table(path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            if "pandas" in meta:  # drop the pyarrow version the pandas metadata records
                pandas = json.loads(meta["pandas"])
                pandas.pop("creator", None)
                meta["pandas"] = pandas
            rows = [{k: _cell(v) for k, v in row.items()} for row in table.to_pylist()]
            data = json.dumps([table.schema.to_string(show_schema_metadata=False), meta, rows]).encode()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()[:16]
    return out


def test_png_dataset_matches_the_golden_digests(tmp_path):
    root = write_synthetic_dataset(
        tmp_path / "png", num_episodes=3, length=5, image_size=8, cameras=("corner4", "top")
    )
    assert digest(root) == GOLDEN["png"]
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["features"]["observation.state"]["names"] == ["hand_x", "hand_y", "hand_z", "gripper"]


def test_video_dataset_matches_the_golden_digests(tmp_path):
    pytest.importorskip("av")
    root = write_synthetic_dataset(tmp_path / "vid", num_episodes=2, length=4, image_size=16, video=True)
    assert digest(root) == GOLDEN["video"]
