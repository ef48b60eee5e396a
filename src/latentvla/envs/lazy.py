"""An observation whose camera images are rendered on first read (evaluation renders only when it must).

A policy that executes a chunk of H actions open-loop reads the observation once per chunk (`Policy.
select_action` touches `obs` only when its queue is empty), yet a simulator that renders in `step` pays for
every step. LIBERO's software rendering costs ~70 + ~45 ms per step for its two cameras against 12 ms of physics
(measured on this CPU), so an evaluation episode that renders every step costs ~20 s and one that renders
once per chunk of 8 ~4 s. `LazyObservation` keeps the cheap entries (state, task) and renders an image only when
someone reads it, from the simulator state of the step it belongs to: results are identical, the evaluation
loop is unchanged, and video recording or collection (which read every frame) still render every frame.

Reading an image after the environment has stepped on would render the wrong state: that raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any


class LazyObservation(Mapping):
    """Mapping of LeRobot keys; `lazy[key]()` renders the value of `key` while `is_current()` holds."""

    def __init__(
        self, eager: dict[str, Any], lazy: dict[str, Callable[[], Any]], is_current: Callable[[], bool]
    ) -> None:
        self._values, self._lazy, self._is_current = dict(eager), dict(lazy), is_current

    def __getitem__(self, key: str) -> Any:
        if key not in self._values:
            if key not in self._lazy:
                raise KeyError(key)
            if not self._is_current():
                raise RuntimeError(
                    f"{key} of an observation read after the environment stepped on; read the "
                    "images of an observation before the next step()"
                )
            self._values[key] = self._lazy.pop(key)()
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        yield from [*self._values, *self._lazy]  # a snapshot: reading a value moves it between the two

    def __len__(self) -> int:
        return len(self._values) + len(self._lazy)

    def __contains__(self, key: object) -> bool:
        return key in self._values or key in self._lazy

    @property
    def rendered(self) -> tuple[str, ...]:
        """The keys whose values exist (eager ones and the images read so far)."""
        return tuple(self._values)
