"""Frame selection for a recording: skip near-duplicate frames; say why a dataset is empty.

:class:`StationaryGate` tracks, per camera slot, how long its vehicle has been stationary
(speed below ``recorder.stationary_speed_mps``); once that exceeds
``recorder.skip_stationary_after_s`` the slot's frames are skipped until the vehicle moves
again (or the slot moves to another vehicle). The first ``skip_stationary_after_s`` seconds of
every stop are kept, so a red light is recorded, but not 300 copies of it.

:class:`LabelCounts` counts why labels were not exported, so an empty recording can say why
(:func:`why_no_labels`).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

import numpy as np

from carla_mr.world.base import Snapshot


class StationaryGate:
    """Per slot: is the camera's vehicle stationary for longer than the threshold?

    ``after_s`` None (or <= 0 with ``enabled`` False) disables skipping. Times are simulated
    seconds; speeds metres per second.
    """

    def __init__(self, after_s: Optional[float], speed_mps: float):
        self.after_s = after_s
        self.speed_mps = float(speed_mps)
        self._since: dict[str, tuple[int, float]] = {}  # slot -> (vehicle id, time it stopped)
        self.skipped: Counter = Counter()  # slot -> frames skipped

    def update(self, snap: Snapshot, vehicle_of: dict[str, int]) -> None:
        """Record, for each slot, since when its vehicle has been stationary (call every tick)."""
        if self.after_s is None:
            return
        index = {int(v): i for i, v in enumerate(snap.ids)}
        for slot, vid in vehicle_of.items():
            i = index.get(int(vid))
            moving = i is None or float(snap.speed[i]) >= self.speed_mps
            prev = self._since.get(slot)
            if moving:
                self._since.pop(slot, None)
            elif prev is None or prev[0] != int(vid):
                self._since[slot] = (int(vid), float(snap.time))

    def skip(self, slot: str, time_s: float) -> bool:
        """True when ``slot``'s vehicle has been stationary for more than ``after_s`` at ``time_s``."""
        if self.after_s is None or slot not in self._since:
            return False
        return float(time_s) - self._since[slot][1] > float(self.after_s) + 1e-9

    def count(self, slot: str) -> None:
        self.skipped[slot] += 1


class LabelCounts:
    """Why the labels a camera saw were (not) exported: counts per reason."""

    def __init__(self):
        self.seen = 0
        self.rejected: Counter = Counter()

    def add(self, lab: dict, box, cfg, classes) -> None:
        self.seen += 1
        x0, y0, x1, y1 = box
        if cfg.kinds is not None and lab["kind"] not in cfg.kinds:
            self.rejected["kind_not_in_recorder.kinds"] += 1
        elif lab["class"] not in classes:
            self.rejected["class_not_in_classes"] += 1
        elif min(x1 - x0, y1 - y0) < cfg.min_box_px:
            self.rejected["box_below_min_box_px"] += 1
        elif lab["visible"] < cfg.min_visible:
            self.rejected["below_min_visible"] += 1


def why_no_labels(signs, cfg, classes: list[str], counts: LabelCounts, frames: int) -> Optional[str]:
    """A sentence saying why a recording exported no labels (None when it exported some)."""
    if frames == 0:
        return "no frame was recorded (no vehicle carried a camera, or every frame was skipped)"
    if len(signs) == 0:
        return ("the map has no signs or traffic lights (no OpenDRIVE <signal>): inject some with "
                "'carla-mr maps inject' or scenario signs.random_count")
    if not classes:
        have = sorted(set(np.asarray(signs.kind).astype(str)))
        return f"the map's signs are of kinds {have}, none of recorder.kinds={cfg.kinds}"
    if counts.seen == 0:
        return (f"no sign of classes {classes} came into a camera's view in {frames} frame(s): record longer, "
                "use more cameras, or add signs (signs.random_count)")
    if not counts.rejected:
        return None
    reasons = ", ".join(f"{k}: {v}" for k, v in counts.rejected.most_common())
    return f"all {counts.seen} labels in view were filtered out ({reasons})"
