"""A synchronous websocket client for the latentvla (or any openpi) policy server; numpy/msgpack/websockets only.

Same protocol as openpi-client's `WebsocketClientPolicy`, plus what 0.1.2 lacks: retrying the connection until
a deadline (the server may still be loading its checkpoint), a receive timeout, and a clear error type.
"""

from __future__ import annotations

import inspect
import time
from typing import Any

from websockets.exceptions import InvalidHandshake
from websockets.sync.client import ClientConnection, connect

from latentvla.client import msgpack_numpy

# websockets >= 17 warns when `connect()` is not used as a context manager unless `legacy=True` is passed; older
# releases (>= 13 is supported) do not know the flag. This client holds one connection for its whole life.
_LEGACY = {"legacy": True} if "legacy" in inspect.signature(connect).parameters else {}


class PolicyServerError(RuntimeError):
    """The server answered with an error (a text frame) instead of actions."""


class WebsocketPolicyClient:
    """`infer(obs) -> dict` against a policy server at ws://host:port.

    Args:
        host: host name or a full `ws://` / `wss://` URI.
        port: port; None when `host` is a URI that already has one.
        timeout: seconds to keep retrying the initial connection, and the per-reply receive timeout.
        api_key: sent as `Authorization: Api-Key <key>` (openpi convention) when given.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int | None = 8000, timeout: float = 30.0, api_key: str | None = None
    ):
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}.")
        self.uri = host if host.startswith("ws") else f"ws://{host}"
        if port is not None:
            self.uri += f":{port}"
        self.timeout = timeout
        self._headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._ws, self.metadata = self._connect()

    def _connect(self) -> tuple[ClientConnection, dict]:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                ws = connect(
                    self.uri,
                    compression=None,
                    max_size=None,
                    additional_headers=self._headers,
                    open_timeout=max(0.1, deadline - time.monotonic()),
                    **_LEGACY,
                )
                break
            except (OSError, InvalidHandshake, TimeoutError) as e:  # refused / not up yet / still loading
                if time.monotonic() >= deadline:
                    raise ConnectionError(
                        f"Could not connect to a policy server at {self.uri} within {self.timeout} s ({e}). "
                        "Is `latentvla serve` running on that host and port?"
                    ) from e
                time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        try:
            metadata = self._recv(ws)
        except Exception:
            ws.close()
            raise
        return ws, metadata

    def _recv(self, ws: ClientConnection) -> Any:
        try:
            frame = ws.recv(timeout=self.timeout)
        except TimeoutError:
            raise TimeoutError(f"No reply from the policy server at {self.uri} within {self.timeout} s.") from None
        if isinstance(frame, str):
            raise PolicyServerError(f"Error in inference server:\n{frame}")
        return msgpack_numpy.unpackb(frame)

    def infer(self, obs: dict) -> dict:
        """Send one observation dict; return the reply (`actions` (H, A) float32, timings, ...)."""
        self._ws.send(msgpack_numpy.packb(obs))
        return self._recv(self._ws)

    def reset(self) -> None:
        """openpi's reset is a no-op on the wire (the server keeps no episode state)."""

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> WebsocketPolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
