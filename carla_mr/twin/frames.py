"""The local metric frame of a trajectory window: origin at the last observed point, x axis along
the vehicle's recent heading (estimated from positions, so it works for any data source).

All arrays are metres. ``past`` is (M, P, 2) with the newest point last.
"""

from __future__ import annotations

import numpy as np


def heading_from_past(past: np.ndarray, min_move_m: float = 0.5) -> np.ndarray:
    """Heading (radians, atan2 in the data's own axes) of each window, shape (M,).

    The direction from the most recent past point that lies at least ``min_move_m`` from the
    last point, to the last point. A vehicle that has not moved that far gets heading 0.
    """
    past = np.asarray(past, np.float64)
    m, p, _ = past.shape
    d = past[:, -1:, :] - past[:, :-1, :]  # (M, P-1, 2) from each earlier point to the last
    far = (d[..., 0] ** 2 + d[..., 1] ** 2) >= min_move_m * min_move_m
    has = far.any(axis=1)
    j = (p - 2) - np.argmax(far[:, ::-1], axis=1)
    v = d[np.arange(m), j]
    ang = np.arctan2(v[:, 1], v[:, 0])
    ang[~has] = 0.0
    return ang


def to_local(points: np.ndarray, origin: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """World (M, T, 2) -> local (M, T, 2): subtract ``origin`` (M, 2), rotate by -heading."""
    c = np.cos(heading)[:, None]
    s = np.sin(heading)[:, None]
    dx = points[..., 0] - origin[:, None, 0]
    dy = points[..., 1] - origin[:, None, 1]
    return np.stack([c * dx + s * dy, -s * dx + c * dy], axis=-1)


def to_world(local: np.ndarray, origin: np.ndarray, heading: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_local`."""
    c = np.cos(heading)[:, None]
    s = np.sin(heading)[:, None]
    lx, ly = local[..., 0], local[..., 1]
    return np.stack([c * lx - s * ly + origin[:, None, 0], s * lx + c * ly + origin[:, None, 1]], axis=-1)
