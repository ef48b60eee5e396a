"""envs/workers.py: the one spawned worker pool of collection and evaluation, without a simulator."""

from __future__ import annotations

import pytest

from latentvla.envs.workers import WorkerPool


class _AskingRunner:
    """Job (name, n): asks the parent n times (its payload: (name, i)) and returns the replies and how many jobs
    this process has run (state kept across `run` calls)."""

    def __init__(self, ask, offset: int) -> None:
        self.ask, self.offset, self.served = ask, offset, 0

    def __call__(self, job: tuple) -> dict:
        name, n = job
        if n < 0:
            raise ValueError(f"job {name} has n = {n}")
        self.served += 1
        return {
            "job": name,
            "replies": [self.ask((name, i)) for i in range(n)],
            "served": self.served,
            "offset": self.offset,
        }

    def close(self) -> None:
        pass


def _run(pool: WorkerPool, jobs: list[tuple]) -> tuple[list[dict], list[list], list[tuple]]:
    done, rounds, starts = [], [], []

    def answer(requests):
        rounds.append(sorted(p for _, p in requests))
        return [(name, i, 10 * i) for _, (name, i) in requests]

    pool.run(jobs, done.append, answer=answer, on_start=lambda w, job: starts.append((w, job[0])))
    return done, rounds, starts


@pytest.mark.slow  # spawns worker processes (~10 s of start-up on 2 cores)
def test_lockstep_rounds_route_replies_and_are_a_function_of_the_jobs():
    jobs = [("a", 2), ("b", 3), ("c", 0), ("d", 1)]
    with WorkerPool(2, _AskingRunner, (7,)) as pool:
        first = _run(pool, jobs)
        second = _run(pool, jobs)  # the same processes (their state kept), the same rounds
    done, rounds, starts = first
    assert sorted(r["job"] for r in done) == ["a", "b", "c", "d"]
    for r in done:  # every reply reached the worker that asked
        n = dict(jobs)[r["job"]]
        assert r["replies"] == [(r["job"], i, 10 * i) for i in range(n)] and r["offset"] == 7
    # lock step: workers 0 and 1 start a and b; a asks twice, b three times; c and d follow on worker 0
    assert starts[:2] == [(0, "a"), (1, "b")]
    assert rounds == second[1] and starts == second[2]
    assert rounds[0] == [("a", 0), ("b", 0)] and rounds[1] == [("a", 1), ("b", 1)]
    assert sum(r["served"] for r in second[0]) > sum(r["served"] for r in done)  # processes were reused


@pytest.mark.slow
def test_as_ready_pool_runs_every_job_and_a_failing_job_is_one_line():
    jobs = [(str(i), i % 3) for i in range(6)]
    with WorkerPool(2, _AskingRunner, (0,), lockstep=False) as pool:
        done, _, _ = _run(pool, jobs)
        assert sorted(r["job"] for r in done) == [str(i) for i in range(6)]
    failing = pytest.raises(RuntimeError, match=r"env worker \d failed: ValueError: job bad has n = -1")
    with failing, WorkerPool(2, _AskingRunner, (0,)) as pool:
        _run(pool, [("ok", 1), ("bad", -1)])
