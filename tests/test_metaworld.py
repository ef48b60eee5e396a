"""Meta-World adapter: task table/suites, seeding, observations, expert, projection vs segmentation."""

import numpy as np
import pytest

from latentvla import constants as K
from latentvla.envs import metaworld as _metaworld  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)
from latentvla.envs.metaworld_tasks import SUITES, TASKS, resolve_tasks, task_spec


def test_suites_and_resolve_tasks():
    assert len(TASKS) == 50 and len(SUITES["mt50"]) == 50 and len(SUITES["mt10"]) == 10
    sizes = [len(SUITES[s]) for s in ("easy", "medium", "hard", "very_hard")]
    assert sizes == [28, 11, 6, 5]
    assert sorted(sum((SUITES[s] for s in ("easy", "medium", "hard", "very_hard")), ())) == sorted(TASKS)
    assert set(SUITES["mt10"]) <= set(TASKS)
    assert resolve_tasks("pick-place") == ["pick-place-v3"]
    tasks = resolve_tasks("pick-place-v3,mt10")
    assert tasks[0] == "pick-place-v3" and len(tasks) == 10  # no duplicate
    assert resolve_tasks("easy") == list(SUITES["easy"])
    assert task_spec("pick-place").target == "puck" and task_spec("drawer-open-v3").motion == "push"
    with pytest.raises(ValueError, match="Did you mean 'pick-place'"):
        resolve_tasks("pick-plce")
    with pytest.raises(ValueError, match="No Meta-World task"):
        resolve_tasks(" , ")


def test_seeds_are_deterministic_and_split_dependent():
    from latentvla.envs.metaworld import episode_seed

    assert episode_seed("reach", "train", 3, 0) == episode_seed("reach-v3", "train", 3, 0)
    seeds = {episode_seed("reach", s, e, k) for s in ("train", "eval") for e in range(20) for k in range(3)}
    assert len(seeds) == 120
    with pytest.raises(ValueError, match="split"):
        episode_seed("reach", "test", 0)


sim = pytest.mark.sim


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("metaworld")
    from latentvla.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    e = MetaWorldEnv(MetaWorldConfig("button-press-topdown", cameras=("corner4", "gripperPOV"), image_size=64))
    yield e
    e.close()


@sim
def test_reset_determinism_and_observation(env):
    obs_a, _ = env.reset(episode=2, split="train", seed=5)
    priv_a = env.privileged()
    env.step(np.ones(4))
    obs_b, _ = env.reset(episode=2, split="train", seed=5)
    img = obs_a[f"{K.OBS_IMAGES}.corner4"]
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert obs_a[K.OBS_STATE].shape == (4,) and obs_a[K.OBS_STATE].dtype == np.float32
    assert obs_a[K.TASK] == "press the button from the top"
    np.testing.assert_array_equal(img, obs_b[f"{K.OBS_IMAGES}.corner4"])
    np.testing.assert_array_equal(obs_a[K.OBS_STATE], obs_b[K.OBS_STATE])
    env.reset(episode=2, split="eval", seed=5)
    assert not np.allclose(env.privileged()[K.PRIV_OBJECT_POS], priv_a[K.PRIV_OBJECT_POS])
    assert priv_a[K.PRIV_TARGET_CORNERS].shape == (24,) and priv_a[f"{K.PRIV_CAMERA}corner4"].shape == (13,)


@sim
def test_upright_corner_image(env):
    # Upright: the bright floor/background is above... the table (wood, reddish-brown) fills the lower part.
    obs, _ = env.reset(episode=0)
    img = obs[f"{K.OBS_IMAGES}.corner4"].astype(float)
    warm = img[..., 0] - img[..., 2]  # wood and the red arm are warm; grey floor and white walls are not
    assert warm[40:].mean() > warm[:24].mean()


@sim
def test_expert_succeeds_and_actions_are_clipped(env):
    obs, _ = env.reset(episode=0)
    for _ in range(150):
        action = env.expert_action(obs)
        assert action.dtype == np.float32 and np.all(np.abs(action) <= 1.0)
        obs, _, terminated, truncated, info = env.step(action * 10)  # out-of-range input is clipped
        if terminated:
            break
    assert info["success"] and terminated


def _segmentation_box(env, camera):
    from latentvla.envs.metaworld import FLIPPED_CAMERAS

    env.renderer.enable_segmentation_rendering()
    env.renderer.update_scene(env.data, camera=camera)
    seg = env.renderer.render()
    env.renderer.disable_segmentation_rendering()
    if camera in FLIPPED_CAMERAS:
        seg = np.flip(seg, (0, 1))
    mask = np.isin(seg[..., 0], env._target_geoms) & (seg[..., 1] == int(env._mj.mjtObj.mjOBJ_GEOM))
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)


@sim
@pytest.mark.parametrize(
    ("task", "camera"),
    [
        ("pick-place", "corner4"),
        ("peg-insert-side", "corner2"),
        ("button-press-topdown", "corner4"),
        ("button-press-topdown", "gripperPOV"),
    ],  # the last: out of view in both
)
def test_projected_box_matches_segmentation(task, camera):
    pytest.importorskip("metaworld")
    from latentvla.data.boxes import ProjectedGeometryBoxes
    from latentvla.envs.metaworld import MetaWorldConfig, MetaWorldEnv

    size = 128
    e = MetaWorldEnv(MetaWorldConfig(task, cameras=(camera,), image_size=size))
    try:
        e.reset(episode=1)
        priv = {k: v[None] for k, v in e.privileged().items()} | {K.ACTION: np.zeros((1, 4))}
        xyxy, visible = ProjectedGeometryBoxes().boxes(priv, camera)
        seg = _segmentation_box(e, camera)
    finally:
        e.close()
    # Boxes are amodal (the whole geometry, occluded parts included), so compare on unoccluded targets.
    if seg is None:
        assert not visible[0]
        return
    assert visible[0]
    np.testing.assert_allclose(xyxy[0] * size, seg, atol=3.0)  # pixels at 128 px
