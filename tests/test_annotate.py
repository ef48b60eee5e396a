"""CoT annotation on synthetic trajectories: segments, direction words, boxes, Stage-I strings."""

import json
import re

import numpy as np
import pytest

from latentvla import constants as K
from latentvla.data import annotate as A
from latentvla.data.boxes import ColumnBoxes, ProjectedGeometryBoxes, finalize_boxes
from latentvla.envs.metaworld import box_corners, project_points


def _grasp_gripper() -> np.ndarray:
    # open 10 frames, close over 5, rebound a little while carrying, hold, open over 5, stay open
    g = [1.0] * 10 + list(np.linspace(0.9, 0.4, 5)) + [0.45, 0.47] + [0.47] * 8 + list(np.linspace(0.55, 1.0, 5))
    return np.array(g + [1.0] * 5)


def test_grasp_segments_from_gripper_changes():
    names, keyframes = A.segment_episode(_grasp_gripper(), motion="grasp")
    runs = [(n, names.index(n)) for n in dict.fromkeys(names)]
    assert runs == [("approach", 0), ("grasp", 9), ("transport", 14), ("release", 24), ("retract", 29)]
    assert keyframes == [0, 9, 14, 24, 29, 34]
    assert len(names) == 35


def test_finger_rebound_is_not_a_release():
    g = np.array([1.0] * 5 + [0.8, 0.6, 0.4] + [0.46, 0.48, 0.47] * 4)
    names, _ = A.segment_episode(g, motion="grasp")
    assert "release" not in names and names[-1] == "transport"


def test_grasp_task_without_closure_falls_back_to_push_vocabulary():
    length = 30
    contact = np.zeros(length)
    contact[12:20] = 1
    obj = np.zeros((length, 3))
    obj[14:20, 1] = np.linspace(0.0, 0.05, 6)
    obj[20:, 1] = 0.05
    names, keyframes = A.segment_episode(np.ones(length), motion="grasp", contact=contact, object_pos=obj)
    assert names[:12] == ["approach"] * 12
    assert names[12] == "contact" and names[19] == "push" and names[20:] == ["retract"] * 10
    assert keyframes[0] == 0 and keyframes[-1] == length - 1 and 12 in keyframes


def test_push_ignores_far_object_motion_and_reset_contact():
    length = 20
    obj = np.zeros((length, 3))
    obj[:, 1] = np.arange(length) * 0.002  # drifts on its own, far from the hand
    ee = np.full((length, 3), 1.0)
    contact = np.zeros(length)
    contact[0] = 1  # hand spawned touching it
    names, _ = A.segment_episode(np.ones(length), motion="push", contact=contact, object_pos=obj, ee=ee)
    assert set(names) == {"approach"}


@pytest.mark.parametrize(
    ("delta", "deadzone", "words"),
    [
        ((0.0, 0.05, 0.0), 0.01, "forward"),
        ((-0.03, 0.05, 0.02), 0.01, "forward-left and up"),
        ((0.04, -0.05, -0.03), 0.01, "backward-right and down"),
        ((0.005, 0.0, -0.004), 0.01, "stay"),  # inside the dead-zone
        ((0.001, 0.0, -0.1), 0.01, "down"),
        ((0.012, 0.0, -0.1), 0.01, "down"),  # above the dead-zone but < DOMINANCE x the main motion
        ((0.0, 0.0, 0.002), 0.001, "up"),
    ],
)
def test_direction_words(delta, deadzone, words):
    assert A.direction_words(np.array(delta), deadzone) == words


def test_subtask_texts_name_the_object():
    assert A.subtask_text("approach", "puck") == "move toward the puck"
    assert A.subtask_text("transport", "puck") == "carry the puck to the goal"
    assert A.subtask_text("push", "drawer", "pull the drawer open") == "pull the drawer"
    assert A.subtask_text("retract", "puck") == "retract the gripper"
    assert A.target_noun("Open the drawer.") == "drawer"
    with pytest.raises(ValueError, match="Unknown segment"):
        A.subtask_text("dance", "puck")


def test_project_points_centre_and_flip():
    # camera at the origin looking along world -z (identity xmat), 90 deg fov
    params = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 90.0])
    uv, front = project_points(np.array([[0, 0, -1.0], [0.5, 0.5, -1.0], [0, 0, 1.0]]), params, "topview")
    np.testing.assert_allclose(uv[:2], [[0.5, 0.5], [0.75, 0.25]])
    assert front.tolist() == [True, True, False]
    uv_flipped, _ = project_points(np.array([[0.5, 0.5, -1.0]]), params, "corner4")
    np.testing.assert_allclose(uv_flipped, [[0.25, 0.75]])


def _box_episode(centres: np.ndarray, half: float = 0.1) -> dict:
    params = np.array([0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 90.0], dtype=np.float32)
    corners = np.stack([box_corners(c - half, c + half).reshape(24) for c in centres]).astype(np.float32)
    return {
        K.ACTION: np.zeros((len(centres), 4), np.float32),
        K.PRIV_TARGET_CORNERS: corners,
        f"{K.PRIV_CAMERA}topview": np.tile(params, (len(centres), 1)),
    }


def test_projected_boxes_clip_and_visibility():
    centres = np.array([[0, 0, -2.0], [1.95, 0, -2.0], [5.0, 0, -2.0], [0, 0, 0.0]])
    xyxy, visible = ProjectedGeometryBoxes().boxes(_box_episode(centres), "topview")
    assert xyxy.dtype == np.float32 and visible.tolist() == [True, True, False, False]
    assert np.all((xyxy >= 0) & (xyxy <= 1))
    assert xyxy[0, 0] < 0.5 < xyxy[0, 2]
    assert xyxy[1, 2] == 1.0  # partly out of view: clipped, still visible
    assert np.all(xyxy[2:] == 0)  # invisible rows are zeroed
    assert np.all(np.round(xyxy, 4) == xyxy)


def test_column_boxes_from_jsonl(tmp_path):
    path = tmp_path / "boxes.jsonl"
    rows = [{"episode_index": 2, "frame_index": 1, "bbox": [0.1, 0.2, 0.3, 0.4]}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    ep = {K.ACTION: np.zeros((3, 4)), "episode_index": 2}
    xyxy, visible = ColumnBoxes(jsonl=path).boxes(ep, "corner4")
    assert visible.tolist() == [False, True, False]
    np.testing.assert_allclose(xyxy[1], [0.1, 0.2, 0.3, 0.4], atol=1e-6)
    path.write_text('{"episode_index": 0}\n')
    with pytest.raises(ValueError, match="boxes.jsonl:1"):
        ColumnBoxes(jsonl=path)
    xyxy, visible = finalize_boxes(np.array([[0.2, 0.2, 0.1, 0.5]]), np.array([True]))
    assert not visible[0]  # empty (x2 < x1) box


def test_annotate_episode_columns_and_stage1_format():
    g = _grasp_gripper()
    length = len(g)
    ee = np.zeros((length, 3))
    ee[:10, 1] = np.linspace(0.0, 0.1, 10)  # approach: forward
    ee[10:, 1] = 0.1
    ee[14:, 2] = np.linspace(0.0, 0.1, length - 14)  # carry: up
    state = np.concatenate([ee, g[:, None]], axis=1).astype(np.float32)
    episode = {K.OBS_STATE: state, K.ACTION: np.zeros((length, 4), np.float32), K.TASK: "pick up the puck"}
    centres = np.tile([0.0, 0.0, -2.0], (length, 1))
    episode |= _box_episode(centres)
    cols = A.annotate_episode(
        episode,
        task_name="pick-place",
        instruction="pick up the puck",
        box_source=ProjectedGeometryBoxes(),
        camera="topview",
    )
    assert all(len(cols[k]) == length for k in (K.COT_SEGMENT, K.COT_SUBTASK, K.COT_REASONING, K.COT_TEXT))
    assert cols[K.COT_BBOX].shape == (length, 4) and cols[K.COT_BBOX_VISIBLE].all()
    assert cols[K.COT_SUBTASK][0] == "move toward the puck"
    assert cols[K.COT_REASONING][0].startswith(
        "globally move forward, locally move forward, keep the gripper open"
    )
    assert cols[K.COT_REASONING][10].endswith("close the gripper")
    assert "globally move up" in cols[K.COT_REASONING][15]
    pattern = (
        r"Subtask: [a-z ]+\. BBox: \[(\d\.\d{4} ){3}\d\.\d{4}\]\. Reasoning: globally .+, locally .+, .+gripper.*"
    )
    assert all(re.fullmatch(pattern, text) for text in cols[K.COT_TEXT])
    # unknown task + no box source: noun fallback, boxes flagged invisible
    cols = A.annotate_episode(episode, task_name=None, instruction="lift the kettle", box_source=None)
    assert cols[K.COT_SUBTASK][0] == "move toward the kettle" and not cols[K.COT_BBOX_VISIBLE].any()


def test_annotate_dataset_rewrites_atomically(tmp_path):
    from latentvla.cli import main
    from latentvla.data.lerobot import DatasetWriter, LeRobotDatasetReader

    g = _grasp_gripper()
    length = len(g)
    state = np.concatenate([np.zeros((length, 3)), g[:, None]], axis=1).astype(np.float32)
    image = np.zeros((length, 8, 8, 3), np.uint8)
    root = tmp_path / "ds"
    writer = DatasetWriter(root, fps=10, robot_type="test")
    for i in range(2):
        episode = {
            K.OBS_STATE: state,
            K.ACTION: np.zeros((length, 4), np.float32),
            K.TASK: "pick up the cube",
            f"{K.OBS_IMAGES}.corner4": image,
        }
        writer.add_episode(episode, key=f"ep{i}", meta={"task_name": "custom"})
    writer.finalize()
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(json.dumps({"episode_index": 1, "frame_index": 3, "bbox": [0.1, 0.1, 0.2, 0.2]}) + "\n")
    assert main(["annotate", str(root), "--boxes-jsonl", str(boxes)]) == 0
    reader = LeRobotDatasetReader(root)
    assert reader.num_episodes == 2 and [e["key"] for e in reader.episodes] == ["ep0", "ep1"]
    assert reader.episodes[0]["task_name"] == "custom"
    ep = reader.episode(1)
    assert ep[K.COT_SUBTASK][0] == "move toward the cube" and ep[K.COT_SEGMENT][12] == "grasp"
    assert ep[K.COT_BBOX_VISIBLE].tolist() == [t == 3 for t in range(length)]
    assert not (tmp_path / "ds.annotating").exists() and not (tmp_path / "ds.old").exists()
