"""Importing LaRA-VLA's released CoT annotations (data/lara_annotations.py) and `latentvla annotate DIR` on a
dataset in LeRobot's LIBERO layout (8-D state, no simulator ground truth). Fixtures are written in the exact
format LaRA-VLA's loader reads (see the module docstring)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentvla import constants as K
from latentvla.cli import main as cli
from latentvla.data.lara_annotations import BBOX_FILE, COT_FILE, LaraAnnotations, LaraBoxes
from latentvla.data.lerobot import LeRobotDatasetReader
from latentvla.data.synthetic import write_synthetic_dataset

LENGTH = 12


def _write_lara_files(folder, length=LENGTH):
    folder.mkdir(parents=True, exist_ok=True)
    steps = {
        str(t): {
            "subtask": "reach the alphabet soup" if t < 6 else "put it in the basket",
            "reasoning": f"the robot moves down step {t}",
            "gripper_state": int(t < 6),
        }
        for t in range(length)
        if t != 3
    }
    steps["4"] = {"subtask": "", "reasoning": "", "gripper_state": 1}  # empty: no annotation (LaRA's loader)
    cot = [
        {"episode_index": 0, "steps": steps},
        {"episode_index": 7, "steps": {"0": {"subtask": "not in this dataset", "reasoning": "x"}}},
    ]
    boxes = [[0.1 + 0.01 * t, 0.2, 0.35, 0.5] for t in range(length)]
    boxes[2] = None  # not detected
    scores = [0.9] * length
    scores[2] = None
    bbox = [
        {
            "episode_index": 0,
            "num_steps": length,
            "dense_labels": {"active_bbox": boxes, "active_bbox2": [None] * length},
            "dense_scores": scores,
        },
        {"episode_index": 1, "num_steps": length, "dense_labels": {"active_bbox": [[0.0, 0.0, 1.0, 1.0]]}},
    ]
    (folder / COT_FILE).write_text("\n".join(json.dumps(x) for x in cot) + "\n\n")
    (folder / BBOX_FILE).write_text("\n".join(json.dumps(x) for x in bbox) + "\n")


def test_loader_reads_the_released_format(tmp_path):
    _write_lara_files(tmp_path)
    ann = LaraAnnotations(tmp_path / COT_FILE, tmp_path / BBOX_FILE)
    assert sorted(ann.cot) == [0, 7] and sorted(ann.cot[0]) == [
        0,
        1,
        2,
        5,
        6,
        7,
        8,
        9,
        10,
        11,
    ]  # 3 absent, 4 empty
    step = ann.step_cot(0, 7)
    assert (step.subtask, step.reasoning, step.gripper_state) == (
        "put it in the basket",
        "the robot moves down step 7",
        0,
    )
    assert ann.step_cot(0, 3) is None and ann.step_cot(5, 0) is None
    assert sorted(ann.bbox[0]) == [t for t in range(LENGTH) if t != 2] and ann.bbox[0][0][1] == 0.9
    assert 0 not in ann.bbox2  # all-null second boxes
    xyxy, vis = LaraBoxes(ann).boxes({"episode_index": 0, K.ACTION: np.zeros((LENGTH, 7))}, "image")
    assert vis.tolist() == [t != 2 for t in range(LENGTH)]
    np.testing.assert_allclose(xyxy[5], [0.15, 0.2, 0.35, 0.5], atol=1e-6) and not xyxy[2].any()
    assert LaraAnnotations.find(tmp_path / "elsewhere") is None
    with pytest.raises(FileNotFoundError, match="LaRA-VLA"):
        LaraAnnotations.find(tmp_path, tmp_path / "nothing")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "episode_index"),
        ('{"steps": {}}', "episode_index"),
        ('{"episode_index": 0, "steps": {"a": {"subtask": "x"}}}', "not a frame index"),
    ],
)
def test_malformed_cot_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / COT_FILE
    path.write_text('{"episode_index": 1, "steps": {}}\n' + line + "\n")
    with pytest.raises(ValueError, match=f"{COT_FILE}:2: .*{message}"):
        LaraAnnotations(path)


def test_bad_box_is_an_error(tmp_path):
    path = tmp_path / BBOX_FILE
    path.write_text(json.dumps({"episode_index": 0, "dense_labels": {"active_bbox": [[0.1, 0.2, 0.3]]}}) + "\n")
    with pytest.raises(ValueError, match=r"active_bbox\[0\]: a box must be 4 numbers"):
        LaraAnnotations(bbox_path=path)


def test_annotate_libero_dataset_imports_lara_and_keeps_side_files(tmp_path, capsys):
    data = write_synthetic_dataset(
        tmp_path / "libero", num_episodes=2, length=LENGTH, image_size=16, layout="libero"
    )
    _write_lara_files(data / "annotations")
    assert cli(["annotate", str(data)]) == 0
    out = capsys.readouterr().out
    assert "importing LaRA-VLA annotations" in out and '"lara_cot_fraction": 0.41' in out  # 10 of 24 frames
    assert (data / "annotations" / COT_FILE).is_file()  # the side files survive the atomic rewrite
    reader = LeRobotDatasetReader(data)
    ep0, ep1 = reader.episode(0), reader.episode(1)
    assert ep0[K.COT_SUBTASK][0] == "reach the alphabet soup" and ep0[K.COT_SUBTASK][7] == "put it in the basket"
    assert ep0[K.COT_REASONING][7] == "the robot moves down step 7"
    # frames without a LaRA entry keep the automatic annotation (object name from the instruction)
    assert ep0[K.COT_SUBTASK][3] == "grasp the alphabet soup" and ep0[K.COT_REASONING][3].startswith("globally")
    assert (
        ep0[K.COT_TEXT][5]
        == "Subtask: reach the alphabet soup. BBox: [0.1500 0.2000 0.3500 0.5000]. Reasoning: the robot moves down step 5"
    )
    assert np.asarray(ep0[K.COT_BBOX_VISIBLE]).tolist() == [t != 2 for t in range(LENGTH)]
    assert np.asarray(ep1[K.COT_BBOX_VISIBLE]).tolist() == [True] + [False] * (LENGTH - 1)
    assert ep1[K.COT_SUBTASK][0] == "move toward the cream cheese"  # no LaRA CoT for episode 1
    # the segments come from the 8-D state: fingers close (grasp) and re-open (release)
    assert {"approach", "grasp", "transport", "release"} <= set(ep0[K.COT_SEGMENT])
    # --no-lara ignores the files; a broken file is one error line and exit code 2
    assert cli(["annotate", str(data), "--no-lara"]) == 0
    assert LeRobotDatasetReader(data).episode(0)[K.COT_SUBTASK][0] == "move toward the alphabet soup"
    (data / "annotations" / COT_FILE).write_text("{oops\n")
    capsys.readouterr()
    assert cli(["annotate", str(data)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_annotate_motion_words_use_the_libero_frame(tmp_path):
    """LIBERO's robot faces +x: +x motion is "forward", +y is "left" (Meta-World: +y forward, +x right)."""
    from latentvla.data.annotate import annotate_episode
    from latentvla.envs.registry import get_simulator

    t = np.arange(6, dtype=np.float64)
    state = np.zeros((6, 8))
    state[:, 0] = 0.02 * t  # +x
    state[:, 6], state[:, 7] = 0.04, -0.04
    ep = {K.OBS_STATE: state, K.ACTION: np.zeros((6, 7))}
    kw = dict(task_name=None, instruction="pick up the bowl", box_source=None)
    libero = annotate_episode(ep, **kw, layout=get_simulator("libero").state_layout)
    assert libero[K.COT_REASONING][0].startswith("globally move forward,")
    state[:, 0], state[:, 1] = 0.0, 0.02 * t  # +y
    assert annotate_episode(ep, **kw, layout=get_simulator("libero").state_layout)[K.COT_REASONING][0].startswith(
        "globally move left,"
    )


def test_annotate_keeps_a_video_dataset_in_video_layout(tmp_path):
    pytest.importorskip("av")
    from latentvla.data.lerobot import DatasetWriter
    from latentvla.data.synthetic import synthetic_episode, to_libero_layout

    writer = DatasetWriter(tmp_path / "vid", fps=20, robot_type="panda", video=True)
    for i in range(2):
        ep, meta = to_libero_layout(*synthetic_episode(i, LENGTH, 16, with_cot=False), i)
        writer.add_episode(ep, key=f"e/{i}", meta=meta)
    data = writer.finalize()
    _write_lara_files(data / "annotations")
    assert cli(["annotate", str(data)]) == 0
    reader = LeRobotDatasetReader(data)
    assert reader.features[f"{K.OBS_IMAGES}.image"]["dtype"] == "video"
    assert reader.episode(0)[K.COT_SUBTASK][0] == "reach the alphabet soup"
