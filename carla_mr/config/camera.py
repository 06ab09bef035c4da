"""Camera description shared by both backends, with CARLA's intrinsics convention."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from carla_mr.schema import StrictModel


class CameraSpec(StrictModel):
    """An RGB camera attached to a vehicle.

    The mount is relative to the vehicle origin in CARLA's frame: x forward, y right, z up
    (metres); pitch, yaw, roll in degrees. Intrinsics follow CARLA: focal length
    ``w / (2 tan(fov/2))`` pixels, principal point at the image centre.
    """

    width: int = Field(640, ge=16, le=8192)
    height: int = Field(480, ge=16, le=8192)
    fov_deg: float = Field(90.0, gt=1.0, lt=179.0)
    x: float = 1.5
    y: float = 0.0
    z: float = 1.6
    pitch: float = 0.0
    yaw: float = 0.0
    roll: float = 0.0

    @property
    def focal_px(self) -> float:
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    def intrinsics(self) -> np.ndarray:
        """3x3 pinhole matrix K (pixels)."""
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])
