"""Hub ids resolved like transformers / LeRobot, offline only: hand-built Hugging Face cache
layouts (`models--ORG--NAME/snapshots/<commit>/` + `refs/main`, written by a tiny `save_pretrained`) and a
LeRobot dataset under HF_LEROBOT_HOME. HF_HUB_OFFLINE=1 in every test: nothing here may reach a hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentvla.hub import HubError, is_hub_id, pinned_model_id, resolve_dataset, resolve_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_LEROBOT_HOME", str(tmp_path / "lerobot_home"))
    monkeypatch.chdir(tmp_path)  # ids are relative names: nothing in the cwd may shadow them


def cache_model(repo_id: str, write, commit: str = COMMIT) -> Path:
    """The layout `hf download` leaves: snapshots/<commit>/ with the files and refs/main naming the commit."""
    from latentvla.hub import model_cache_dir

    root = model_cache_dir(repo_id)
    snap = root / "snapshots" / commit
    write(snap)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def _config_only(snap: Path) -> None:
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "dinov2"}))


def test_ids_resolve_to_the_cached_snapshot_and_local_dirs_win(tmp_path):
    snap = cache_model("facebook/dinov2-large", _config_only)
    assert resolve_model("facebook/dinov2-large") == snap
    assert resolve_model(f"facebook/dinov2-large@{COMMIT}") == snap
    assert resolve_model("facebook/dinov2-large@main") == snap
    assert pinned_model_id("facebook/dinov2-large", snap) == f"facebook/dinov2-large@{COMMIT}"
    local = tmp_path / "facebook" / "dinov2-large"  # a local directory of the same name shadows the id
    local.mkdir(parents=True)
    assert not is_hub_id("facebook/dinov2-large") and resolve_model("facebook/dinov2-large") == Path(
        "facebook/dinov2-large"
    )
    assert not is_hub_id("/abs/path") and not is_hub_id("./rel/x") and not is_hub_id("a/b/c")


def test_a_missing_model_id_is_one_line_naming_the_cache_path_and_the_command(tmp_path):
    with pytest.raises(HubError) as e:
        resolve_model("Qwen/Qwen3-VL-4B-Instruct", "--backbone")
    msg = str(e.value)
    where = tmp_path / "hf" / "hub" / "models--Qwen--Qwen3-VL-4B-Instruct" / "snapshots"
    assert "\n" not in msg and str(where) in msg and "`hf download Qwen/Qwen3-VL-4B-Instruct`" in msg
    assert msg.startswith("--backbone Qwen/Qwen3-VL-4B-Instruct:")
    cache_model("facebook/dinov2-large", _config_only)
    with pytest.raises(HubError, match="--revision v2"):  # a ref the cache does not hold
        resolve_model("facebook/dinov2-large@v2")


def test_a_dataset_id_resolves_under_hf_lerobot_home(tmp_path, synthetic_dataset, monkeypatch):
    import shutil

    from latentvla.data.lerobot import LeRobotDatasetReader

    with pytest.raises(HubError) as e:
        LeRobotDatasetReader("lerobot/libero_object_image")
    msg = str(e.value)
    root = tmp_path / "lerobot_home" / "lerobot" / "libero_object_image"
    assert "\n" not in msg and str(root) in msg and "--repo-type dataset" in msg
    shutil.copytree(synthetic_dataset, root)
    assert LeRobotDatasetReader("lerobot/libero_object_image").root == root
    monkeypatch.delenv("HF_LEROBOT_HOME")  # LeRobot's default: HF_HOME/lerobot
    with pytest.raises(HubError) as e:
        resolve_dataset("lerobot/libero_object_image")
    assert str(tmp_path / "hf" / "lerobot" / "lerobot" / "libero_object_image") in str(e.value)
    # a local path keeps the reader's own error (and its .partial hint)
    (tmp_path / "data" / "mw.partial").mkdir(parents=True)
    with pytest.raises(ValueError, match="re-run it with --resume"):
        LeRobotDatasetReader("data/mw")


def test_cli_dataset_info_and_missing_ids_exit_2_with_one_line(tmp_path, synthetic_dataset, capsys):
    import shutil

    from latentvla.cli import main

    assert main(["dataset", "info", "lerobot/tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(tmp_path / "lerobot_home" / "lerobot" / "tiny") in err
    shutil.copytree(synthetic_dataset, tmp_path / "lerobot_home" / "lerobot" / "tiny")
    assert main(["dataset", "info", "lerobot/tiny"]) == 0
    out = ["--dataset", "lerobot/tiny", "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main(["train", "--preset", "rdvla", "--backbone", "Qwen/Qwen2.5-0.5B", *out]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "models--Qwen--Qwen2.5-0.5B" in err and "hf download Qwen/Qwen2.5-0.5B" in err
    assert not (tmp_path / "r").exists()


def test_train_rdvla_from_hub_ids_offline_then_reload_from_the_pinned_ids(tmp_path, synthetic_dataset):
    """`latentvla train --preset rdvla --backbone ORG/NAME --vision ORG2/NAME2 --dataset lerobot/NAME`, offline."""
    import shutil

    pytest.importorskip("transformers")
    from latentvla.cli import main
    from latentvla.policy import Policy
    from latentvla.testing.tiny_hf import save_tiny

    lm = cache_model("tiny-org/qwen2", lambda d: save_tiny("qwen2", d))
    cache_model("tiny-org2/dinov2", lambda d: save_tiny("dinov2", d), commit="f" * 40)
    shutil.copytree(synthetic_dataset, tmp_path / "lerobot_home" / "lerobot" / "tiny")
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "rdvla",
        "--size",
        "micro",
        "--backbone",
        "tiny-org/qwen2",
        "--vision",
        "tiny-org2/dinov2",
        "--dataset",
        "lerobot/tiny",
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--no-progress",
        "policy.image_size=32",
        "policy.horizon=4",
    ]
    assert main(argv) == 0
    policy = Policy.from_pretrained(run)
    bb = policy.config.backbone
    assert bb.kind == "hf" and bb.hf_path == f"tiny-org/qwen2@{COMMIT}"  # portable: id + the commit it used
    assert bb.vision.paths == ("tiny-org2/dinov2@" + "f" * 40,)
    # The checkpoint rebuilds from the cache on a machine whose cache holds that commit (and fails in one line
    # when it does not).
    shutil.rmtree(lm)
    with pytest.raises(HubError, match=f"snapshots/{COMMIT}"):
        Policy.from_pretrained(run)


def test_a_policy_checkpoint_id_loads_from_the_cache_and_a_missing_one_is_one_line():
    from latentvla.policy import Policy
    from test_eval import _checkpoint

    snap = cache_model("me/rdvla-tiny", lambda d: _checkpoint("rdvla", d))
    assert Policy.from_pretrained("me/rdvla-tiny").config.preset == "rdvla"
    assert Policy.from_pretrained(snap).config.preset == "rdvla"
    with pytest.raises(FileNotFoundError) as e:
        Policy.from_pretrained("runs/lara")  # a typo'd relative run dir: both readings named
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("No checkpoint at runs/lara") and "models--runs--lara" in msg
