"""The CARLA backend's camera rig: RGB (and depth) sensors on vehicles, images matched to ticks.

Images arrive on the server's streaming thread. Each sensor keeps a small buffer keyed by
frame number; after each tick :meth:`CameraRig.match` waits (up to ``sensor_timeout_s``
seconds in all) for every sensor's image of that tick's frame: images of older frames are
dropped (``dropped``), a frame that does not arrive in time counts as ``missed``, and an
image of a later frame stays in its buffer, in place, for the tick it belongs to.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from carla_mr.config.camera import CameraSpec
from carla_mr.errors import InputError, RunError
from carla_mr.world.base import CameraFrame, FrameMissed
from carla_mr.world.carla_actors import ActorSpawner
from carla_mr.world.carla_api import DEPTH_BLUEPRINTS, RGB_BLUEPRINTS, bgra_array, bgra_to_rgb, pick_blueprint

#: At most this many images wait in a sensor's buffer (older ones are dropped first).
BUFFER_FRAMES = 64


@dataclass
class SensorStream:
    """One sensor actor and its images by frame number (filled by the streaming thread)."""

    actor: Any
    width: int
    height: int
    latest: Any = None  # the image matched to the latest tick, or None when missed
    matched: int = 0
    missed: int = 0
    dropped: int = 0
    _frames: dict = field(default_factory=dict)
    _cv: threading.Condition = field(default_factory=threading.Condition)

    def put(self, image: Any) -> None:
        """The sensor's callback (streaming thread)."""
        with self._cv:
            self._frames[int(image.frame)] = image
            while len(self._frames) > BUFFER_FRAMES:
                del self._frames[min(self._frames)]
                self.dropped += 1
            self._cv.notify_all()

    def take(self, frame: int, deadline: float) -> None:
        """Set :attr:`latest` to the image of ``frame`` (waiting until ``deadline``, a
        ``time.monotonic()`` value) or None; drop older images, keep later ones."""
        with self._cv:
            self._cv.wait_for(lambda: frame in self._frames, timeout=max(0.0, deadline - time.monotonic()))
            self.latest = self._frames.pop(frame, None)
            old = [f for f in self._frames if f < frame]
            for f in old:
                del self._frames[f]
            self.dropped += len(old)
            if self.latest is None:
                self.missed += 1
            else:
                self.matched += 1


@dataclass
class Camera:
    name: str
    spec: CameraSpec
    vehicle_id: int
    rgb: SensorStream
    depth: Optional[SensorStream] = None

    def streams(self) -> list[SensorStream]:
        return [s for s in (self.rgb, self.depth) if s is not None]


class CameraRig:
    """Cameras attached to this session's vehicles (``depth``: a depth camera beside each RGB one)."""

    def __init__(self, spawner: ActorSpawner, *, depth: bool, sensor_timeout_s: float):
        self.spawner = spawner
        self.depth = bool(depth)
        self.sensor_timeout_s = float(sensor_timeout_s)
        self.cameras: dict[str, Camera] = {}
        self.final_stats: dict[str, dict[str, int]] = {}

    def attach(self, name: str, spec: Any, vehicle_id: int) -> None:
        if name in self.cameras:
            raise InputError(f"a camera named '{name}' is already attached", field="name")
        spec = spec if isinstance(spec, CameraSpec) else CameraSpec.model_validate(spec)
        parent = self.spawner.world.get_actor(int(vehicle_id))
        if parent is None:
            raise InputError(f"no vehicle with id {vehicle_id} in the world", field="vehicle_id")
        cam = Camera(name, spec, int(vehicle_id), self._sensor(RGB_BLUEPRINTS, spec, parent, "camera"))
        self.cameras[name] = cam
        if self.depth:
            cam.depth = self._sensor(DEPTH_BLUEPRINTS, spec, parent, "depth")

    def _sensor(self, table: tuple[str, ...], spec: CameraSpec, parent: Any, kind: str) -> SensorStream:
        api = self.spawner.api
        bp = pick_blueprint(self.spawner.blueprints(), table, np.random.default_rng(0), wheels=None)
        if bp is None:
            raise RunError(f"the server has no camera blueprint from {table}")
        bp.set_attribute("image_size_x", str(int(spec.width)))
        bp.set_attribute("image_size_y", str(int(spec.height)))
        bp.set_attribute("fov", repr(float(spec.fov_deg)))
        tf = api.Transform(api.Location(spec.x, spec.y, spec.z), api.Rotation(spec.pitch, spec.yaw, spec.roll))
        actor = self.spawner.spawn_one(bp, tf, kind, attach_to=parent)
        stream = SensorStream(actor=actor, width=int(spec.width), height=int(spec.height))
        actor.listen(stream.put)
        return stream

    def match(self, frame: int) -> None:
        """Give every sensor its image of server frame ``frame`` (see the module docstring)."""
        deadline = time.monotonic() + self.sensor_timeout_s
        for cam in self.cameras.values():
            for s in cam.streams():
                s.take(frame, deadline)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per camera: images matched to ticks, frames missed (timeout), stale images dropped."""
        if not self.cameras:
            return dict(self.final_stats)
        out = {}
        for name, cam in self.cameras.items():
            out[name] = {"matched": cam.rgb.matched, "missed": cam.rgb.missed, "dropped": cam.rgb.dropped}
            if cam.depth is not None:
                out[name].update(depth_matched=cam.depth.matched, depth_missed=cam.depth.missed)
        return out

    def frame(self, name: str, *, frame: int, time_s: float, ego_of: Callable[[int], Any],
              labels_of: Callable[..., list]) -> CameraFrame:
        """The named camera's RGB image of the latest tick as a CameraFrame (``frame`` and
        ``time_s`` of the tick; ``ego_of(vehicle id)`` the vehicle's ActorSnapshot or None;
        ``labels_of(rgb, cam_to_world, K, depth)`` the sign labels). FrameMissed when missed."""
        from carla_mr.world.carla_signs import decode_depth_bgra

        cam = self.cameras.get(name)
        if cam is None:
            raise KeyError(f"no camera named '{name}'; attached: {sorted(self.cameras)}")
        img = cam.rgb.latest
        if img is None:
            raise FrameMissed(f"camera '{name}' has no image for frame {frame} ({cam.rgb.missed} missed so far)")
        rgb = bgra_to_rgb(img.raw_data, int(img.width), int(img.height))
        cam_to_world = np.array(img.transform.get_matrix(), dtype=np.float64)
        K = cam.spec.intrinsics()
        depth = None
        if cam.depth is not None and cam.depth.latest is not None:
            d = cam.depth.latest
            depth = decode_depth_bgra(bgra_array(d.raw_data, int(d.width), int(d.height)))
        ego = (float("nan"),) * 4
        ego_snapshot = ego_of(cam.vehicle_id)
        if ego_snapshot is not None:
            t = ego_snapshot.get_transform()
            ego = (float(t.location.x), float(t.location.y), float(t.location.z), float(t.rotation.yaw))
        return CameraFrame(frame=frame, time=time_s, image=rgb, intrinsics=K, cam_to_world=cam_to_world, ego=ego,
                           labels=labels_of(rgb, cam_to_world, K, depth))

    def detach_all(self) -> list[Any]:
        """Forget every camera (stats kept for the summary); returns the sensor actors to stop."""
        if self.cameras:
            self.final_stats = self.stats()
        actors = [s.actor for cam in self.cameras.values() for s in cam.streams() if s.actor is not None]
        self.cameras = {}
        return actors
