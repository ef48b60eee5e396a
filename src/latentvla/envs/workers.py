"""Spawned simulator worker processes, one implementation for data collection and evaluation.

    pool = WorkerPool(workers, make_runner, args)      # N processes, each: runner = make_runner(ask, *args)
    pool.run(jobs, on_done, answer=..., on_start=...)  # may be called again: the processes (and their envs) stay
    pool.close()                                       # or `with WorkerPool(...) as pool:`

In each process, `make_runner(ask, *args)` builds a `Runner` once: `runner(job)` rolls out one job and returns
its result, `runner.close()` frees its environments. `ask(payload)` sends a request to the parent and returns
its reply: an evaluation worker asks the one policy (in the parent) for an action chunk; an expert rollout never
asks. The parent drives the pool in rounds: each round reads one message from every busy worker, in worker order
(`lockstep=True`: every busy worker; else: those with a message ready), hands finished results to `on_done`
(and the worker its next job), then answers all requests of the round with one `answer(requests)` call. In lock
step, which requests share a call is a function of the jobs alone, never of timing (eval/pool.py relies on it).

Processes are spawned, not forked: MuJoCo's EGL context and torch's thread pools do not survive fork. Each runs
its simulator on one BLAS/OMP thread (extra threads only fight over the cores) and ignores SIGINT / SIGTERM (a
terminal's Ctrl-C and SLURM's scancel signal the whole process group): the parent decides, kills them at once
and keeps what finished. A failing job comes back as a one-line `RuntimeError` naming the worker and the cause;
a worker that dies is reported with its exit code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections import deque
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import wait
from typing import Any, Protocol

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "LP_NUM_THREADS")


class Runner(Protocol):
    def __call__(self, job: Any) -> Any: ...

    def close(self) -> None: ...


def init_worker_process() -> None:
    """One thread per simulator process, EGL rendering unless set, and the parent handles the signals."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for var in THREAD_VARS:
        os.environ[var] = "1"
    os.environ.setdefault("MUJOCO_GL", "egl")
    if "torch" in sys.modules:  # imported before this ran (by the spawned parent's modules): set it directly
        sys.modules["torch"].set_num_threads(1)


def serve(conn: Any, make_runner: Callable[..., Runner], args: tuple) -> None:
    """A worker process: runs the jobs it is sent (None: stop), reports each result or its first error."""
    init_worker_process()

    def ask(payload: Any) -> Any:
        conn.send(("ask", payload))
        return conn.recv()

    runner = None
    try:
        runner = make_runner(ask, *args)
        while (job := conn.recv()) is not None:
            conn.send(("done", runner(job)))
    except (EOFError, BrokenPipeError):  # the parent is gone
        pass
    except Exception as e:  # noqa: BLE001 (reported to the parent, which raises it in one line)
        conn.send(("error", f"{type(e).__name__}: {e} [{traceback.format_exc(limit=-3).strip()}]"))
    finally:
        if runner is not None:
            runner.close()


class _Worker:
    def __init__(self, index: int, proc: Any, conn: Any) -> None:
        self.index, self.proc, self.conn = index, proc, conn

    def recv(self) -> tuple[str, Any]:
        try:
            return self.conn.recv()
        except EOFError:
            self.proc.join(timeout=1)
            raise RuntimeError(
                f"env worker {self.index} exited unexpectedly (exit code {self.proc.exitcode})"
            ) from None


class WorkerPool:
    """`workers` spawned processes running `make_runner(ask, *args)` (see the module docstring)."""

    def __init__(
        self,
        workers: int,
        make_runner: Callable[..., Runner],
        args: tuple = (),
        *,
        lockstep: bool = True,
        name: str = "latentvla-env",
    ) -> None:
        ctx = get_context("spawn")
        self.lockstep, self._workers, self._stopped = lockstep, [], False
        try:
            for i in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=serve, args=(child, make_runner, args), daemon=True, name=f"{name}-{i}")
                proc.start()
                child.close()
                self._workers.append(_Worker(i, proc, parent))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return len(self._workers)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stop=exc_type is None)

    def run(
        self,
        jobs: list,
        on_done: Callable[[Any], None],
        answer: Callable[[list[tuple[int, Any]]], list[Any]] | None = None,
        on_start: Callable[[int, Any], None] | None = None,
    ) -> None:
        """Run `jobs` to the end: `on_done(result)` for each; `answer([(worker, request), ...])` gives the replies
        to one round's requests in order; `on_start(worker, job)` runs before a job is sent to a worker."""
        queue = deque(jobs)

        def start_next(w: _Worker) -> bool:
            if not queue:
                return False
            job = queue.popleft()
            if on_start is not None:
                on_start(w.index, job)
            w.conn.send(job)
            return True

        busy = [w for w in self._workers if start_next(w)]
        while busy:
            ready = list(busy) if self.lockstep else self._ready(busy)
            requests = []
            for w in ready:
                kind, payload = w.recv()
                if kind == "ask":
                    requests.append((w, payload))
                elif kind == "done":
                    on_done(payload)
                    if not start_next(w):
                        busy.remove(w)
                else:
                    raise RuntimeError(f"env worker {w.index} failed: {payload}")
            if requests:
                if answer is None:
                    raise RuntimeError("an env worker asked for a reply but this pool has no `answer`")
                replies = answer([(w.index, p) for w, p in requests])
                for (w, _), reply in zip(requests, replies, strict=True):
                    w.conn.send(reply)

    @staticmethod
    def _ready(busy: list[_Worker]) -> list[_Worker]:
        """The busy workers with a message waiting (at least one; blocks until then), in worker order."""
        ready = set(wait([w.conn for w in busy]))
        return [w for w in busy if w.conn in ready]

    def close(self, stop: bool = False) -> None:
        """`stop`: tell the workers to finish (they close their envs); else (interrupted, failed) kill them now
        (they ignore SIGTERM)."""
        if self._stopped:
            return
        self._stopped = True
        for w in self._workers:
            if stop:
                with contextlib.suppress(BrokenPipeError, OSError):  # already gone: the join below finds it dead
                    w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=5 if stop else 0)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            w.conn.close()
