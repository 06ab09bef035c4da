"""Which vehicle carries each named camera: the lowest AV ids, replaced when one leaves."""

from __future__ import annotations

from carla_mr.world.base import Snapshot


class CameraSlots:
    """Keeps cameras ``names`` attached to vehicles of ``world`` (deterministic for a world).

    Each slot takes the lowest AV id not used by another slot (any vehicle when there are
    no AVs); when its vehicle leaves the simulation the slot moves to the next free one.
    ``vehicle_of[name]`` is absent while no vehicle is free.
    """

    def __init__(self, world, names: list[str], spec):
        self.world = world
        self.names = list(names)
        self.spec = spec
        self.vehicle_of: dict[str, int] = {}

    def update(self, snap: Snapshot) -> None:
        present = set(int(v) for v in snap.ids)
        avs = sorted(int(v) for v in snap.ids[snap.av_mask]) or sorted(present)
        used = {v for v in self.vehicle_of.values() if v in present}
        for name in self.names:
            vid = self.vehicle_of.get(name)
            if vid is not None and vid in present:
                continue
            free = [v for v in avs if v not in used]
            if not free:
                self.vehicle_of.pop(name, None)
                continue
            self.vehicle_of[name] = free[0]
            used.add(free[0])
            self.world.attach_camera(name, self.spec, free[0])
