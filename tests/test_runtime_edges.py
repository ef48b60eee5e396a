"""Inference and serving edges a new user meets: options a policy would silently ignore, an empty
batch, an instruction that is short in characters but long in tokens, and `latentvla serve` arguments that are
refused in one line before the model loads."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

import numpy as np
import pytest

from latentvla.config import apply_overrides, get_preset
from latentvla.constants import OBS_IMAGES, OBS_STATE, TASK
from latentvla.observation import MAX_TASK_TOKENS, BadObservation


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    """Untrained micro checkpoints (saved exactly as training saves them) of a flow-head, a recurrent-head and
    a bc preset."""
    import torch

    from latentvla.data.dataset import make_normalizer
    from latentvla.data.lerobot import LeRobotDatasetReader
    from latentvla.policy import Policy
    from latentvla.train.loop import fit_policy_to_dataset

    reader = LeRobotDatasetReader(synthetic_dataset)
    root, out = tmp_path_factory.mktemp("ckpts"), {}
    for preset in ("lara", "rdvla", "bc"):
        cfg = fit_policy_to_dataset(apply_overrides(get_preset(preset, "micro"), ["policy.horizon=4"]), reader)
        torch.manual_seed(0)
        Policy(cfg.policy, make_normalizer(reader)).save_pretrained(root / preset)
        out[preset] = root / preset
    return out


def _load(path: Path):
    from latentvla.policy import Policy

    return Policy.from_pretrained(path)


def _obs(policy, task: str = "pick up the mug") -> dict:
    c = policy.config
    obs = {f"{OBS_IMAGES}.{cam}": np.zeros((c.image_size, c.image_size, 3), np.uint8) for cam in c.cameras}
    return obs | {OBS_STATE: np.zeros(c.state_dim, np.float32), TASK: task}


def _cli(*argv: str) -> int:
    from latentvla.cli import main

    return main(list(argv))


@pytest.fixture
def no_server(monkeypatch):
    """A `serve` that should be refused must not start listening (it would block the test forever)."""

    def started(*a, **kw):
        raise AssertionError("the server started instead of refusing its arguments")

    monkeypatch.setattr("latentvla.serve.server.run_server", started)


# ------------------------------------------------------------------------- options a policy would ignore


def test_halting_and_depth_on_a_flow_head_are_refused(checkpoints):
    lara = _load(checkpoints["lara"])
    for kw in ({"halting": "mse:5e-4"}, {"iterations": 4}):
        with pytest.raises(ValueError, match=r"only to the recurrent-depth head.*'lara' policy has a flow head"):
            lara.infer(_obs(lara), **kw)
    bc = _load(checkpoints["bc"])
    with pytest.raises(ValueError, match="bc network"):
        bc.infer(_obs(bc), halting="mse:5e-4")
    rd = _load(checkpoints["rdvla"])  # where they mean something they still work
    assert rd.infer(_obs(rd), iterations=3)["iterations"] == 3
    assert 1 <= rd.infer(_obs(rd), iterations=6, halting="mse:1e9")["iterations"] < 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (("lara", "--halting", "mse", "--delta", "5e-4"), "halting applies only to the recurrent-depth head"),
        (("lara", "--iterations", "4"), "iterations applies only to the recurrent-depth head"),
        (("bc", "--mode", "explicit"), "mode 'explicit': this 'bc' policy has no reasoning to write"),
    ],
)
def test_serve_refuses_options_the_policy_would_ignore_in_one_line(argv, message, checkpoints, capsys, no_server):
    run, *flags = argv
    assert _cli("serve", str(checkpoints[run]), "--port", "0", *flags) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1 and "listening" not in out, err


@pytest.mark.sim
def test_eval_refuses_halting_on_a_flow_head_in_one_line(checkpoints, tmp_path, capsys):
    import dataclasses

    from latentvla.policy import Policy

    policy = Policy.from_pretrained(checkpoints["lara"])  # Meta-World renders at >= 64 px: the same model at 64
    policy.config = dataclasses.replace(policy.config, image_size=64)
    policy.save_pretrained(tmp_path / "lara64")
    argv = ["eval", str(tmp_path / "lara64"), "--tasks", "reach-v3", "--episodes", "1", "--max-steps", "3"]
    assert _cli(*argv, "--halting", "mse", "--delta", "5e-4", "--quiet", "--out", str(tmp_path / "eval")) == 2
    err = capsys.readouterr().err
    assert "halting applies only to the recurrent-depth head" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "eval" / "eval_info.json").exists()


# ------------------------------------------------------------------------------- serve argument checks


@contextlib.contextmanager
def _listening_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--port", "70000"), "--port 70000 is not a TCP port"),
        (("--port", "-1"), "--port -1 is not a TCP port"),
        (("--host", "999.1.1.1"), "--host '999.1.1.1' is not an address or host name"),
        (("--iterations", "0"), "--iterations must be >= 1, got 0"),
        (("--max-batch", "0"), "--max-batch must be >= 1, got 0"),
        (("--max-message-mb", "0"), "--max-message-mb must be positive"),
        ("used", "is already in use"),
    ],
)
def test_serve_arguments_are_refused_before_loading_the_model(flags, message, checkpoints, capsys, no_server):
    with _listening_port() as used:
        if flags == "used":
            flags = ("--port", str(used))
        assert _cli("serve", str(checkpoints["rdvla"]), *flags) == 2
    out, err = capsys.readouterr()
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "loading" not in out  # refused before the (possibly minutes-long) model load


# ------------------------------------------------------------------------------ batch and instruction


def test_infer_batch_of_nothing_is_an_empty_list(checkpoints):
    policy = _load(checkpoints["lara"])
    assert policy.infer_batch([]) == []
    with pytest.raises(ValueError, match="recurrent-depth head"):  # the options are still checked
        policy.infer_batch([], halting="mse:5e-4")


def test_instruction_is_bounded_in_tokens_not_only_characters(checkpoints):
    policy = _load(checkpoints["lara"])
    emoji = "\N{GRINNING FACE}" * 2000  # 2,000 characters (the character limit) = 8,000 byte tokens
    with pytest.raises(BadObservation, match=rf"8000 tokens \(2000 characters\); the limit is {MAX_TASK_TOKENS}"):
        policy.infer(_obs(policy, emoji))
    at_limit = "\N{GRINNING FACE}" * (MAX_TASK_TOKENS // 4)
    assert len(policy.model.tokenizer.encode(at_limit)) == MAX_TASK_TOKENS
    assert policy.infer(_obs(policy, at_limit))["actions"].shape == (4, policy.config.action_dim)


def test_server_answers_a_too_long_instruction_with_an_error_and_stays_open(checkpoints):
    from websockets.sync.client import connect

    from latentvla.serve import msgpack_numpy
    from latentvla.serve.server import PolicyServer

    policy = _load(checkpoints["lara"])
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = server.start_in_thread()
    try:
        with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
            ws.recv(timeout=10)  # metadata
            ws.send(msgpack_numpy.packb(_obs(policy, "\N{GRINNING FACE}" * 2000)))
            reply = ws.recv(timeout=30)
            assert isinstance(reply, str) and "8000 tokens" in reply and "Traceback" not in reply, reply
            ws.send(msgpack_numpy.packb(_obs(policy)))  # the same connection carries on
            assert msgpack_numpy.unpackb(ws.recv(timeout=30))["actions"].shape == (4, policy.config.action_dim)
    finally:
        server.stop()


# ------------------------------------------------------------------------------------ overrides, device


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr_head=abc", "override lr_head=abc: expected a number, got 'abc'"),
        ("seed=1.5", "override seed=1.5: expected an integer, got '1.5'"),
        ("policy.horizon=x", "override policy.horizon=x: expected an integer, got 'x'"),
        ("policy=3", "override policy=3: 'policy' is a group of settings, not a value"),
    ],
)
def test_override_type_errors_name_the_key(override, message):
    with pytest.raises(ValueError) as e:
        apply_overrides(get_preset("lara", "micro"), [override])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_integer_overrides_accept_exponents_and_keep_big_values():
    cfg = apply_overrides(get_preset("lara", "micro"), ["steps=1e3", "seed=12345678901234567891", "lr_head=3e-4"])
    assert cfg.steps == 1000 and cfg.seed == 12345678901234567891 and cfg.lr_head == 3e-4


def test_device_this_machine_cannot_run_is_one_line(monkeypatch):
    import torch

    from latentvla.device import check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(ValueError, match=r"device='gpu' is not a torch device"):
        check_device("gpu")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match=r"device=cuda: this torch .* is a CPU-only build; use device=cpu"):
        check_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"device=cuda:1: no CUDA GPU is visible"):
        check_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device=cuda:1: this machine has 1 GPU"):
        check_device("cuda:1")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_train_and_serve_with_cuda_on_a_machine_without_it(synthetic_dataset, checkpoints, tmp_path, capsys):
    assert (
        _cli(
            "train",
            "--preset",
            "lara",
            "--size",
            "micro",
            "--dataset",
            str(synthetic_dataset),
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "2",
            "--no-progress",
            "device=cuda",
        )
        == 2
    )
    assert _cli("serve", str(checkpoints["lara"]), "--device", "cuda", "--port", "0") == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "device=cuda" in lines[0] and "--device cuda" in lines[1], err
    assert not (tmp_path / "run").exists() and "loading" not in out  # refused before any work
