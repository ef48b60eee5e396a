"""The simulators latentvla knows: name -> "module:attribute" of its `Simulator` (envs/base.py).

Adding a simulator = one adapter file in `envs/` (a `Simulator` + its `SimEnv`) and one line below. Modules are
imported lazily, so listing a simulator costs nothing until it is used, and its package stays optional.
"""

from __future__ import annotations

import importlib
from functools import cache

from latentvla.envs.base import Simulator
from latentvla.registry import did_you_mean

SIMULATORS: dict[str, str] = {
    "metaworld": "latentvla.envs.metaworld:SIMULATOR",
    "libero": "latentvla.envs.libero:SIMULATOR",
}


@cache
def get_simulator(name: str) -> Simulator:
    """The `Simulator` registered as `name` (did-you-mean on an unknown name)."""
    if name not in SIMULATORS:
        raise ValueError(did_you_mean(name, SIMULATORS, "simulator"))
    module, _, attr = SIMULATORS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def simulator_for_task(task: str) -> Simulator | None:
    """The first simulator that knows `task` by name (for datasets that only record task names), else None."""
    for name in SIMULATORS:
        sim = get_simulator(name)
        try:
            sim.resolve_tasks(task)
        except (ValueError, ImportError):  # not its task, or its package is not installed
            continue
        return sim
    return None


def client_key_map() -> dict[str, str]:
    """openpi-style client key -> LeRobot key, over every registered simulator (the policy server's aliases)."""
    out: dict[str, str] = {}
    for name in SIMULATORS:
        out.update(get_simulator(name).client_keys)
    return out


def flipped_cameras() -> frozenset[str]:
    """Camera names whose frames some simulator stores rotated by 180° (for projecting privileged boxes)."""
    return frozenset().union(*(get_simulator(name).flipped_cameras for name in SIMULATORS))


def bottom_up_cameras() -> frozenset[str]:
    """Camera names some simulator renders with rows bottom-up (robosuite's OpenGL convention: LIBERO)."""
    return frozenset().union(*(get_simulator(name).bottom_up_cameras for name in SIMULATORS))
