"""Camera description shared by both backends, with CARLA's intrinsics convention."""

from __future__ import annotations

import math
from typing import Literal

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
    weather: Literal["clear", "overcast", "fog", "dusk", "night"] = Field(
        "clear", description="Light and weather of the embedded OpenGL camera (see WEATHER_PRESETS).")

    @property
    def focal_px(self) -> float:
        return self.width / (2.0 * math.tan(math.radians(self.fov_deg) / 2.0))

    def intrinsics(self) -> np.ndarray:
        """3x3 pinhole matrix K (pixels)."""
        f = self.focal_px
        return np.array([[f, 0.0, self.width / 2.0], [0.0, f, self.height / 2.0], [0.0, 0.0, 1.0]])


#: Light and weather presets of the embedded OpenGL camera: sun azimuth and elevation
#: (degrees; azimuth clockwise from CARLA's +x, seen from above), sun and ambient colours
#: (linear RGB multipliers), sky colours at the zenith and the horizon (RGB 0..255), fog colour
#: and density (1/m: the share of a surface's colour left after d metres is exp(-density d)),
#: and whether street lamps, windows and head/tail lights glow.
WEATHER_PRESETS: dict[str, dict] = {
    "clear": {"sun_az": 35.0, "sun_el": 50.0, "sun": (0.78, 0.75, 0.68), "ambient": (0.42, 0.44, 0.48),
              "sky_top": (95, 145, 215), "sky_horizon": (190, 215, 240), "fog": (190, 210, 235),
              "fog_density": 0.0012, "lamps": False},
    "overcast": {"sun_az": 35.0, "sun_el": 60.0, "sun": (0.30, 0.30, 0.31), "ambient": (0.62, 0.63, 0.65),
                 "sky_top": (150, 155, 162), "sky_horizon": (196, 198, 202), "fog": (190, 192, 196),
                 "fog_density": 0.003, "lamps": False},
    "fog": {"sun_az": 35.0, "sun_el": 45.0, "sun": (0.18, 0.18, 0.18), "ambient": (0.66, 0.66, 0.68),
            "sky_top": (196, 198, 202), "sky_horizon": (205, 207, 210), "fog": (200, 202, 205),
            "fog_density": 0.025, "lamps": False},
    "dusk": {"sun_az": 250.0, "sun_el": 7.0, "sun": (0.85, 0.50, 0.30), "ambient": (0.30, 0.27, 0.32),
             "sky_top": (60, 70, 125), "sky_horizon": (235, 140, 90), "fog": (180, 130, 110),
             "fog_density": 0.002, "lamps": True},
    "night": {"sun_az": 120.0, "sun_el": 35.0, "sun": (0.06, 0.07, 0.10), "ambient": (0.10, 0.11, 0.15),
              "sky_top": (6, 8, 20), "sky_horizon": (20, 24, 40), "fog": (18, 20, 30),
              "fog_density": 0.004, "lamps": True},
}
