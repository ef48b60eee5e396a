"""The 50 Meta-World v3 tasks: instruction, semantic anchor, motion type, and named suites.

Every task has a `TaskSpec` (envs/base.py):
- `instruction`: the natural-language command stored in the dataset's `task` column;
- `target`: the semantic anchor of LaRA-VLA's CoT (§3.2): the object the subtask text names and the bounding
  box frames ("puck", "button", "drawer", ...);
- `motion`: "grasp" (segments approach / grasp / transport / release / retract) or "push"
  (approach / contact / push / retract), the two segment vocabularies of `data.annotate`;
- `box_anchor`: "object" (the box frames the task's main object) or "goal" (reach-style tasks, where the
  thing to localise is the goal point, not a movable object).

Suites: `mt10` and `mt50` are Meta-World's benchmarks; `easy` (28) / `medium` (11) / `hard` (6) /
`very_hard` (5) are LeRobot's difficulty grouping (`lerobot/envs/metaworld_config.json`, after Seo et al.'s
split of MT50), so results are comparable with LeRobot's Meta-World evaluation.
"""

from __future__ import annotations

from latentvla.envs.base import TaskSpec
from latentvla.registry import did_you_mean


def _g(instruction: str, target: str) -> TaskSpec:
    return TaskSpec(instruction, target, "grasp")


def _p(instruction: str, target: str, box_anchor: str = "object") -> TaskSpec:
    return TaskSpec(instruction, target, "push", box_anchor)


# Keys are Meta-World's canonical names; the order is Meta-World's ALL_V3_ENVIRONMENTS order (task_id).
TASKS: dict[str, TaskSpec] = {
    "assembly-v3": _g("pick up the nut and place it onto the peg", "nut"),
    "basketball-v3": _g("pick up the basketball and dunk it into the basket", "basketball"),
    "bin-picking-v3": _g("pick up the puck from the left bin and place it into the right bin", "puck"),
    "box-close-v3": _g("pick up the lid and close the box with it", "lid"),
    "button-press-topdown-v3": _p("press the button from the top", "button"),
    "button-press-topdown-wall-v3": _p("reach over the wall and press the button from the top", "button"),
    "button-press-v3": _p("press the button", "button"),
    "button-press-wall-v3": _p("reach around the wall and press the button", "button"),
    "coffee-button-v3": _p("push the button on the coffee machine", "coffee machine button"),
    "coffee-pull-v3": _g("pull the mug out from under the coffee machine", "mug"),
    "coffee-push-v3": _g("push the mug under the coffee machine", "mug"),
    "dial-turn-v3": _p("rotate the dial 180 degrees", "dial"),
    "disassemble-v3": _g("pick the nut off the peg", "nut"),
    "door-close-v3": _p("close the door", "door"),
    "door-lock-v3": _p("lock the door by turning the lock clockwise", "door lock"),
    "door-open-v3": _p("open the door", "door"),
    "door-unlock-v3": _p("unlock the door by turning the lock counter-clockwise", "door lock"),
    "hand-insert-v3": _p("insert the gripper into the hole", "hole", "goal"),
    "drawer-close-v3": _p("push the drawer closed", "drawer"),
    "drawer-open-v3": _p("pull the drawer open", "drawer"),
    "faucet-open-v3": _p("turn the faucet handle counter-clockwise", "faucet handle"),
    "faucet-close-v3": _p("turn the faucet handle clockwise", "faucet handle"),
    "hammer-v3": _g("pick up the hammer and hammer the nail into the wall", "hammer"),
    "handle-press-side-v3": _p("press the handle down from the side", "handle"),
    "handle-press-v3": _p("press the handle down", "handle"),
    "handle-pull-side-v3": _p("pull the handle up from the side", "handle"),
    "handle-pull-v3": _p("pull the handle up", "handle"),
    "lever-pull-v3": _p("pull the lever up 90 degrees", "lever"),
    "pick-place-wall-v3": _g("pick up the puck, reach over the wall and place it at the goal", "puck"),
    "pick-out-of-hole-v3": _g("pick the puck up out of the hole", "puck"),
    "pick-place-v3": _g("pick up the puck and place it at the goal", "puck"),
    "plate-slide-v3": _p("slide the plate into the cabinet", "plate"),
    "plate-slide-side-v3": _p("slide the plate into the cabinet from the side", "plate"),
    "plate-slide-back-v3": _p("slide the plate out of the cabinet", "plate"),
    "plate-slide-back-side-v3": _p("slide the plate out of the cabinet from the side", "plate"),
    "peg-insert-side-v3": _g("pick up the peg and insert it sideways into the hole", "peg"),
    "peg-unplug-side-v3": _g("unplug the peg sideways", "peg"),
    "soccer-v3": _p("push the soccer ball into the goal", "soccer ball"),
    "stick-push-v3": _g("pick up the stick and push the box with it", "stick"),
    "stick-pull-v3": _g("pick up the stick and pull the box with it", "stick"),
    "push-v3": _p("push the puck to the goal", "puck"),
    "push-wall-v3": _p("push the puck around the wall to the goal", "puck"),
    "push-back-v3": _p("push the puck back to the goal", "puck"),
    "reach-v3": _p("reach the goal position", "goal", "goal"),
    "reach-wall-v3": _p("reach over the wall to the goal position", "goal", "goal"),
    "shelf-place-v3": _g("pick up the puck and place it on the shelf", "puck"),
    "sweep-into-v3": _g("sweep the puck into the hole", "puck"),
    "sweep-v3": _g("sweep the puck off the table", "puck"),
    "window-open-v3": _p("push the window open", "window handle"),
    "window-close-v3": _p("push the window closed", "window handle"),
}

TASK_IDS: dict[str, int] = {name: i for i, name in enumerate(TASKS)}

SUITES: dict[str, tuple[str, ...]] = {
    "mt10": (
        "reach-v3",
        "push-v3",
        "pick-place-v3",
        "door-open-v3",
        "drawer-open-v3",
        "drawer-close-v3",
        "button-press-topdown-v3",
        "peg-insert-side-v3",
        "window-open-v3",
        "window-close-v3",
    ),
    "mt50": tuple(TASKS),
    "easy": (
        "button-press-v3",
        "button-press-topdown-v3",
        "button-press-topdown-wall-v3",
        "button-press-wall-v3",
        "coffee-button-v3",
        "dial-turn-v3",
        "door-close-v3",
        "door-lock-v3",
        "door-open-v3",
        "door-unlock-v3",
        "drawer-close-v3",
        "drawer-open-v3",
        "faucet-close-v3",
        "faucet-open-v3",
        "handle-press-v3",
        "handle-press-side-v3",
        "handle-pull-v3",
        "handle-pull-side-v3",
        "lever-pull-v3",
        "plate-slide-v3",
        "plate-slide-back-v3",
        "plate-slide-back-side-v3",
        "plate-slide-side-v3",
        "reach-v3",
        "reach-wall-v3",
        "window-close-v3",
        "window-open-v3",
        "peg-unplug-side-v3",
    ),
    "medium": (
        "basketball-v3",
        "bin-picking-v3",
        "box-close-v3",
        "coffee-pull-v3",
        "coffee-push-v3",
        "hammer-v3",
        "peg-insert-side-v3",
        "push-wall-v3",
        "soccer-v3",
        "sweep-v3",
        "sweep-into-v3",
    ),
    "hard": ("assembly-v3", "hand-insert-v3", "pick-out-of-hole-v3", "pick-place-v3", "push-v3", "push-back-v3"),
    "very_hard": ("shelf-place-v3", "disassemble-v3", "stick-pull-v3", "stick-push-v3", "pick-place-wall-v3"),
}


def canonical_task(name: str) -> str:
    """'pick-place' / 'pick-place-v3' / 'metaworld-pick-place-v3' -> 'pick-place-v3' (did-you-mean on error)."""
    key = name.strip().lower().removeprefix("metaworld-")
    if not key.endswith("-v3"):
        key = f"{key}-v3"
    if key not in TASKS:
        short = [t.removesuffix("-v3") for t in TASKS]
        raise ValueError(did_you_mean(name, [*short, *SUITES], "Meta-World task or suite"))
    return key


def task_spec(name: str) -> TaskSpec:
    """The `TaskSpec` of a task name (with or without '-v3')."""
    return TASKS[canonical_task(name)]


def resolve_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Comma-separated task names and/or suite names -> canonical task names, in order, without duplicates.

    >>> resolve_tasks("pick-place,mt10")[:2]
    ['pick-place-v3', 'reach-v3']
    """
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str] = []
    for part in (p.strip() for p in parts):
        if not part:
            continue
        names = SUITES[part.lower()] if part.lower() in SUITES else (canonical_task(part),)
        out.extend(n for n in names if n not in out)
    if not out:
        raise ValueError(
            f"No Meta-World task given in {spec!r}. Pass names like 'pick-place-v3' or a suite: "
            f"{', '.join(SUITES)}."
        )
    return out
