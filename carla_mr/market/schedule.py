"""The GPU-time schedule of a cleared round: which simulator runs, for which AV, when, how long.

One row per served window (a task of the winning AV with T_total > 0). Windows are laid
out back to back on the RSU's GPU in task order (``layout="serial"``: start_n = sum of the
earlier windows' durations) or all from t = 0 (``layout="parallel"``: each window is the
task's deadline window, which is what the model's T_total = d means literally). Times are
seconds from the moment the round's result is published; payments are integers in
micro-units (the whole window's payment T * per-time price, rounded down).

A generation worker consumes :class:`Schedule` as numpy arrays (``arrays()``) or JSON
(``to_dict()`` / ``from_dict()``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

LAYOUTS = ("serial", "parallel")


@dataclass
class Schedule:
    round_id: int
    layout: str
    sim_index: np.ndarray      # (W,) int64, k (0 = driving simulator)
    sim_id: list[str]          # (W,)
    av_index: np.ndarray       # (W,) int64, row of the AV in the round's av_ids
    av_id: list[str]           # (W,)
    task: np.ndarray           # (W,) int64, task (window) index n
    start_s: np.ndarray        # (W,) float64, seconds after publication
    duration_s: np.ndarray     # (W,) float64, T_total of the window, seconds
    payment_micro: np.ndarray  # (W,) int64, what the simulator pays for the window
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.task.shape[0])

    @property
    def total_s(self) -> float:
        """GPU seconds booked (sum of durations)."""
        return float(self.duration_s.sum())

    @property
    def makespan_s(self) -> float:
        return float((self.start_s + self.duration_s).max()) if len(self) else 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sim_index": self.sim_index, "av_index": self.av_index, "task": self.task,
                "start_s": self.start_s, "duration_s": self.duration_s, "payment_micro": self.payment_micro,
                "sim_id": np.asarray(self.sim_id, dtype=str), "av_id": np.asarray(self.av_id, dtype=str)}

    def to_dict(self) -> dict:
        return {"round_id": int(self.round_id), "layout": self.layout,
                "windows": [{"sim_index": int(self.sim_index[j]), "sim_id": self.sim_id[j],
                             "av_index": int(self.av_index[j]), "av_id": self.av_id[j], "task": int(self.task[j]),
                             "start_s": float(self.start_s[j]), "duration_s": float(self.duration_s[j]),
                             "payment_micro": int(self.payment_micro[j])} for j in range(len(self))],
                "total_s": self.total_s, "makespan_s": self.makespan_s}

    @classmethod
    def from_dict(cls, d: dict) -> "Schedule":
        w = d.get("windows", [])
        return cls(
            round_id=int(d["round_id"]), layout=str(d.get("layout", "serial")),
            sim_index=np.array([x["sim_index"] for x in w], dtype=np.int64),
            sim_id=[str(x["sim_id"]) for x in w],
            av_index=np.array([x["av_index"] for x in w], dtype=np.int64),
            av_id=[str(x["av_id"]) for x in w],
            task=np.array([x["task"] for x in w], dtype=np.int64),
            start_s=np.array([x["start_s"] for x in w], dtype=np.float64),
            duration_s=np.array([x["duration_s"] for x in w], dtype=np.float64),
            payment_micro=np.array([x["payment_micro"] for x in w], dtype=np.int64))

    def save_json(self, path) -> None:
        """Write ``to_dict()`` atomically (what MarketSession does per round)."""
        from carla_mr.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load_json(cls, path) -> "Schedule":
        """Read a schedule written by :meth:`save_json` or MarketSession (extra keys are ignored)."""
        import json
        from pathlib import Path

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    @classmethod
    def empty(cls, round_id: int, layout: str = "serial") -> "Schedule":
        z = np.zeros(0, dtype=np.int64)
        return cls(round_id, layout, z, [], z.copy(), [], z.copy(), np.zeros(0), np.zeros(0), z.copy())


def build_schedule(round_id: int, *, winner: int | None, av_ids: list[str], sim_ids: list[str],
                   window_sim: np.ndarray, durations: np.ndarray, price_per_s: np.ndarray,
                   layout: str = "serial") -> Schedule:
    """Lay out the winner's served windows.

    window_sim (N,) int: simulator k serving each task of the winning AV (-1: not served);
    durations (N,) float: T_total per task, seconds (0 = infeasible, not served);
    price_per_s (N,) float: the per-unit-time price the window's simulator pays, units/s.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if winner is None or winner < 0:
        return Schedule.empty(round_id, layout)
    window_sim = np.asarray(window_sim, dtype=np.int64).reshape(-1)
    durations = np.asarray(durations, dtype=np.float64).reshape(-1)
    price_per_s = np.asarray(price_per_s, dtype=np.float64).reshape(-1)
    served = np.flatnonzero((window_sim >= 0) & (durations > 0))
    dur = durations[served]
    start = np.concatenate([[0.0], np.cumsum(dur)[:-1]]) if layout == "serial" else np.zeros_like(dur)
    pay = np.floor(np.maximum(0.0, dur * price_per_s[served]) * 1_000_000 + 1e-6).astype(np.int64)
    ks = window_sim[served]
    return Schedule(round_id=round_id, layout=layout, sim_index=ks, sim_id=[sim_ids[int(k)] for k in ks],
                    av_index=np.full(served.shape, winner, dtype=np.int64), av_id=[av_ids[winner]] * len(served),
                    task=served.astype(np.int64), start_s=start.astype(np.float64), duration_s=dur,
                    payment_micro=pay)
