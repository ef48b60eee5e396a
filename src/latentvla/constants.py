"""Key strings shared across data, models, eval and serving (LeRobot naming), written once.

Shape glossary used in docstrings and trailing comments throughout the package:
    B  batch            T  sequence length (backbone tokens)      D  backbone width
    H  action horizon   A  action dim                             S  state dim
    K  thinking tokens  R  recurrent iterations                   N  image tokens per camera
"""

OBS_IMAGES = "observation.images"  # prefix: f"{OBS_IMAGES}.{camera}"
OBS_STATE = "observation.state"
ACTION = "action"
TASK = "task"
ACTION_IS_PAD = "action_is_pad"
NEXT_IMAGE_SUFFIX = (
    ".next"  # f"{OBS_IMAGES}.{camera}.next": frame t+1 of the primary camera (visual-latent target)
)
NEXT_IMAGE_IS_PAD = "next_image_is_pad"  # True where t is the last frame of its episode (no t+1 target)

# Chain-of-thought columns written by the annotator and read by the dataset.
COT_SEGMENT = "cot.segment"  # e.g. "approach" / "grasp" / "transport" / "release" / "retract"
COT_SUBTASK = "cot.subtask"  # "move toward the puck"
COT_BBOX = "cot.bbox"  # float32 (4,) normalized xyxy in [0, 1]
COT_BBOX_VISIBLE = "cot.bbox_visible"  # bool: False when the target is out of view
COT_BBOX_TEXT = (
    "cot.bbox_text"  # the box as the CoT writes it ("BBox: [...]." / "BBox: none."), made by the loader
)
COT_REASONING = "cot.reasoning"  # "globally ..., locally ..."
COT_TEXT = "cot.text"  # full Stage-I string "Subtask: ... BBox: [x1 y1 x2 y2] Reasoning: ..."

# CoT components in the order the curriculum latentises them (LaRA §3.3, Fig. 8).
COT_COMPONENTS = ("subtask", "bbox", "reasoning")

# Privileged simulator columns recorded by `collect` for the annotator (never fed to a policy).
PRIV_PREFIX = "privileged."
PRIV_EE_POS = "privileged.ee_pos"  # (3,) end-effector xyz, world frame
PRIV_GRIPPER = "privileged.gripper"  # (1,) gripper opening in [0, 1]
PRIV_OBJECT_POS = "privileged.object_pos"  # (3,)
PRIV_GOAL_POS = "privileged.goal_pos"  # (3,)
PRIV_TARGET_CORNERS = "privileged.target_corners"  # (24,) 8 world-frame corners of the target geometry box
PRIV_CONTACT = "privileged.contact"  # (1,) 1.0 when the gripper touches the target
PRIV_PHASE = "privileged.phase"  # (1,) a scripted expert's own phase: index into data.annotate.PHASE_SEGMENTS
PRIV_CAMERA = "privileged.camera."  # prefix: f"privileged.camera.{cam}" -> (13,) pos(3) xmat(9) fovy(1)

DEFAULT_CAMERA = "corner4"
