"""`latentvla annotate` adds the cot.* columns to the data files and leaves the user's dataset otherwise as it was
(nothing lost): videos byte-identical, feature names and every existing stat (q01..q99 included) kept, the
format version kept (a LeRobot 0.3.3 v2.1 dataset stays v2.1), and the dataset still reads pixel-identically to
LeRobot's own reader. Checked on the datasets LeRobot itself wrote (/work/shared/fixtures/lerobot-written)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentvla import constants as K
from latentvla.cli import main as cli
from latentvla.data.lerobot_format import LeRobotDatasetReader

FIXTURES = Path(
    os.environ.get(
        "LATENTVLA_LEROBOT_FIXTURES",
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lerobot-written",
    )
)
COT = (K.COT_SEGMENT, K.COT_SUBTASK, K.COT_BBOX, K.COT_BBOX_VISIBLE, K.COT_REASONING, K.COT_TEXT)


def _fixture(name: str, tmp_path: Path) -> Path:
    if not (FIXTURES / name).is_dir():
        pytest.skip(f"LeRobot-written fixture {FIXTURES / name} not available")
    return Path(shutil.copytree(FIXTURES / name, tmp_path / name))


def _hashes(root: Path, sub: str) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / sub).rglob("*"))
        if p.is_file()
    }


def _stats(root: Path) -> dict:
    meta = root / "meta"
    if (meta / "stats.json").exists():
        return json.loads((meta / "stats.json").read_text())
    return {
        json.loads(line)["episode_index"]: json.loads(line)["stats"]
        for line in (meta / "episodes_stats.jsonl").read_text().splitlines()
    }


def _tables(root: Path) -> dict[str, object]:
    return {str(p.relative_to(root)): pq.read_table(p) for p in sorted((root / "data").rglob("*.parquet"))}


@pytest.mark.parametrize("name", ["lr_img", "lr_vid", "lr21_vid"])
def test_annotate_changes_nothing_but_the_cot_columns(tmp_path, name, capsys):
    pytest.importorskip("av")
    root = _fixture(name, tmp_path)
    info_before, stats_before = json.loads((root / "meta" / "info.json").read_text()), _stats(root)
    videos_before, tables_before = _hashes(root, "videos") if (root / "videos").exists() else {}, _tables(root)
    assert cli(["annotate", str(root)]) == 0
    capsys.readouterr()
    # videos: byte-identical (never decoded, never re-encoded)
    assert (_hashes(root, "videos") if (root / "videos").exists() else {}) == videos_before
    # info.json: same version, same features (names included); only the cot.* features added
    info = json.loads((root / "meta" / "info.json").read_text())
    assert info["codebase_version"] == info_before["codebase_version"]
    assert {k: v for k, v in info.items() if k != "features"} == {
        k: v for k, v in info_before.items() if k != "features"
    }
    assert {k: v for k, v in info["features"].items() if k not in COT} == info_before["features"]
    assert info["features"][K.OBS_STATE]["names"] == info_before["features"][K.OBS_STATE]["names"] is not None
    assert set(info["features"]) - set(info_before["features"]) == set(COT)
    # stats: every existing entry (q01 / q99 included) unchanged; cot.bbox stats added with the same stat names
    stats = _stats(root)
    if name == "lr21_vid":
        for ep, before in stats_before.items():
            assert {k: v for k, v in stats[ep].items() if k != K.COT_BBOX} == before
            assert set(stats[ep][K.COT_BBOX]) == set(before[K.OBS_STATE])
    else:
        assert {k: v for k, v in stats.items() if k != K.COT_BBOX} == stats_before
        assert "q01" in stats[K.OBS_STATE] and set(stats[K.COT_BBOX]) == set(stats_before[K.OBS_STATE])
    # data files: the same files, every existing column equal (images bytes included), cot.* appended
    tables = _tables(root)
    assert tables.keys() == tables_before.keys()
    for path, before in tables_before.items():
        assert tables[path].select(before.column_names).equals(before), path
        hf = json.loads(tables[path].schema.metadata[b"huggingface"])["info"]["features"]
        assert set(COT) <= set(hf) and hf[K.COT_SUBTASK] == {"dtype": "string", "_type": "Value"}
    # still reads as LeRobot reads it: pixels, state, action, tasks
    expected = np.load(FIXTURES / f"{name}.lerobot_reader.npz")
    reader = LeRobotDatasetReader(root)
    episodes = [reader.episode(i) for i in range(reader.num_episodes)]
    for key in (f"{K.OBS_IMAGES}.image", f"{K.OBS_IMAGES}.image2", K.OBS_STATE, K.ACTION):
        got = np.concatenate([ep[key] for ep in episodes])
        np.testing.assert_array_equal(got, expected[key.replace(".", "_")], err_msg=key)
    assert [t for ep in episodes for t in [ep[K.TASK]] * len(ep[K.ACTION])] == expected["task"].tolist()
    # and carries the annotation
    ep = episodes[1]
    assert ep[K.COT_SUBTASK][0] == "move toward the cream cheese" and ep[K.COT_TEXT][0].startswith("Subtask: ")
    assert len(ep[K.COT_BBOX]) == len(ep[K.ACTION]) and reader.version == info_before["codebase_version"]


def test_annotating_twice_replaces_the_columns(tmp_path, capsys):
    root = _fixture("lr_img", tmp_path)
    assert cli(["annotate", str(root)]) == 0
    first = _tables(root)
    assert cli(["annotate", str(root)]) == 0
    second = _tables(root)
    for path, table in first.items():
        assert second[path].column_names == table.column_names and second[path].equals(table)
    assert not list(root.rglob("*.tmp"))


def test_annotated_fixture_trains_a_reasoning_preset_config(tmp_path, capsys):
    from latentvla.config import get_preset
    from latentvla.train.loop import fit_policy_to_dataset

    root = _fixture("lr_img", tmp_path)
    with pytest.raises(ValueError, match="latentvla annotate"):
        fit_policy_to_dataset(get_preset("lara", "micro"), LeRobotDatasetReader(root))
    assert cli(["annotate", str(root)]) == 0
    cfg = fit_policy_to_dataset(get_preset("lara", "micro"), LeRobotDatasetReader(root))
    assert cfg.policy.cameras == ("image", "image2") and cfg.policy.image_size == 128
