"""Pinhole projection of MuJoCo cameras (pure numpy): what turns privileged 3-D boxes into 2-D CoT boxes.

`privileged.camera.<cam>` holds a camera's pos(3) + xmat(9, row-major) + fovy(1, degrees) per frame
(`camera_params`); `project_points` maps world points into the stored image. Simulators that store a camera's
frames rotated by 180° (Meta-World's corner cameras, LIBERO's cameras; `Simulator.flipped_cameras`) project
with `flipped=True`, so boxes match the stored images; LIBERO's renderer also returns rows bottom-up
(`Simulator.bottom_up_cameras`), so its stored frames are mirror images of the pinhole view.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def camera_params(data: Any, model: Any, cam_id: int) -> np.ndarray:
    """(13,) float32: camera pos(3), xmat(9, row-major), fovy(1, degrees) — the PRIV_CAMERA layout."""
    return np.concatenate([data.cam_xpos[cam_id], data.cam_xmat[cam_id], [model.cam_fovy[cam_id]]]).astype(
        np.float32
    )


def project_points(
    points: np.ndarray, params: np.ndarray, flipped: bool = False, bottom_up: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """World points (N, 3) -> normalized image coords (N, 2) in the stored image, in_front (N,).

    Pinhole model of MuJoCo cameras: the camera frame has x right, y up and looks along -z; `fovy` is the
    vertical field of view; images are square. (0, 0) is the top-left corner, (1, 1) the bottom-right.
    `flipped`: the stored image is the rendered one rotated by 180°. `bottom_up`: the renderer returns rows
    bottom-up (robosuite's OpenGL image convention, LIBERO), so the rendered image is the pinhole view upside
    down; with `flipped` too (LeRobot's LIBERO images) the stored image is the pinhole view mirrored left-right.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    params = np.asarray(params, dtype=np.float64)
    pos, xmat, fovy = params[:3], params[3:12].reshape(3, 3), params[12]
    pc = (points - pos) @ xmat  # world -> camera frame
    depth = -pc[:, 2]
    in_front = depth > 1e-6
    f = 0.5 / np.tan(np.deg2rad(fovy) / 2.0)  # focal length in units of the image height
    safe = np.where(in_front, depth, 1.0)
    uv = np.stack([0.5 + f * pc[:, 0] / safe, 0.5 - f * pc[:, 1] / safe], axis=1)
    if bottom_up:
        uv[:, 1] = 1.0 - uv[:, 1]
    if flipped:
        uv = 1.0 - uv
    return uv, in_front


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box [lo, hi]."""
    idx = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    return np.where(idx == 0, lo, hi)
