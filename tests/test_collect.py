"""Expert collection end to end: write, read back, annotation coverage, interrupted runs and --resume."""

import numpy as np
import pytest

from latentvla import constants as K
from latentvla.envs import metaworld as _metaworld  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)

pytestmark = pytest.mark.sim


@pytest.fixture(autouse=True)
def _need_sim():
    pytest.importorskip("metaworld")


def test_collect_writes_annotated_dataset(tmp_path):
    from latentvla.cli import main
    from latentvla.data.lerobot_format import LeRobotDatasetReader

    out = tmp_path / "ds"
    argv = ["collect", "--env", "metaworld", "--tasks", "reach", "--episodes-per-task", "2", "--image-size", "64",
            "--out", str(out), "--camera", "corner4,gripperPOV"]  # fmt: skip
    assert main(argv) == 0
    reader = LeRobotDatasetReader(out)
    assert reader.num_episodes == 2
    assert set(reader.camera_keys) == {f"{K.OBS_IMAGES}.corner4", f"{K.OBS_IMAGES}.gripperPOV"}
    assert reader.info["latentvla_collect"]["success_rate"] == 1.0
    assert [e["key"] for e in reader.episodes] == ["reach-v3/train/0000", "reach-v3/train/0001"]
    ep = reader.episode(1)
    length = len(ep[K.ACTION])
    assert ep[f"{K.OBS_IMAGES}.corner4"].shape == (length, 64, 64, 3)
    assert ep[K.TASK] == "reach the goal position"
    assert np.all(np.abs(ep[K.ACTION]) <= 1.0)
    assert ep[K.PRIV_TARGET_CORNERS].shape == (length, 24)
    assert all(s == "move toward the goal" for s in ep[K.COT_SUBTASK])
    assert np.mean(ep[K.COT_BBOX_VISIBLE]) >= 0.9
    assert ep[K.COT_TEXT][0].startswith("Subtask: move toward the goal BBox: [")
    # the same (task, episode, seed) reproduces the same first frame
    from latentvla.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    env = MetaWorldEnv(MetaWorldConfig("reach", cameras=("corner4",), image_size=64))
    obs, _ = env.reset(episode=1, split="train", seed=0)
    env.close()
    np.testing.assert_array_equal(obs[f"{K.OBS_IMAGES}.corner4"], ep[f"{K.OBS_IMAGES}.corner4"][0])
    with pytest.raises(FileExistsError, match="already holds"):
        main(argv)


def test_interrupted_collection_refuses_then_resumes(tmp_path, monkeypatch):
    from latentvla.data import collect as C
    from latentvla.data.lerobot_format import LeRobotDatasetReader

    out = tmp_path / "ds"
    kwargs = dict(image_size=64, out=out, progress=False)

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(C, "_finish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            C.collect("reach", 1, **kwargs)
    assert not out.exists() and out.with_name("ds.partial").is_dir()
    with pytest.raises(FileExistsError, match="--resume"):
        C.collect("reach", 2, **kwargs)
    summary = C.collect("reach", 2, resume=True, **kwargs)
    assert summary["episodes_kept"] == 2 and summary["attempts"] == 2
    reader = LeRobotDatasetReader(out)
    assert reader.num_episodes == 2 and not out.with_name("ds.partial").exists()
    assert {e["key"] for e in reader.episodes} == {"reach-v3/train/0000", "reach-v3/train/0001"}
