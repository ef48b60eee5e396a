"""Policy server: openpi wire compatibility, bad-input robustness, concurrency, client + chunk broker."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco (the sim test below)

import contextlib
import subprocess
import sys
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest
from websockets.sync.client import connect

from latentvla.client import ActionChunkBroker, PolicyServerError, WebsocketPolicyClient
from latentvla.client import msgpack_numpy as ours
from latentvla.serve.obs import BadRequest, ObservationSpec, prepare_observation
from latentvla.serve.server import PolicyServer


def _openpi(module: str):
    """openpi-client (installed by CI): only the wire-compatibility tests need it; the rest run without it."""
    return pytest.importorskip(f"openpi_client.{module}")


H, A, S, SIDE = 5, 4, 4, 32
CAMS = ("corner4", "gripper")


class FakePolicy:
    """Same interface as latentvla.policy.Policy; actions depend on the request so mix-ups are caught."""

    metadata = {
        "action_dim": A,
        "horizon": H,
        "state_dim": S,
        "cameras": list(CAMS),
        "image_size": SIDE,
        "action_low": [-1.0] * A,
        "action_high": [1.0] * A,
        "preset": "fake",
        "modes": ["latent", "explicit"],
    }

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.active = 0  # concurrent infer calls (must never exceed 1)
        self.max_active = 0

    def infer(self, obs: dict, *, mode: str = "latent", iterations: int | None = None, halting=None) -> dict:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            for cam in CAMS:
                img = obs[f"observation.images.{cam}"]
                assert img.dtype == np.uint8 and img.shape == (SIDE, SIDE, 3)
            state = obs["observation.state"]
            assert state.dtype == np.float32 and state.shape == (S,)
            if obs["task"] == "boom":
                raise RuntimeError("policy exploded")
            if self.delay:
                time.sleep(self.delay)
            actions = expected_actions(state, obs["observation.images.corner4"])
            if obs["task"] == "nan":
                actions[2, 1] = np.nan
            if obs["task"] == "refuse":  # what latentvla.policy.Policy raises on non-finite model output
                raise FloatingPointError("the model produced non-finite actions")
            return {"actions": actions, "iterations": 3, "cot_text": f"{mode}: {obs['task']}"}
        finally:
            self.active -= 1

    def infer_batch(self, obs_list: list[dict], **kwargs) -> list[dict]:
        self.batch_sizes.append(len(obs_list))
        return [self.infer(o, **kwargs) for o in obs_list]


def expected_actions(state: np.ndarray, image: np.ndarray) -> np.ndarray:
    rows = np.arange(H, dtype=np.float32)[:, None] * 0.01
    return (state[None, :] * 0.1 + rows + float(image.mean()) / 255 * 1e-3).astype(np.float32)


def lerobot_obs(i: int = 0, side: int = SIDE, task: str = "reach the goal") -> dict:
    img = np.full((side, side, 3), (7 * i) % 256, np.uint8)
    state = np.array([0.5, -0.3, 0.1, 0.01 * i], np.float32)
    return {
        "observation.images.corner4": img,
        "observation.images.gripper": img.copy(),
        "observation.state": state,
        "task": task,
    }


def expected_for(obs: dict) -> np.ndarray:
    return np.clip(
        expected_actions(obs["observation.state"].astype(np.float32), obs["observation.images.corner4"]), -1, 1
    )


@pytest.fixture(scope="module")
def served():
    policy = FakePolicy()
    server = PolicyServer(policy, "127.0.0.1", 0, max_message_bytes=2**20)
    port = server.start_in_thread()
    yield policy, port
    server.stop()


@contextlib.contextmanager
def raw_connection(port: int):
    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None) as ws:
        meta = ours.unpackb(ws.recv(timeout=5))
        assert meta["action_dim"] == A
        yield ws


def ask(ws, frame) -> bytes | str:
    ws.send(frame)
    return ws.recv(timeout=5)


def good_roundtrip(ws, i: int = 3) -> None:
    obs = lerobot_obs(i)
    reply = ask(ws, ours.packb(obs))
    assert isinstance(reply, bytes), reply
    np.testing.assert_allclose(ours.unpackb(reply)["actions"], expected_for(obs), rtol=1e-6)


# ------------------------------------------------------------------------------------------ wire format
def test_msgpack_matches_openpi_both_ways():
    openpi_msgpack = _openpi("msgpack_numpy")
    obj = {
        "a": np.arange(6, dtype=np.int16).reshape(2, 3),
        "b": np.float32(1.5),
        "c": [1, "x"],
        "d": {"e": np.bool_(1)},
    }
    for pack, unpack in ((ours.packb, openpi_msgpack.unpackb), (openpi_msgpack.packb, ours.unpackb)):
        out = unpack(pack(obj))
        assert out["a"].dtype == np.int16 and out["a"].shape == (2, 3) and not out["a"].flags.writeable
        np.testing.assert_array_equal(out["a"], obj["a"])
        assert out["b"] == np.float32(1.5) and isinstance(out["b"], np.float32)
        assert out["c"] == [1, "x"] and out["d"]["e"] == np.True_
    raw = msgpack.unpackb(ours.packb(np.zeros(2, np.float32)))
    assert raw[b"__ndarray__"] is True and raw[b"dtype"] == "<f4" and raw[b"shape"] == [2]
    for bad in (np.zeros(2, np.complex64), np.array([None], dtype=object)):
        with pytest.raises(ValueError, match="Unsupported dtype"):
            ours.packb(bad)


# ------------------------------------------------------------------------------------------ observation mapping
def test_prepare_observation_maps_keys_converts_and_resizes():
    spec = ObservationSpec(CAMS, SIDE, S)
    chw_float = np.random.default_rng(0).random((3, 48, 64)).astype(np.float32)
    raw = {
        "observation/image": np.zeros((224, 224, 3), np.uint8),
        "observation/wrist_image": chw_float,
        "observation/state": [0.0, 1.0, 2.0, 3.0],
        "prompt": "push",
        "extra": 1,
    }
    obs = prepare_observation(raw, spec)
    assert set(obs) == {"observation.images.corner4", "observation.images.gripper", "observation.state", "task"}
    for cam in CAMS:
        assert obs[f"observation.images.{cam}"].shape == (SIDE, SIDE, 3)
        assert obs[f"observation.images.{cam}"].dtype == np.uint8
    assert obs["observation.state"].dtype == np.float32 and obs["task"] == "push"
    assert abs(obs["observation.images.gripper"].mean() / 255 - chw_float.mean()) < 0.02  # content preserved
    with pytest.raises(BadRequest, match=r"Missing 'observation.images.gripper' or 'observation/wrist_image'"):
        prepare_observation({k: v for k, v in raw.items() if k != "observation/wrist_image"}, spec)
    with pytest.raises(BadRequest, match=r"'observation/state': expected shape \(4,\), got \(8,\)"):
        prepare_observation({**raw, "observation/state": np.zeros(8)}, spec)
    with pytest.raises(BadRequest, match="divide by 255"):
        prepare_observation({**raw, "observation/image": np.full((8, 8, 3), 200.0)}, spec)


# ------------------------------------------------------------------------------------------ protocol
def test_healthz(served):
    _, port = served
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_openpi_client_round_trip_lerobot_keys(served):
    openpi_client = _openpi("websocket_client_policy")
    _, port = served
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", port)
    try:
        meta = client.get_server_metadata()
        assert meta["horizon"] == H and meta["cameras"] == list(CAMS) and meta["serve"]["mode"] == "latent"
        obs = lerobot_obs(1)
        first, second = client.infer(obs), client.infer(obs)
        assert first["actions"].shape == (H, A) and first["actions"].dtype == np.float32
        np.testing.assert_allclose(first["actions"], expected_for(obs), rtol=1e-6)
        assert first["iterations"] == 3 and first["cot_text"] == "latent: reach the goal"
        assert "infer_ms" in first["server_timing"] and "prev_total_ms" not in first["server_timing"]
        assert second["server_timing"]["prev_total_ms"] > 0 and "infer_ms" in second["policy_timing"]
    finally:
        client._ws.close()


def test_openpi_client_round_trip_libero_keys(served):
    openpi_client = _openpi("websocket_client_policy")
    _, port = served
    client = openpi_client.WebsocketClientPolicy("127.0.0.1", port)
    try:
        img = np.full((224, 224, 3), 90, np.uint8)  # openpi LIBERO clients send 224x224; resized server-side
        state = np.array([0.2, 0.1, 0.0, -0.4], np.float64)
        obs = {"observation/image": img, "observation/wrist_image": img, "observation/state": state, "prompt": "x"}
        out = client.infer(obs)
        assert out["actions"].shape == (H, A)
        np.testing.assert_allclose(out["actions"], expected_actions(state.astype(np.float32), img), rtol=1e-5)
    finally:
        client._ws.close()


def _bad_frames() -> dict[str, tuple[bytes | str, str]]:
    good = lerobot_obs()
    bad_marker = msgpack.packb(
        {"observation.state": {b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [100]}}
    )
    return {
        "not msgpack": (b"\xc1\xc1 definitely not msgpack", "Could not decode"),
        "truncated": (ours.packb(good)[:-10], "Could not decode"),
        "text frame": ("hello", "Text frames are not accepted"),
        "non-dict": (ours.packb([1, 2, 3]), "Expected a dict"),
        "int map key": (msgpack.packb({1: 2}), "Could not decode"),
        "array too small": (bad_marker, "Could not decode"),
        "object dtype": (
            msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}}),
            "Unsupported dtype",
        ),
        "missing keys": (ours.packb({"task": "x"}), "Missing 'observation.images.corner4'"),
        "state shape": (ours.packb({**good, "observation.state": np.zeros(7, np.float32)}), "expected shape (4,)"),
        "state dtype": (ours.packb({**good, "observation.state": np.array(list("abcd"))}), "got dtype <U1"),
        "nan state": (ours.packb({**good, "observation.state": np.array([0, np.nan, 0, 0], np.float32)}), "NaN"),
        "inf state": (ours.packb({**good, "observation.state": np.array([0, 0, np.inf, 0])}), "NaN or inf"),
        "image shape": (
            ours.packb({**good, "observation.images.gripper": np.zeros((32, 32), np.uint8)}),
            "RGB image",
        ),
        "image dtype": (
            ours.packb({**good, "observation.images.corner4": np.zeros((8, 8, 3), bool)}),
            "dtype bool",
        ),
        "task type": (ours.packb({**good, "task": 5}), "expected the instruction as a str"),
        "oversized": (ours.packb({**good, "pad": np.zeros(2**20 + 10, np.uint8)}), "exceeds the limit"),
    }


@pytest.mark.parametrize("case", list(_bad_frames()))
def test_bad_input_gets_error_text_and_connection_survives(served, case):
    _, port = served
    frame, expected = _bad_frames()[case]
    with raw_connection(port) as ws:
        reply = ask(ws, frame)
        assert isinstance(reply, str) and expected in reply, reply
        good_roundtrip(ws)  # same connection keeps working


def test_hundreds_of_malformed_messages_then_good_request(served):
    _, port = served
    frames = list(_bad_frames().values())
    rng = np.random.default_rng(0)
    with raw_connection(port) as ws:
        for i in range(300):
            frame = frames[i % len(frames)][0] if i % 3 else rng.bytes(int(rng.integers(1, 200)))
            assert isinstance(ask(ws, frame), str)
        good_roundtrip(ws, i=9)
    with WebsocketPolicyClient("127.0.0.1", port, timeout=5) as client:  # and a fresh client too
        with pytest.raises(PolicyServerError, match="Missing"):
            client.infer({"prompt": "no images"})
        obs = lerobot_obs(4)
        np.testing.assert_allclose(client.infer(obs)["actions"], expected_for(obs), rtol=1e-6)


def test_nan_output_is_an_error_and_actions_are_clipped(served):
    _, port = served
    with raw_connection(port) as ws:
        for task in ("nan", "refuse"):
            reply = ask(ws, ours.packb(lerobot_obs(task=task)))
            assert isinstance(reply, str) and "non-finite" in reply
        obs = lerobot_obs()
        obs["observation.state"] = np.array([50.0, -50.0, 0.0, 0.0], np.float32)  # 0.1 * 50 = 5 -> clipped to 1
        actions = ours.unpackb(ask(ws, ours.packb(obs)))["actions"]
        assert np.isfinite(actions).all() and actions.max() <= 1.0 and actions.min() >= -1.0
        np.testing.assert_allclose(actions[:, 0], 1.0)
        np.testing.assert_allclose(actions[:, 1], -1.0)


def test_policy_exception_closes_only_that_connection(served):
    _, port = served
    with raw_connection(port) as other, raw_connection(port) as ws:
        reply = ask(ws, ours.packb(lerobot_obs(task="boom")))
        assert isinstance(reply, str) and "policy exploded" in reply
        with pytest.raises(Exception, match="1011"):
            ws.recv(timeout=5)
        good_roundtrip(other)


def test_eight_concurrent_clients_each_get_their_own_answer():
    policy = FakePolicy(delay=0.01)
    server = PolicyServer(policy, "127.0.0.1", 0)
    port = server.start_in_thread()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def client_loop(i: int) -> None:
        try:
            with WebsocketPolicyClient("127.0.0.1", port, timeout=10) as client:
                barrier.wait(timeout=10)
                for r in range(5):
                    obs = lerobot_obs(i * 10 + r)
                    np.testing.assert_allclose(client.infer(obs)["actions"], expected_for(obs), rtol=1e-6)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    finally:
        server.stop()
    assert not errors, errors
    assert policy.max_active == 1  # the policy is never called from two threads at once
    assert policy.batch_sizes and max(policy.batch_sizes) > 1  # queued requests were batched across clients


# ------------------------------------------------------------------------------------------ our client
def test_own_client_and_action_chunk_broker(served):
    _, port = served
    with WebsocketPolicyClient("127.0.0.1", port, timeout=5) as client:
        assert client.metadata["horizon"] == H
        broker = ActionChunkBroker(client, action_horizon=3)
        obs = lerobot_obs(2)
        chunk = expected_for(obs)
        steps = [broker.infer(obs) for _ in range(6)]
        assert broker.num_queries == 2
        for k, step in enumerate(steps):
            np.testing.assert_allclose(step["actions"], chunk[k % 3], rtol=1e-6)
            assert step["cot_text"] == "latent: reach the goal"  # non-array fields pass through
        broker.reset()
        broker.action(obs)
        assert broker.num_queries == 3
        with pytest.raises(PolicyServerError, match="Missing"):
            client.infer({"task": "x"})
        np.testing.assert_allclose(client.infer(obs)["actions"], chunk, rtol=1e-6)


def test_own_client_times_out_cleanly_when_no_server():
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="Could not connect"):
        WebsocketPolicyClient("127.0.0.1", port, timeout=0.5)
    assert time.monotonic() - start < 3


def test_this_module_runs_without_openpi_client():
    """Without openpi-client only the compatibility tests skip: importing this module must not skip it all."""
    code = (
        "import sys, importlib.abc, importlib.util\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'openpi_client':\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"spec = importlib.util.spec_from_file_location('ts', {__file__!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "print('ok', len([n for n in dir(mod) if n.startswith('test_')]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr[-2000:]


def test_server_rejects_unknown_mode():
    with pytest.raises(ValueError, match="Unknown mode 'dreaming'"):
        PolicyServer(FakePolicy(), mode="dreaming")


def test_client_package_imports_without_torch():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'PIL'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import latentvla.client, latentvla.client.msgpack_numpy, latentvla.client.websocket_client\n"
        "import latentvla.client.action_chunk_broker, latentvla.client.robot_loop\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_cli_halting_arguments():
    """eval, serve and Policy share one halting-spec parser (models/halting.py)."""
    from latentvla.models.halting import halting_spec, parse_halting

    assert halting_spec(None, None) is None
    assert parse_halting(halting_spec("mse", 5e-4)).delta == 5e-4
    assert parse_halting(halting_spec("cosine", 0.99)).threshold == 0.99
    with pytest.raises(ValueError, match="--delta only makes sense"):
        halting_spec(None, 1e-3)
    with pytest.raises(ValueError, match="needs a threshold"):
        halting_spec("mse", None)


@pytest.mark.sim
def test_robot_loop_drives_metaworld_through_the_server(capsys):
    pytest.importorskip("metaworld")
    from latentvla.client import robot_loop

    class UpPolicy:  # constant "move up" chunks; the camera frame must arrive resized to 64x64
        metadata = {**FakePolicy.metadata, "cameras": ["corner4"], "image_size": 64}

        def infer(self, obs, **kwargs):
            assert obs["observation.images.corner4"].shape == (64, 64, 3) and obs["task"]
            return {"actions": np.tile(np.array([0, 0, 0.5, 0], np.float32), (H, 1)), "iterations": None}

    server = PolicyServer(UpPolicy(), "127.0.0.1", 0)
    port = server.start_in_thread()
    try:
        with WebsocketPolicyClient("127.0.0.1", port, timeout=5) as client:
            result = robot_loop.run_sim_episode(client, "reach", 0, 64, ("corner4",), max_steps=12)
        assert result.steps == 12 and result.queries == 3 and not result.success  # 12 steps / H=5 -> 3 chunks
        assert robot_loop.main(["--port", str(port), "--task", "reach", "--max-steps", "3", "--timeout", "5"]) == 0
        assert "reach: 0/1 successful" in capsys.readouterr().out
    finally:
        server.stop()
