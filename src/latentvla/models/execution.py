"""Adaptive execution horizon: how many actions of a chunk to execute, given the iterations k* the head used
(RD-VLA §III-D, Eq. 8-9).

Direction. The paper reads deep recurrence as uncertainty and executes *fewer* actions then ("paper", the
default). The released RD code's binary mode does the opposite (README: "fewer actions when convergence is
fast (uncertain)"): 8 actions when iters > 4, else 4. `direction="code"` applies that reading, fast
convergence = uncertain, to both rules (for the linear rule it mirrors the ramp; the code's own linear mode
happens to decay like the paper's).

    binary, paper:  k* <= tau -> H_long,   k* > tau -> H_short                      (Eq. 8)
    binary, code:   k* <= tau -> H_short,  k* > tau -> H_long
    linear, paper:  max(H_min, H_max - max(0, k* - tau_base))                        (Eq. 9)
    linear, code:   min(H_max, H_min + max(0, k* - tau_base))

Every result is clipped to [1, chunk_len]. CLI strings: "fixed:N", "binary:TAU,H_SHORT,H_LONG[:code]",
"linear:H_MIN,H_MAX,TAU_BASE[:code]".
"""

from __future__ import annotations

from dataclasses import dataclass

from latentvla.registry import did_you_mean

DIRECTIONS = ("paper", "code")


def _clip(h: int, chunk_len: int) -> int:
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}.")
    return max(1, min(chunk_len, h))


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(did_you_mean(direction, DIRECTIONS, "execution-horizon direction"))


@dataclass(frozen=True)
class FixedHorizon:
    """Always execute n actions (RD code default: 5 of 8)."""

    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"fixed horizon must be >= 1, got {self.n}.")

    def horizon(self, iterations: int, chunk_len: int) -> int:
        return _clip(self.n, chunk_len)


@dataclass(frozen=True)
class BinaryThresholdHorizon:
    """Two horizons split at iteration threshold tau (Eq. 8)."""

    tau: int
    h_short: int
    h_long: int
    direction: str = "paper"

    def __post_init__(self) -> None:
        _check_direction(self.direction)
        if self.tau < 0 or self.h_short < 1 or self.h_long < 1:
            raise ValueError(
                f"binary horizon needs tau >= 0 and horizons >= 1, got {self.tau}, {self.h_short}, {self.h_long}."
            )

    def horizon(self, iterations: int, chunk_len: int) -> int:
        deep = iterations > self.tau
        if self.direction == "code":
            deep = not deep
        return _clip(self.h_short if deep else self.h_long, chunk_len)


@dataclass(frozen=True)
class LinearDecayHorizon:
    """One action fewer (paper) or more (code) per iteration beyond tau_base, within [h_min, h_max] (Eq. 9)."""

    h_min: int
    h_max: int
    tau_base: int
    direction: str = "paper"

    def __post_init__(self) -> None:
        _check_direction(self.direction)
        if not 1 <= self.h_min <= self.h_max or self.tau_base < 0:
            raise ValueError(
                f"linear horizon needs 1 <= h_min <= h_max and tau_base >= 0, got {self.h_min}, {self.h_max}, {self.tau_base}."
            )

    def horizon(self, iterations: int, chunk_len: int) -> int:
        excess = max(0, iterations - self.tau_base)
        if self.direction == "paper":
            return _clip(max(self.h_min, self.h_max - excess), chunk_len)
        return _clip(min(self.h_max, self.h_min + excess), chunk_len)


ExecutionHorizon = FixedHorizon | BinaryThresholdHorizon | LinearDecayHorizon
_KINDS = {"fixed": (FixedHorizon, 1), "binary": (BinaryThresholdHorizon, 3), "linear": (LinearDecayHorizon, 3)}
_USAGE = 'use "fixed:N", "binary:TAU,H_SHORT,H_LONG[:code]" or "linear:H_MIN,H_MAX,TAU_BASE[:code]"'


def make_horizon(spec: str) -> ExecutionHorizon:
    """Parse a CLI string such as "fixed:4", "binary:8,4,8", "linear:2,8,6" or "binary:8,4,8:code"."""
    parts = spec.strip().split(":")
    kind = parts[0]
    if kind not in _KINDS:
        raise ValueError(did_you_mean(kind, _KINDS, "execution horizon") + f" ({_USAGE})")
    cls, n_args = _KINDS[kind]
    if len(parts) < 2 or len(parts) > (2 if kind == "fixed" else 3):
        raise ValueError(f"bad execution horizon {spec!r}: {_USAGE}.")
    try:
        args = [int(x) for x in parts[1].split(",")]
    except ValueError:
        raise ValueError(f"bad execution horizon {spec!r}: arguments must be integers ({_USAGE}).") from None
    if len(args) != n_args:
        raise ValueError(f"execution horizon {kind!r} takes {n_args} integer(s), got {len(args)} in {spec!r}.")
    if len(parts) == 3:
        _check_direction(parts[2])
        return cls(*args, direction=parts[2])
    return cls(*args)
