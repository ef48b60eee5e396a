"""Halting strategies for the recurrent-depth head's adaptive compute (RD-VLA §III-C, Eq. 7).

Each strategy is a two-method class (Huginn's exit evaluators, without string switches):
    reset(batch_size)                 called once before the first iteration of a call
    check(prev_actions, actions)  ->  (halt (B,) bool, score (B,) float)
`actions` is the chunk decoded through the coda at iteration k, `prev_actions` the one at k - 1 (both
normalized, (B, H, A)), so the earliest possible stop is iteration 2, as in the RD code. The head asks every
iteration and freezes each batch element on its own at the first iteration whose `halt` is True; that element
then leaves the head's active batch (no more compute for it). `check` always receives the whole batch (a halted
row compares its frozen chunk with itself), so per-element state such as the patience streak stays aligned.

- FixedDepth: never halts early (score = mean squared change, for logging).
- MSEConvergence(delta): halt when mean((a_k - a_{k-1})^2) < delta. The paper writes ||.||^2 (Eq. 7); the RD
  code takes the mean over all elements, which is what we do, so its thresholds (5e-4 best, Table II) apply.
- CosineConvergence(threshold): halt when cos(a_k, a_{k-1}) > threshold (RD code's alternative, 0.999).
`patience` > 1 requires the criterion to hold on that many consecutive iterations.
"""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import Tensor

from latentvla.registry import lookup


def mean_squared_change(prev_actions: Tensor, actions: Tensor) -> Tensor:
    """(B, ...) x 2 -> (B,) mean over all non-batch elements of the squared difference."""
    if prev_actions.shape != actions.shape:
        raise ValueError(f"prev_actions {tuple(prev_actions.shape)} and actions {tuple(actions.shape)} differ.")
    return (actions - prev_actions).float().pow(2).flatten(1).mean(dim=1)


class _Convergence(abc.ABC):
    """Shared bookkeeping: a per-element count of consecutive iterations that met the criterion."""

    def __init__(self, patience: int = 1):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        self.patience = patience
        self._streak: Tensor | None = None

    def reset(self, batch_size: int) -> None:
        self._streak = torch.zeros(batch_size, dtype=torch.long)

    @abc.abstractmethod
    def _met(self, prev_actions: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(criterion met (B,) bool, score (B,)) for one iteration; defined by each strategy."""

    def check(self, prev_actions: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        met, score = self._met(prev_actions, actions)
        if self._streak is None or self._streak.shape[0] != met.shape[0]:
            raise RuntimeError(f"call {type(self).__name__}.reset(batch_size={met.shape[0]}) before check().")
        self._streak = self._streak.to(met.device)
        self._streak = torch.where(met, self._streak + 1, torch.zeros_like(self._streak))
        return self._streak >= self.patience, score


class FixedDepth(_Convergence):
    """Never halts early: the head runs exactly `num_iterations`."""

    def _met(self, prev_actions: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        score = mean_squared_change(prev_actions, actions)
        return torch.zeros_like(score, dtype=torch.bool), score


class MSEConvergence(_Convergence):
    """Halt when the mean squared change of the decoded chunk drops below `delta` (RD-VLA Eq. 7)."""

    def __init__(self, delta: float = 1e-3, patience: int = 1):
        super().__init__(patience)
        if delta <= 0:
            raise ValueError(f"delta must be > 0, got {delta}.")
        self.delta = delta

    def _met(self, prev_actions: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        score = mean_squared_change(prev_actions, actions)
        return score < self.delta, score


class CosineConvergence(_Convergence):
    """Halt when the cosine similarity of consecutive decoded chunks exceeds `threshold`."""

    def __init__(self, threshold: float = 0.999, patience: int = 1):
        super().__init__(patience)
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"cosine threshold must be in [-1, 1], got {threshold}.")
        self.threshold = threshold

    def _met(self, prev_actions: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        if prev_actions.shape != actions.shape:
            raise ValueError(
                f"prev_actions {tuple(prev_actions.shape)} and actions {tuple(actions.shape)} differ."
            )
        score = F.cosine_similarity(actions.float().flatten(1), prev_actions.float().flatten(1), dim=1, eps=1e-8)
        return score > self.threshold, score


HaltingStrategy = FixedDepth | MSEConvergence | CosineConvergence
HALTING = {"fixed": FixedDepth, "mse": MSEConvergence, "cosine": CosineConvergence}


HALTING_ARG = {"mse": "delta", "cosine": "threshold"}  # the one numeric argument of each thresholded strategy


def parse_halting(spec: str | None) -> HaltingStrategy | None:
    """THE halting spec parser (eval, serve, Policy, sweeps): "mse:5e-4" -> MSEConvergence(delta=5e-4),
    "cosine:0.999", "fixed"; None -> None (fixed depth). A thresholded strategy needs its threshold."""
    if spec is None:
        return None
    name, _, value = spec.strip().partition(":")
    if not value:
        if name in HALTING_ARG:
            raise ValueError(f"halting {name!r} needs a threshold, e.g. '{name}:5e-4' (RD-VLA's best mse δ)")
        return make_halting(name)
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"halting threshold in {spec!r} is not a number; write e.g. 'mse:5e-4'") from None
    if name not in HALTING_ARG:
        raise ValueError(f"halting {name!r} takes no threshold; use one of {sorted(HALTING_ARG)} with ':value'")
    return make_halting(name, **{HALTING_ARG[name]: number})


def halting_spec(name: str | None, delta: float | None) -> str | None:
    """The CLI flags `--halting NAME --delta X` as a `parse_halting` spec ("mse:0.0005"), validated."""
    if name is None:
        if delta is not None:
            raise ValueError("--delta only makes sense with --halting mse|cosine")
        return None
    spec = name if delta is None else f"{name}:{delta!r}"
    parse_halting(spec)
    return spec


def make_halting(name: str, **kwargs: float) -> HaltingStrategy:
    """Build a strategy by name ("fixed", "mse", "cosine"); unknown names get a did-you-mean error."""
    cls = lookup(HALTING, name, "halting strategy")
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"bad arguments {kwargs} for halting strategy {name!r}: {err}") from None
