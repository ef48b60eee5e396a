"""Server shutdown and gone clients: on stop / SIGTERM in-flight requests are answered, then
every client gets a close frame 1001; a request whose client disconnected is never computed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from latentvla.client import msgpack_numpy
from latentvla.serve.server import PolicyServer

H, A, S, SIDE = 3, 4, 4, 16


class GatedPolicy:
    """Blocks inside `infer` until `gate` is set; records which tasks it computed."""

    metadata = {
        "action_dim": A,
        "horizon": H,
        "state_dim": S,
        "cameras": ["corner4"],
        "image_size": SIDE,
        "action_low": [-1.0] * A,
        "action_high": [1.0] * A,
        "preset": "gated",
        "modes": ["latent"],
    }

    def __init__(self) -> None:
        self.gate, self.entered, self.computed = threading.Event(), threading.Event(), []

    def infer(self, obs: dict, **kwargs) -> dict:
        self.entered.set()
        assert self.gate.wait(20)
        self.computed.append(obs["task"])
        return {"actions": np.zeros((H, A), np.float32)}


def _request(task: str) -> bytes:
    return msgpack_numpy.packb(
        {
            "observation.images.corner4": np.zeros((SIDE, SIDE, 3), np.uint8),
            "observation.state": np.zeros(S, np.float32),
            "task": task,
        }
    )


def _client(port: int):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10)
    ws.recv(timeout=10)  # metadata
    return ws


def _close_code(ws) -> int:
    with pytest.raises(ConnectionClosed) as e:
        ws.recv(timeout=10)
    return e.value.rcvd.code if e.value.rcvd is not None else 1006


def test_stop_answers_in_flight_requests_then_closes_every_client_with_1001():
    policy = GatedPolicy()
    server = PolicyServer(policy, port=0, max_batch=1)
    port = server.start_in_thread()
    busy, idle = _client(port), _client(port)
    busy.send(_request("in flight"))
    assert policy.entered.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert _close_code(idle) == 1001  # idle clients are told at once
    time.sleep(0.2)
    policy.gate.set()  # the in-flight request finishes during the drain ...
    reply = msgpack_numpy.unpackb(busy.recv(timeout=10))  # ... and its client gets the answer
    assert reply["actions"].shape == (H, A)
    assert _close_code(busy) == 1001
    stopper.join(10)
    assert policy.computed == ["in flight"]


def test_request_of_a_client_that_left_is_not_computed():
    policy = GatedPolicy()
    server = PolicyServer(policy, port=0, max_batch=1)
    port = server.start_in_thread()
    try:
        first, leaver = _client(port), _client(port)
        first.send(_request("first"))
        assert policy.entered.wait(10)  # the worker is busy with "first"
        leaver.send(_request("left"))  # queued behind it
        time.sleep(0.2)
        leaver.close()
        time.sleep(0.2)
        policy.gate.set()
        assert msgpack_numpy.unpackb(first.recv(timeout=10))["actions"].shape == (H, A)
        first.send(_request("after"))
        first.recv(timeout=10)
        assert policy.computed == ["first", "after"]
        first.close()
    finally:
        policy.gate.set()
        server.stop()


@pytest.mark.slow
def test_sigterm_to_latentvla_serve_closes_clients_cleanly(tmp_path):
    from dataclasses import replace

    from latentvla.config import get_preset
    from latentvla.constants import ACTION, OBS_STATE
    from latentvla.data.stats import Normalizer
    from latentvla.policy import Policy

    stats = {
        k: {"mean": np.zeros(4), "std": np.ones(4), "min": -np.ones(4), "max": np.ones(4)}
        for k in (OBS_STATE, ACTION)
    }
    cfg = replace(get_preset("lara", "micro").policy, image_size=32, state_dim=4, action_dim=4)
    Policy(cfg, Normalizer(stats, {OBS_STATE: "mean_std", ACTION: "min_max"})).save_pretrained(tmp_path / "ckpt")
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentvla.cli", "serve", str(tmp_path / "ckpt"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", src)},
    )
    try:
        port = None
        for line in proc.stdout:
            if "listening on ws://" in line:
                port = int(line.split("ws://")[1].split()[0].rsplit(":", 1)[1])
                break
        assert port is not None
        ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=10)
        meta = msgpack_numpy.unpackb(ws.recv(timeout=10))
        assert list(meta["cameras"]) == ["corner4"]
        proc.send_signal(signal.SIGTERM)
        assert _close_code(ws) == 1001  # a close frame, not a dropped connection (1006)
        assert proc.wait(30) == 0
        assert "server stopped" in proc.stdout.read()
    finally:
        proc.kill()
