"""Websocket policy server speaking openpi's protocol (openpi `serving/websocket_policy_server.py`), hardened.

Wire protocol (openpi's `websocket_policy_server.py`), unchanged so the unmodified `openpi-client` works:
- `GET /healthz` answers `200 OK\\n`; every other path is the websocket endpoint (no compression).
- On connect the server sends one binary msgpack frame: the policy metadata.
- Then lockstep: the client sends a binary msgpack observation dict; the server replies with a binary msgpack
  dict `{"actions": float32 (H, A), "server_timing": {"infer_ms", "prev_total_ms" (from the 2nd call)},
  "policy_timing": {"infer_ms", "batch_size"}, "iterations"?: int, "cot_text"?: str}`.
- Errors are text frames (openpi-client raises `RuntimeError("Error in inference server: ...")` on any text).

Where we differ from openpi, on purpose: openpi sends the traceback and closes with 1011 for *any* failure.
Here a bad request (not msgpack, text frame, wrong keys/shapes/dtypes, NaN, oversize) or a non-finite policy
output gets a text error and the connection stays open, so a robot loop can fix its next observation and carry
on without reconnecting. Only an unexpected exception inside the policy (a server bug) follows openpi: traceback
text, then close 1011. Every exception is caught per connection; the server itself never goes down.

Concurrency: requests from all connections go through one `MicroBatcher`. A single worker thread runs the
policy (torch is never called from two threads at once); requests that queue up while it is busy are run
together through `policy.infer_batch` when the policy has it. A request whose client disconnects while it waits
is dropped before the policy sees it.

Shutdown (SIGTERM / SIGINT, or `stop()`): the server stops accepting connections, idle clients get a close frame
1001 "going away" at once, a client whose request is in flight gets its reply first and then the same close
frame; after `drain_timeout` seconds whatever is left is closed the same way. Schedulers (SLURM, Kubernetes)
send SIGTERM before killing, so robots see a clean close instead of a dropped TCP connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from latentvla.serve import msgpack_numpy
from latentvla.serve.obs import BadRequest, ObservationSpec, prepare_observation

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20  # 64 MiB: a 4-camera 1080p uint8 observation is ~25 MB
DRAIN_TIMEOUT_S = 30.0  # on shutdown, how long in-flight requests may take before their clients are closed
SHUTDOWN_REASON = "server shutting down"


class PolicyOutputError(RuntimeError):
    """The policy returned something we refuse to send (non-finite or wrongly shaped actions)."""


def healthz(connection: ServerConnection, request: Request) -> Response | None:
    """`process_request` hook: plain HTTP `GET /healthz` -> 200 "OK\\n" (as openpi); other paths upgrade."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def _describe(halting: Any) -> str | None:
    """A msgpack-safe description of the halting rule for the metadata frame, e.g. "MSEConvergence(delta=0.0005)"."""
    if halting is None or isinstance(halting, str):
        return halting
    params = ", ".join(f"{k}={v}" for k, v in vars(halting).items() if isinstance(v, int | float | str))
    return f"{type(halting).__name__}({params})"


@dataclass
class _Job:
    obs: dict
    future: asyncio.Future


@dataclass
class _Outcome:
    result: dict | None = None
    error: BaseException | None = None
    policy_ms: float = 0.0
    batch_size: int = 1
    trace: str = field(default="", repr=False)


class MicroBatcher:
    """Serialises policy calls on one worker thread, batching whatever queued up while it was busy."""

    def __init__(
        self, infer_one: Callable[[dict], dict], infer_batch: Callable[[list], list] | None, max_batch: int
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}.")
        self._infer_one, self._infer_batch, self._max_batch = infer_one, infer_batch, max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Start the worker (call from inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="latentvla-policy")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, obs: dict) -> _Outcome:
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(obs, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self._max_batch and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            jobs = [job for job in jobs if not job.future.done()]  # a cancelled job's client is gone
            if not jobs:
                continue
            try:
                outcomes = await loop.run_in_executor(self._executor, self._infer, [job.obs for job in jobs])
            except Exception as e:  # the executor itself failed; never let the worker die
                outcomes = [_Outcome(error=e, trace=traceback.format_exc())] * len(jobs)
            for job, outcome in zip(jobs, outcomes):
                if not job.future.done():
                    job.future.set_result(outcome)

    def _infer(self, obs_list: list[dict]) -> list[_Outcome]:
        """Runs on the worker thread. A failing batch is retried one by one so one bad item fails alone."""
        if self._infer_batch is not None and len(obs_list) > 1:
            start = time.perf_counter()
            try:
                results = self._infer_batch(obs_list)
                if len(results) != len(obs_list):
                    raise PolicyOutputError(f"infer_batch returned {len(results)} results for {len(obs_list)}.")
                ms = (time.perf_counter() - start) * 1e3
                return [_Outcome(result=r, policy_ms=ms, batch_size=len(obs_list)) for r in results]
            except Exception:
                log.exception("infer_batch failed on %d requests; retrying them one at a time", len(obs_list))
        return [self._infer_single(obs) for obs in obs_list]

    def _infer_single(self, obs: dict) -> _Outcome:
        start = time.perf_counter()
        try:
            result = self._infer_one(obs)
        except Exception as e:
            return _Outcome(error=e, trace=traceback.format_exc())
        return _Outcome(result=result, policy_ms=(time.perf_counter() - start) * 1e3)


class PolicyServer:
    """Serve `policy` (anything with `metadata`, `infer`, optionally `infer_batch`) over openpi's websocket protocol."""

    def __init__(
        self,
        policy: Any,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        mode: str | None = None,
        iterations: int | None = None,
        halting: Any = None,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = 8,
        drain_timeout: float = DRAIN_TIMEOUT_S,
    ):
        meta = dict(policy.metadata)
        modes = list(meta.get("modes", [mode]))
        mode = mode or modes[0]  # None: the policy's default mode (listed first), e.g. explicit for lara-explicit
        if mode not in modes:
            raise ValueError(f"Unknown mode {mode!r} for this policy; available: {', '.join(modes)}.")
        if iterations is not None and iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}.")
        check = getattr(policy, "check_options", None)  # latentvla.policy.Policy: options it would ignore
        if callable(check):
            check(mode, iterations, halting)
        if max_message_bytes is not None and max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive or None, got {max_message_bytes}.")
        self.policy, self.host, self.port = policy, host, port
        self.mode, self.iterations, self.halting = mode, iterations, halting
        self.max_message_bytes = max_message_bytes
        self.spec = ObservationSpec.from_metadata(meta)
        self._low = np.asarray(meta["action_low"], dtype=np.float32)
        self._high = np.asarray(meta["action_high"], dtype=np.float32)
        self._horizon, self._action_dim = int(meta["horizon"]), int(meta["action_dim"])
        if self._low.shape != (self._action_dim,) or self._high.shape != (self._action_dim,):
            raise ValueError(f"action_low/high must have action_dim={self._action_dim} entries.")
        meta["serve"] = {
            "mode": mode,
            "iterations": iterations,
            "halting": _describe(halting),
        }
        self._metadata_frame = msgpack_numpy.packb(meta)  # fail now, not per connection, if unpackable
        infer_batch = getattr(policy, "infer_batch", None)
        self._batcher = MicroBatcher(
            self._infer_one, self._infer_many if callable(infer_batch) else None, max_batch=max_batch
        )
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.drain_timeout = drain_timeout
        self._busy: dict[ServerConnection, bool] = {}  # open connections -> a request of theirs is in flight
        self._draining = False

    # ----------------------------------------------------------------------------------------- policy calls
    def _kwargs(self) -> dict:
        return {"mode": self.mode, "iterations": self.iterations, "halting": self.halting}

    def _infer_one(self, obs: dict) -> dict:
        return self.policy.infer(obs, **self._kwargs())

    def _infer_many(self, obs_list: list[dict]) -> list[dict]:
        return self.policy.infer_batch(obs_list, **self._kwargs())

    # ----------------------------------------------------------------------------------------- request path
    def _decode(self, message: str | bytes) -> dict:
        """Frame -> validated observation dict, or BadRequest (runs in a worker thread: resizing costs ms)."""
        if isinstance(message, str):
            raise BadRequest("Text frames are not accepted: send the observation as a binary msgpack frame.")
        if self.max_message_bytes is not None and len(message) > self.max_message_bytes:
            raise BadRequest(
                f"Message of {len(message)} bytes exceeds the limit of {self.max_message_bytes} bytes."
            )
        try:
            raw = msgpack_numpy.unpackb(message)
        except Exception as e:  # msgpack raises many types (ExtraData, FormatError, StackError, ValueError, ...)
            raise BadRequest(
                f"Could not decode the message as openpi msgpack-numpy: {type(e).__name__}: {e}"
            ) from None
        return prepare_observation(raw, self.spec)

    def _reply(self, outcome: _Outcome, start: float, prev_total_ms: float | None) -> dict:
        """The policy result as openpi's reply dict; clips actions and refuses non-finite ones."""
        result = outcome.result
        if not isinstance(result, dict) or "actions" not in result:
            raise PolicyOutputError(f"The policy returned {type(result).__name__} without 'actions'.")
        actions = np.asarray(result["actions"], dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self._action_dim:
            raise PolicyOutputError(
                f"Policy actions have shape {actions.shape}; expected (H, {self._action_dim})."
            )
        if not np.isfinite(actions).all():
            raise PolicyOutputError("The policy produced non-finite actions (NaN/inf); refusing to send them.")
        reply: dict[str, Any] = {"actions": np.clip(actions, self._low, self._high)}
        if result.get("iterations") is not None:
            reply["iterations"] = int(result["iterations"])
        if result.get("cot_text") is not None:
            reply["cot_text"] = str(result["cot_text"])
        reply["policy_timing"] = {"infer_ms": outcome.policy_ms, "batch_size": outcome.batch_size}
        reply["server_timing"] = {"infer_ms": (time.monotonic() - start) * 1e3}
        if prev_total_ms is not None:
            reply["server_timing"]["prev_total_ms"] = prev_total_ms
        return reply

    async def _submit_unless_gone(self, obs: dict, ws: ServerConnection | None) -> _Outcome:
        """Queue `obs` for the policy; if the client disconnects first, cancel it (the batcher skips cancelled
        jobs, so no policy time is spent on a client that is gone) and raise ConnectionClosed."""
        if ws is None:
            return await self._batcher.submit(obs)
        job = asyncio.ensure_future(self._batcher.submit(obs))
        gone = asyncio.ensure_future(ws.wait_closed())
        try:
            await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not job.done():
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job
            raise ConnectionClosed(None, None)
        return job.result()

    async def _respond(
        self, message: str | bytes, prev_total_ms: float | None, ws: ServerConnection | None = None
    ) -> tuple[bytes | str, bool]:
        """(frame to send, close afterwards?) for one request."""
        start = time.monotonic()
        try:
            obs = await asyncio.to_thread(self._decode, message)
            outcome = await self._submit_unless_gone(obs, ws)
            # latentvla.policy.Policy raises FloatingPointError on non-finite output: a refusal, not a crash
            if isinstance(outcome.error, FloatingPointError | PolicyOutputError):
                raise PolicyOutputError(str(outcome.error))
            if isinstance(outcome.error, BadRequest):  # the policy's own checks (e.g. the instruction's tokens)
                raise outcome.error
            if outcome.error is not None:
                log.error("policy.infer failed:\n%s", outcome.trace)
                return f"Internal server error in policy.infer:\n{outcome.trace}", True
            return msgpack_numpy.packb(self._reply(outcome, start, prev_total_ms)), False
        except (BadRequest, PolicyOutputError) as e:
            log.info("rejected request: %s", e)
            return f"{type(e).__name__}: {e}", False

    async def _handle(self, ws: ServerConnection) -> None:
        """One client connection: metadata frame, then lockstep request/reply until it disconnects."""
        peer = ws.remote_address
        log.info("connection from %s", peer)
        self._busy[ws] = False
        try:
            await ws.send(self._metadata_frame)
            prev_total_ms = None
            while not self._draining:
                start = time.monotonic()
                message = await ws.recv()
                self._busy[ws] = True  # no await since recv returned: shutdown sees it as in flight
                frame, close = await self._respond(message, prev_total_ms, ws)
                await ws.send(frame)
                self._busy[ws] = False
                if close:
                    await ws.close(
                        CloseCode.INTERNAL_ERROR, "Internal server error. Traceback included in previous frame."
                    )
                    return
                prev_total_ms = (time.monotonic() - start) * 1e3
            await ws.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON)  # the reply went out; now the clean close
        except ConnectionClosed:
            log.info("connection from %s closed", peer)
        except Exception:  # never let one connection take the server down
            log.exception("unexpected error on connection from %s", peer)
            try:
                await ws.close(CloseCode.INTERNAL_ERROR, "Internal server error.")
            except Exception:
                log.debug("close after error failed", exc_info=True)
        finally:
            self._busy.pop(ws, None)

    async def _drain(self) -> None:
        """Close idle connections now; let in-flight requests answer, then close those (bounded by drain_timeout)."""
        self._draining = True
        idle = [ws for ws, busy in self._busy.items() if not busy]
        await asyncio.gather(
            *(ws.close(CloseCode.GOING_AWAY, SHUTDOWN_REASON) for ws in idle), return_exceptions=True
        )
        deadline = time.monotonic() + self.drain_timeout
        while self._busy and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._busy:
            log.warning(
                "closing %d connections whose requests did not finish in %.0f s",
                len(self._busy),
                self.drain_timeout,
            )

    # ----------------------------------------------------------------------------------------- lifecycle
    async def serve(self, ready: Callable[[str, int], None] | None = None) -> None:
        """Serve until `stop()`; `ready(host, port)` is called once listening (port 0 picks a free port)."""
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        hard_limit = None if self.max_message_bytes is None else 2 * self.max_message_bytes + 2**20
        self._batcher.start()
        signals = []
        for sig in (signal.SIGTERM, signal.SIGINT):  # only possible in the main thread's loop
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                self._loop.add_signal_handler(sig, self._stop.set)
                signals.append(sig)
        try:
            server: Server
            async with serve(
                self._handle, self.host, self.port, compression=None, max_size=hard_limit, process_request=healthz
            ) as server:
                self.port = server.sockets[0].getsockname()[1]
                if ready is not None:
                    ready(self.host, self.port)
                await self._stop.wait()
                log.info("shutting down: no new connections, finishing in-flight requests")
                server.close(close_connections=False)  # stop listening; open connections are drained below
                await self._drain()
        finally:
            for sig in signals:
                self._loop.remove_signal_handler(sig)
            await self._batcher.stop()

    def start_in_thread(self, timeout: float = 10.0) -> int:
        """Serve from a daemon thread (tests, notebooks); returns the bound port once listening."""
        listening = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve(lambda _h, _p: listening.set())),
            name="latentvla-server",
            daemon=True,
        )
        self._thread.start()
        if not listening.wait(timeout):
            raise RuntimeError(
                f"Policy server did not start listening on {self.host}:{self.port} within {timeout} s."
            )
        return self.port

    def stop(self) -> None:
        """Stop a server started with `serve()`/`start_in_thread()` (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)


def run_server(policy: Any, host: str = "127.0.0.1", port: int = 8000, **kwargs: Any) -> None:
    """Blocking entry point: serve `policy` and print "listening on ws://host:port" once ready."""
    server = PolicyServer(policy, host, port, **kwargs)

    def ready(h: str, p: int) -> None:
        print(f"listening on ws://{h}:{p}  (health: http://{h}:{p}/healthz)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # SIGTERM / SIGINT end it gracefully (module docstring)
        asyncio.run(server.serve(ready))
    print("server stopped", flush=True)
