"""Named lookups with did-you-mean errors (presets, tasks, suites, strategies)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

V = TypeVar("V")


def did_you_mean(name: str, choices: Iterable[str], what: str) -> str:
    """An error message for an unknown `name` among `choices`, suggesting the closest ones."""
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {what} {name!r}.{hint} Available: {', '.join(choices)}."


def lookup(table: Mapping[str, V], name: str, what: str) -> V:
    """`table[name]`, or a ValueError that lists the closest names."""
    if name not in table:
        raise ValueError(did_you_mean(name, table.keys(), what))
    return table[name]
