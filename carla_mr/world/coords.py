"""Coordinate conversions between SUMO, OpenDRIVE and CARLA frames (vectorised numpy).

- OpenDRIVE / SUMO: right-handed, x east, y north; OpenDRIVE heading ``hdg`` is radians
  counter-clockwise from +x; SUMO's vehicle angle is degrees clockwise from north.
- CARLA: left-handed, x east, y south (``y_carla = -y_odr``); yaw is degrees clockwise seen
  from above, 0 along +x (``yaw = -heading``).
- A SUMO net made by netconvert from an .xodr shifts coordinates by its ``netOffset``:
  ``sumo_xy = odr_xy + net_offset``. An .xodr written by netconvert keeps SUMO's frame
  (its net_offset is (0, 0) in that direction).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def wrap_deg(angle) -> np.ndarray:
    """Wrap degrees into [-180, 180)."""
    a = np.asarray(angle, dtype=np.float64)
    return (a + 180.0) % 360.0 - 180.0


def sumo_angle_to_carla_yaw(angle_deg) -> np.ndarray:
    """SUMO angle (deg clockwise from north) -> CARLA yaw (deg clockwise from +x)."""
    return wrap_deg(np.asarray(angle_deg, dtype=np.float64) - 90.0)


def carla_yaw_to_sumo_angle(yaw_deg) -> np.ndarray:
    """CARLA yaw -> SUMO angle in [0, 360)."""
    return (np.asarray(yaw_deg, dtype=np.float64) + 90.0) % 360.0


def sumo_to_carla(x, y, angle_deg=None, net_offset: Sequence[float] = (0.0, 0.0)):
    """SUMO position (and angle) -> CARLA location (and yaw). Returns (x, y) or (x, y, yaw)."""
    ox, oy = float(net_offset[0]), float(net_offset[1])
    cx = np.asarray(x, dtype=np.float64) - ox
    cy = -(np.asarray(y, dtype=np.float64) - oy)
    if angle_deg is None:
        return cx, cy
    return cx, cy, sumo_angle_to_carla_yaw(angle_deg)


def carla_to_sumo(x, y, yaw_deg=None, net_offset: Sequence[float] = (0.0, 0.0)):
    """CARLA location (and yaw) -> SUMO position (and angle). Inverse of :func:`sumo_to_carla`."""
    ox, oy = float(net_offset[0]), float(net_offset[1])
    sx = np.asarray(x, dtype=np.float64) + ox
    sy = -np.asarray(y, dtype=np.float64) + oy
    if yaw_deg is None:
        return sx, sy
    return sx, sy, carla_yaw_to_sumo_angle(yaw_deg)


def odr_to_carla(x, y, hdg_rad=None):
    """OpenDRIVE (x, y, heading in radians) -> CARLA (x, y, yaw in degrees)."""
    cx = np.asarray(x, dtype=np.float64)
    cy = -np.asarray(y, dtype=np.float64)
    if hdg_rad is None:
        return cx, cy
    return cx, cy, wrap_deg(-np.degrees(np.asarray(hdg_rad, dtype=np.float64)))


def carla_to_odr(x, y, yaw_deg=None):
    """CARLA (x, y, yaw degrees) -> OpenDRIVE (x, y, heading radians in [-pi, pi))."""
    ox = np.asarray(x, dtype=np.float64)
    oy = -np.asarray(y, dtype=np.float64)
    if yaw_deg is None:
        return ox, oy
    return ox, oy, np.radians(wrap_deg(-np.asarray(yaw_deg, dtype=np.float64)))
