"""Automatic chain-of-thought annotation (LaRA-VLA §3.2, no human in the loop).

Per episode, from the end-effector trajectory, the gripper opening and (when recorded) contact/object motion:

1. Temporal anchors. A scripted expert that records its own phase (`privileged.phase`, LIBERO) gives the
   segments directly (`phase_segments`: approach / grasp / lift / transport / place / release / retract).
   Otherwise (`segment_episode`): Grasp-type tasks: the gripper closing starts `grasp`, the closed
   hold is `transport`, re-opening is `release`, the rest `retract`; before the first closure `approach`.
   Push-type tasks: the first gripper-target contact (or the target starting to move) starts `contact`, which
   lasts until the target has moved `CONTACT_MOVE` metres; then `push` until the last contact/motion frame,
   then `retract`. A grasp-type episode whose gripper never closes falls back to the push vocabulary.
   Keyframes are the first frame of every segment plus the last frame of the episode.
2. Semantic anchor: the target of the task's annotation table entry (`Simulator.task_spec`, e.g.
   `envs.metaworld_tasks`); without one, the noun phrase after the first article of the instruction
   ("pick up the *alphabet soup* and place it in the basket").
3. Subtask text per segment naming the target ("move toward the puck", "grasp the puck", ...).
4. Target box per frame from a `data.boxes.BoxSource`.
5. Motion reasoning. Global = (end-effector position at the current segment's end keyframe - now),
   local = (next frame - now), each turned into direction words.

Axis convention (Meta-World world frame, checked against the env: the robot base is at y ~ 0 and the table
extends to +y; the camera `behindGripper` looks along +y with +x to its right):
    +x = right, -x = left, +y = forward (away from the robot base), -y = backward, +z = up, -z = down.
Other simulators map their world frame onto these words with `StateLayout.rfu` (LIBERO: the robot faces +x).
Dead-zone: an axis is named only when |delta| >= the dead-zone (GLOBAL_DEADZONE = 1 cm for the global
motion, LOCAL_DEADZONE = 1 mm for the one-step local motion, since one action moves the hand <= 1 cm) AND
|delta| >= DOMINANCE x the largest |delta| (0.3, so a small drift next to a large motion is not named).
No axis named -> "stay". Words combine as "forward-left and up".

Stage-I string (4 decimals; invisible boxes print as zeros, their `cot.bbox_visible` is False):
    "Subtask: grasp the puck. BBox: [0.4123 0.5010 0.4522 0.5391]. Reasoning: globally move down, ..."
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from latentvla import constants as K
from latentvla.data.boxes import BoxSource, ProjectedGeometryBoxes
from latentvla.data.cot import format_cot
from latentvla.envs.base import StateLayout, TaskSpec

GLOBAL_DEADZONE = 0.01  # metres
LOCAL_DEADZONE = 0.001  # metres
DOMINANCE = 0.3
GRIPPER_EPS = 2e-3  # per-step change of the normalized opening that counts as closing / opening
MIN_GRIPPER_RANGE = 0.1  # an episode "closes the gripper" only if the opening varies by at least this much
CONTACT_MOVE = 0.01  # metres the target moves before `contact` turns into `push`
OBJECT_MOVING = 1e-3  # metres per step: the target counts as being moved
SETTLE_FRAMES = 3
NEAR_OBJECT = 0.1  # metres: the hand must be this close for the target's motion to count as contact
PHRASE_EPS = 0.01  # per-step opening change named as "close/open the gripper" outside grasp/release
CLOSED_BELOW = 0.9  # normalized opening under which the gripper is described as closed

GRASP_SEGMENTS = ("approach", "grasp", "transport", "release", "retract")
# A scripted expert's own phases (LIBERO, envs/libero_expert.py), stored as privileged.phase = index in this tuple.
PHASE_SEGMENTS = ("approach", "grasp", "lift", "transport", "place", "release", "retract")
HOLDING_SEGMENTS = ("transport", "lift", "place")  # the object is in the hand: finger rebound is not opening
PUSH_SEGMENTS = ("approach", "contact", "push", "retract")
PUSH_VERBS = ("push", "pull", "press", "turn", "rotate", "slide", "open", "close", "unplug", "sweep", "kick")
_ARTICLES = ("the", "a", "an")
# Words that end the target noun phrase after its article ("the black bowl *on* the plate").
_PHRASE_END = frozenset(
    (
        "and",
        "on",
        "in",
        "into",
        "onto",
        "to",
        "from",
        "of",
        "at",
        "with",
        "between",
        "next",
        "near",
        "under",
        "over",
        "inside",
        "behind",
        "then",
        "it",
        "that",
        "which",
        "so",
    )
)


# ---------------------------------------------------------------------------------------- temporal anchors
def _run_end(delta: np.ndarray, start: int, sign: int) -> int:
    """First index >= start where the per-step change `delta` stops moving in direction `sign`."""
    t = start
    while t < len(delta) and sign * delta[t] > GRIPPER_EPS:
        t += 1
    return t


def _run_start(delta: np.ndarray, end: int, sign: int) -> int:
    """Earliest index <= end such that the gripper moves in direction `sign` on every step from it to `end`."""
    t = end
    while t > 0 and sign * delta[t - 1] > GRIPPER_EPS:
        t -= 1
    return t


def grasp_boundaries(gripper: np.ndarray) -> list[tuple[str, int]] | None:
    """[(segment, start_frame), ...] from the gripper opening (T,), or None when it never closes.

    Closed/open use hysteresis at the midpoint of the episode's opening range, so the elastic rebound of the
    fingers on a grasped object (e.g. 0.38 -> 0.47) is not mistaken for a release.
    """
    g = np.asarray(gripper, dtype=np.float64).reshape(-1)
    if len(g) < 2 or g.max() - g.min() < MIN_GRIPPER_RANGE:
        return None
    mid = 0.5 * (g.max() + g.min())
    delta = np.diff(g)  # delta[t] = g[t+1] - g[t]
    closed = np.flatnonzero(g < mid)
    if len(closed) == 0 or g[0] < mid:  # starts closed: not a grasp trajectory
        return None
    t_cross = int(closed[0])
    t_grasp = _run_start(delta, t_cross, -1)
    t_transport = _run_end(delta, t_cross, -1)  # first frame the fingers stopped closing
    bounds = [("approach", 0), ("grasp", t_grasp), ("transport", t_transport)]
    reopened = np.flatnonzero(g[t_transport:] >= mid)
    if len(reopened):
        t_open = t_transport + int(reopened[0])
        t_release = max(_run_start(delta, t_open, +1), t_transport)
        bounds += [("release", t_release), ("retract", _run_end(delta, t_open, +1))]
    return _clean(bounds, len(g))


def push_boundaries(
    contact: np.ndarray | None, object_pos: np.ndarray | None, length: int, ee: np.ndarray | None = None
) -> list[tuple[str, int]]:
    """[(segment, start_frame), ...] from a contact flag (T,) and/or the target position (T, 3).

    A frame counts as "touching" when the contact flag is set, or when the target moves by more than
    OBJECT_MOVING while the end effector is within NEAR_OBJECT of it (so objects settling after a reset, far
    from the hand, do not count). The first SETTLE_FRAMES frames never count (reset artefacts: in
    drawer-close the hand spawns touching the drawer).
    """
    touching = np.zeros(length, dtype=bool)
    if contact is not None:
        touching |= np.asarray(contact).reshape(length) > 0.5
    moved = None
    if object_pos is not None:
        pos = np.asarray(object_pos, dtype=np.float64).reshape(length, 3)
        step = np.linalg.norm(np.diff(pos, axis=0), axis=1) > OBJECT_MOVING
        if ee is not None:
            near = np.linalg.norm(np.asarray(ee, np.float64).reshape(length, 3) - pos, axis=1) < NEAR_OBJECT
            step &= near[:-1]
        touching[:-1] |= step
        moved = pos
    touching[:SETTLE_FRAMES] = False  # the hand is placed at reset and may start touching; not a contact
    if not touching.any():
        return [("approach", 0)]
    t_contact, t_last = int(np.argmax(touching)), int(length - 1 - np.argmax(touching[::-1]))
    t_push = t_contact + 1
    if moved is not None:
        dist = np.linalg.norm(moved[t_contact:] - moved[t_contact], axis=1)
        far = np.flatnonzero(dist >= CONTACT_MOVE)
        t_push = t_contact + int(far[0]) if len(far) else t_last + 1
    bounds = [
        ("approach", 0),
        ("contact", t_contact),
        ("push", max(t_push, t_contact + 1)),
        ("retract", t_last + 1),
    ]
    return _clean(bounds, length)


def _clean(bounds: list[tuple[str, int]], length: int) -> list[tuple[str, int]]:
    """Drop empty segments (start >= next start or >= length); keep the order."""
    out = []
    for i, (name, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else length
        if start < min(end, length):
            out.append((name, start))
    return out


def segment_episode(
    gripper: np.ndarray,
    *,
    motion: str = "grasp",
    contact: np.ndarray | None = None,
    object_pos: np.ndarray | None = None,
    ee: np.ndarray | None = None,
) -> tuple[list[str], list[int]]:
    """Per-frame segment names (T,) and keyframes (segment starts + the last frame)."""
    length = len(np.asarray(gripper).reshape(-1))
    bounds = grasp_boundaries(gripper) if motion == "grasp" else None
    if bounds is None:
        bounds = push_boundaries(contact, object_pos, length, ee)
    names: list[str] = []
    for i, (name, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else length
        names += [name] * (end - start)
    keyframes = [start for _, start in bounds] + [length - 1]
    return names, sorted(set(keyframes))


def phase_segments(phase: np.ndarray) -> tuple[list[str], list[int]]:
    """Per-frame segment names and keyframes (run starts + the last frame) from recorded expert phases, each an
    index into PHASE_SEGMENTS (constants.PRIV_PHASE)."""
    idx = np.asarray(phase).reshape(-1).round().astype(int)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(PHASE_SEGMENTS):
        raise ValueError(f"{K.PRIV_PHASE} must index PHASE_SEGMENTS {PHASE_SEGMENTS}, got {sorted(set(idx))}")
    names = [PHASE_SEGMENTS[i] for i in idx]
    starts = [0] + [t for t in range(1, len(idx)) if idx[t] != idx[t - 1]]
    return names, sorted(set(starts + [len(idx) - 1]))


# ---------------------------------------------------------------------------------------- language
def target_noun(instruction: str) -> str:
    """Fallback semantic anchor: the noun phrase after the first article, up to a preposition / conjunction /
    punctuation ("open the drawer" -> "drawer", "put the black bowl on the plate" -> "black bowl")."""
    raw = instruction.split()
    words = [w.strip(".,;:!?").lower() for w in raw]
    for i, w in enumerate(words[:-1]):
        if w in _ARTICLES:
            phrase = []
            for word, token in zip(words[i + 1 :], raw[i + 1 :]):
                if word in _PHRASE_END or not word:
                    break
                phrase.append(word)
                if token[-1] in ".,;:!?":
                    break
            if phrase:
                return " ".join(phrase)
    return words[-1] if words else "object"


def subtask_text(segment: str, target: str, instruction: str = "", goal: str = "goal") -> str:
    """Subtask sentence for a segment, naming the target (and where it goes: `goal`)."""
    verb = instruction.split()[0].lower() if instruction.split() else "push"
    verb = verb if verb in PUSH_VERBS else "push"
    texts = {
        "approach": f"move toward the {target}",
        "grasp": f"grasp the {target}",
        "lift": f"lift the {target}",
        "transport": f"carry the {target} to the {goal}",
        "place": f"place the {target} {'in' if ' in the ' in f' {instruction} ' else 'on'} the {goal}",
        "release": f"release the {target}",
        "retract": "retract the gripper",
        "contact": f"make contact with the {target}",
        "push": f"{verb} the {target}",
    }
    if segment not in texts:
        raise ValueError(f"Unknown segment {segment!r}; expected one of {sorted(texts)}")
    return texts[segment]


def direction_words(delta: np.ndarray, deadzone: float) -> str:
    """World-frame displacement (3,) -> "forward-left and up" / "down" / "stay" (see module docstring)."""
    d = np.asarray(delta, dtype=np.float64).reshape(3)
    big = np.abs(d).max()
    named = (np.abs(d) >= deadzone) & (np.abs(d) >= DOMINANCE * big)
    horizontal = [
        ("forward" if d[1] > 0 else "backward") if named[1] else "",
        ("right" if d[0] > 0 else "left") if named[0] else "",
    ]
    horizontal = "-".join(w for w in horizontal if w)
    vertical = ("up" if d[2] > 0 else "down") if named[2] else ""
    words = " and ".join(w for w in (horizontal, vertical) if w)
    return words or "stay"


def gripper_phrase(segment: str, g_now: float, g_next: float) -> str:
    """What the gripper does now: fixed by the grasp segments, else from the next opening change."""
    if segment == "grasp":
        return "close the gripper"
    if segment == "release":
        return "open the gripper"
    if segment not in HOLDING_SEGMENTS:  # holding: fingers rebound on the object; that is not opening
        if g_next < g_now - PHRASE_EPS:
            return "close the gripper"
        if g_next > g_now + PHRASE_EPS:
            return "open the gripper"
    return "keep the gripper closed" if g_now < CLOSED_BELOW else "keep the gripper open"


def motion_phrase(delta: np.ndarray, deadzone: float) -> str:
    """ "move forward-left and up" or "stay"."""
    words = direction_words(delta, deadzone)
    return words if words == "stay" else f"move {words}"


def reasoning_text(global_delta: np.ndarray, local_delta: np.ndarray, gripper: str) -> str:
    """ "globally move forward and down, locally move down, close the gripper"."""
    return (
        f"globally {motion_phrase(global_delta, GLOBAL_DEADZONE)}, "
        f"locally {motion_phrase(local_delta, LOCAL_DEADZONE)}, {gripper}"
    )


# ---------------------------------------------------------------------------------------- episodes
def _ee_and_gripper(episode: dict, layout: StateLayout | None) -> tuple[np.ndarray, np.ndarray]:
    if K.PRIV_EE_POS in episode and K.PRIV_GRIPPER in episode:
        return (
            np.asarray(episode[K.PRIV_EE_POS], np.float64).reshape(-1, 3),
            np.asarray(episode[K.PRIV_GRIPPER], np.float64).reshape(-1),
        )
    layout = layout or StateLayout()
    if K.OBS_STATE not in episode or np.asarray(episode[K.OBS_STATE]).shape[-1] < layout.min_dim:
        raise KeyError(
            f"Annotation needs {K.PRIV_EE_POS} + {K.PRIV_GRIPPER}, or {K.OBS_STATE} with hand xyz + "
            f"gripper where {layout} says; this episode has neither."
        )
    return layout.split(episode[K.OBS_STATE])


def lookup_task_spec(task_name: str | None) -> TaskSpec | None:
    """The annotation table entry of a task name in any registered simulator, or None."""
    if not task_name:
        return None
    from latentvla.envs.registry import simulator_for_task

    sim = simulator_for_task(task_name)
    return sim.task_spec(sim.resolve_tasks(task_name)[0]) if sim is not None else None


def annotate_episode(
    episode: dict,
    *,
    task_name: str | None,
    instruction: str,
    box_source: BoxSource | None,
    camera: str = K.DEFAULT_CAMERA,
    layout: StateLayout | None = None,
) -> dict:
    """The cot.* columns (constants.COT_*) for one episode (see the module docstring for the pipeline).

    `layout`: where hand xyz and gripper sit in `observation.state` when there are no privileged columns
    (default: Meta-World's first 4 dims)."""
    spec = lookup_task_spec(task_name)
    target = spec.target if spec else target_noun(instruction)
    ee, grip = _ee_and_gripper(episode, layout)
    motion_frame = (layout or StateLayout()).to_rfu(ee)  # the motion words' frame: right, forward, up
    length = len(ee)
    if K.PRIV_PHASE in episode:  # a scripted expert recorded its own phase: that is the segment
        segments, keyframes = phase_segments(episode[K.PRIV_PHASE])
    else:
        segments, keyframes = segment_episode(
            grip,
            motion=spec.motion if spec else "grasp",
            contact=episode.get(K.PRIV_CONTACT),
            object_pos=episode.get(K.PRIV_OBJECT_POS),
            ee=ee,
        )
    if box_source is None:
        bbox, visible = np.zeros((length, 4), np.float32), np.zeros(length, bool)
    else:
        bbox, visible = box_source.boxes(episode, camera)
    nxt = np.minimum(np.arange(length) + 1, length - 1)
    seg_end = np.array([next((k for k in keyframes if k > t), length - 1) for t in range(length)])
    subtasks, reasonings, texts = [], [], []
    for t in range(length):
        sub = subtask_text(segments[t], target, instruction, spec.goal if spec else "goal")
        phrase = gripper_phrase(segments[t], grip[t], grip[nxt[t]])
        rea = reasoning_text(
            motion_frame[seg_end[t]] - motion_frame[t], motion_frame[nxt[t]] - motion_frame[t], phrase
        )
        subtasks.append(sub)
        reasonings.append(rea)
        texts.append(format_cot(sub, bbox[t], bool(visible[t]), rea))
    return {
        K.COT_SEGMENT: segments,
        K.COT_SUBTASK: subtasks,
        K.COT_BBOX: np.asarray(bbox, np.float32),
        K.COT_BBOX_VISIBLE: np.asarray(visible, bool),
        K.COT_REASONING: reasonings,
        K.COT_TEXT: texts,
    }


def default_box_source(episode: dict, camera: str) -> BoxSource | None:
    """ProjectedGeometryBoxes when the episode has the privileged corners + camera, else None."""
    if K.PRIV_TARGET_CORNERS in episode and f"{K.PRIV_CAMERA}{camera}" in episode:
        return ProjectedGeometryBoxes()
    return None


def choose_state_layout(info: dict, state_dim: int | None, env: str | None = None) -> tuple[str, StateLayout]:
    """(simulator name, layout) for a dataset: `env` if given, else the simulator whose `robot_type` matches
    meta/info.json, else the only simulator whose state size equals the dataset's; Meta-World's 4-D layout
    when nothing matches (its first 4 dims: hand xyz + opening)."""
    from latentvla.envs.registry import SIMULATORS, get_simulator

    if env is not None:
        return env, get_simulator(env).state_layout
    sims = [get_simulator(n) for n in SIMULATORS]
    for sim in sims:
        if info.get("robot_type") == sim.robot_type and state_dim == sim.state_dim:
            return sim.name, sim.state_layout
    by_dim = [sim for sim in sims if sim.state_dim == state_dim]
    if len(by_dim) == 1:
        return by_dim[0].name, by_dim[0].state_layout
    return "metaworld", get_simulator("metaworld").state_layout


def annotate_dataset(
    root: str | Path,
    *,
    box_source: BoxSource | None = None,
    camera: str | None = None,
    env: str | None = None,
    lara=None,
) -> dict:
    """Annotate every episode of the dataset at `root` in place; returns a summary.

    Only the cot.* columns are added to the data files (replaced when present), with their feature specs in
    meta/info.json and their stats; videos, images, feature names, existing stats, the format version (a v2.1
    dataset stays v2.1) and files next to the dataset (e.g. `annotations/`) are left as they were
    (data/add_columns.py). No pixel is read: the annotation needs only state, privileged columns and boxes.

    `env`: the simulator whose `StateLayout` says where hand xyz and gripper sit in `observation.state` (default:
    chosen from the dataset's robot_type / state size, `choose_state_layout`). `lara`: imported LaRA-VLA
    annotations (`data.lara_annotations.LaraAnnotations`): their subtask / reasoning replace the automatic ones
    where present and their boxes are the box source unless `box_source` is given."""
    from latentvla.data.add_columns import add_columns
    from latentvla.data.lara_annotations import LaraBoxes
    from latentvla.data.lerobot import LeRobotDatasetReader

    root = Path(root)
    reader = LeRobotDatasetReader(root)
    if reader.num_episodes == 0:
        raise ValueError(f"{root}: the dataset has no episodes; nothing to annotate.")
    state_shape = reader.info.get("features", {}).get(K.OBS_STATE, {}).get("shape") or [None]
    layout_name, layout = choose_state_layout(reader.info, state_shape[0], env)
    cams = [k.removeprefix(f"{K.OBS_IMAGES}.") for k in reader.camera_keys]
    camera = camera or (cams[0] if cams else K.DEFAULT_CAMERA)
    if box_source is None and lara is not None and lara.bbox:
        box_source = LaraBoxes(lara)
    frames = boxed = imported = 0
    warned = set()
    columns = []
    for i in range(reader.num_episodes):
        ep, meta = reader.episode(i, images=False), dict(reader.episodes[i])
        ep["episode_index"] = int(meta.get("episode_index", i))
        if K.PRIV_EE_POS not in ep and "ee" not in warned:
            warned.add("ee")
            print(
                f"annotate: no {K.PRIV_EE_POS}/{K.PRIV_GRIPPER}; reading hand xyz + gripper from {K.OBS_STATE} "
                f"with the {layout_name} layout {layout}"
            )
        source = box_source or default_box_source(ep, camera)
        if source is None and "box" not in warned:
            warned.add("box")
            warnings.warn(
                f"No box source for camera {camera!r} (no privileged corners/camera and no --boxes-jsonl):"
                " every cot.bbox is flagged not visible.",
                stacklevel=2,
            )
        cols = annotate_episode(
            ep,
            task_name=meta.get("task_name"),
            instruction=str(ep[K.TASK]),
            box_source=source,
            camera=camera,
            layout=layout,
        )
        if lara is not None:
            imported += lara.apply(cols, ep["episode_index"])
        columns.append(cols)
        frames += len(cols[K.COT_SEGMENT])
        boxed += int(cols[K.COT_BBOX_VISIBLE].sum())
    files = add_columns(reader, columns)
    summary = {
        "episodes": reader.num_episodes,
        "frames": frames,
        "visible_box_fraction": boxed / max(frames, 1),
        "version": reader.version,
        "files_rewritten": files,
    }
    if lara is not None:
        summary["lara_cot_fraction"] = imported / max(frames, 1)
    return summary
