"""TrajectoryStage: every vehicle's state at every tick, streamed to ``trajectories.parquet``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from carla_mr.io import ParquetSink
from carla_mr.stages import BaseStage, RunContext
from carla_mr.world.base import Snapshot

#: trajectories.parquet's columns: frame, time (s), id, role (1 = AV), x, y, z (m, CARLA frame),
#: yaw (deg, CARLA convention), speed (m/s), rsu (serving RSU index, -1 = none).
TRAJECTORY_COLUMNS = (("frame", "int64"), ("time", "float64"), ("id", "int64"), ("role", "uint8"),
                      ("x", "float64"), ("y", "float64"), ("z", "float64"), ("yaw", "float64"),
                      ("speed", "float64"), ("rsu", "int32"))


class TrajectoryStage(BaseStage):
    """Streams every vehicle's state at every tick to ``run_dir/trajectories.parquet``.

    Columns: :data:`TRAJECTORY_COLUMNS`. Rows are buffered and written as row groups of about
    ``rows_per_group`` rows through :class:`~carla_mr.io.ParquetSink`: the file appears, whole
    and fsynced, when the stage closes (the runner closes it on every exit path, so an
    interrupted run keeps the rows of the ticks it ran).
    """

    name = "trajectories"

    def __init__(self, rows_per_group: int = 200_000, avs_only: bool = False):
        self.rows_per_group = int(rows_per_group)
        self.avs_only = avs_only
        self.path: Optional[Path] = None
        self._sink: Optional[ParquetSink] = None

    def start(self, ctx: RunContext) -> None:
        self.path = Path(ctx.run_dir) / "trajectories.parquet"
        self._sink = ParquetSink(self.path, TRAJECTORY_COLUMNS, rows_per_group=self.rows_per_group)

    def on_tick(self, snapshot: Snapshot, ctx: RunContext) -> None:
        s = snapshot.select(snapshot.av_mask) if self.avs_only else snapshot
        n = len(s)
        if n == 0:
            return
        self._sink.add({"frame": np.full(n, s.frame, np.int64), "time": np.full(n, s.time, np.float64),
                        "id": s.ids, "role": s.role, "x": s.x, "y": s.y, "z": s.z, "yaw": s.yaw,
                        "speed": s.speed, "rsu": s.rsu})

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()

    def summary(self) -> dict[str, Any]:
        sink = self._sink
        return {"path": str(self.path) if self.path else None, "rows": sink.rows if sink else 0,
                "row_groups": sink.row_groups if sink else 0}
