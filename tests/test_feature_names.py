"""Feature `names` in meta/info.json come from the caller (the simulator adapter for `collect`), not from the
generic writer: the writer writes the names it is given where their size matches, and null otherwise."""

import json

import numpy as np
import pytest

from latentvla.constants import ACTION, OBS_STATE
from latentvla.data.convert import convert_dataset
from latentvla.data.lerobot import DatasetWriter, LeRobotDatasetReader
from latentvla.data.lerobot.columns import feature_spec, vector_names
from latentvla.data.synthetic import synthetic_episode, write_synthetic_dataset
from latentvla.envs.registry import SIMULATORS, get_simulator


def _write(root, names):
    writer = DatasetWriter(root, fps=10, robot_type="test", names=names)
    for i in range(2):
        episode, meta = synthetic_episode(i, 5)
        writer.add_episode(episode, key=f"k{i}", meta=meta)
    return json.loads((writer.finalize() / "meta" / "info.json").read_text())["features"]


def test_writer_writes_the_names_it_is_given(tmp_path):
    names = {OBS_STATE: ("a", "b", "c", "d"), ACTION: ("w", "x", "y", "z", "too many")}
    features = _write(tmp_path / "named", names)
    assert features[OBS_STATE]["names"] == ["a", "b", "c", "d"]
    assert features[ACTION]["names"] is None  # 5 names for 4 dimensions: not written
    unnamed = _write(tmp_path / "unnamed", None)
    assert unnamed[OBS_STATE]["names"] is None and unnamed[ACTION]["names"] is None  # no hidden default
    assert {k: v for k, v in features.items() if k not in (OBS_STATE, ACTION)} == {
        k: v for k, v in unnamed.items() if k not in (OBS_STATE, ACTION)
    }


def test_feature_spec_names_only_fit_one_dimensional_vectors():
    assert feature_spec("x", np.zeros((3, 2)), {"x": ["a", "b"]})["names"] == ["a", "b"]
    assert feature_spec("x", np.zeros((3, 2, 2)), {"x": ["a", "b"]})["names"] is None
    assert feature_spec("x", np.zeros(3), {"x": ["a"]})["names"] == ["a"]  # a scalar column has shape [1]
    assert feature_spec("x", np.zeros((3, 2)))["names"] is None


@pytest.mark.parametrize("name", sorted(SIMULATORS))
def test_simulator_feature_names_fit_its_spaces(name):
    sim = get_simulator(name)
    sizes = {OBS_STATE: sim.state_dim, ACTION: sim.action_dim}
    for key, names in sim.feature_names.items():
        assert key in sizes and len(names) == sizes[key], (name, key, names)
        assert all(isinstance(n, str) and n for n in names)
    if name == "metaworld":  # what collected Meta-World datasets have always carried
        assert sim.feature_names[OBS_STATE] == ("hand_x", "hand_y", "hand_z", "gripper")


def test_convert_carries_the_source_names_over(tmp_path):
    src = write_synthetic_dataset(tmp_path / "src", num_episodes=2, length=4, image_size=8)
    info = json.loads((src / "meta" / "info.json").read_text())
    info["features"][ACTION]["names"] = ["right", "forward", "up", "grip"]
    info["features"][OBS_STATE]["names"] = {"motors": ["a", "b", "c", "d"]}  # LeRobot's nested form: not flat
    (src / "meta" / "info.json").write_text(json.dumps(info))
    assert vector_names(info["features"])[ACTION] == ["right", "forward", "up", "grip"]
    dst = LeRobotDatasetReader(convert_dataset(src, tmp_path / "dst", video=False))
    assert dst.features[ACTION]["names"] == ["right", "forward", "up", "grip"]
    assert dst.features[OBS_STATE]["names"] is None
