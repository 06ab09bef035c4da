"""Synthetic tracks for the twin's tests: vehicles on arcs of changing curvature and speed, so
constant velocity is wrong in a learnable way."""

from __future__ import annotations

import numpy as np


def synthetic_rows(n_vehicles: int = 30, seconds: float = 60.0, hz: float = 10.0, seed: int = 0,
                   t0: float = 0.0) -> dict[str, np.ndarray]:
    """Rows (id, t, x, y) of vehicles driving with a turn rate that flips between constant values."""
    rng = np.random.default_rng(seed)
    ids, ts, xs, ys = [], [], [], []
    n = int(seconds * hz)
    dt = 1.0 / hz
    for v in range(n_vehicles):
        speed = rng.uniform(5.0, 12.0)
        # piecewise-constant turn rate (rad/s), each phase several seconds long
        phase = rng.integers(int(4 * hz), int(10 * hz), size=n // int(4 * hz) + 2)
        rates = rng.choice([-0.25, 0.0, 0.25], size=phase.size)
        omega = np.repeat(rates, phase)[:n]
        heading = rng.uniform(-np.pi, np.pi) + np.cumsum(omega) * dt
        x = rng.uniform(-500, 500) + np.cumsum(speed * np.cos(heading)) * dt
        y = rng.uniform(-500, 500) + np.cumsum(speed * np.sin(heading)) * dt
        ids.append(np.full(n, 100 + v))
        ts.append(t0 + np.arange(n) * dt)
        xs.append(x)
        ys.append(y)
    return {"id": np.concatenate(ids), "t": np.concatenate(ts), "x": np.concatenate(xs), "y": np.concatenate(ys)}


def write_csv(path, rows: dict, names: dict | None = None) -> None:
    names = names or {}
    cols = list(rows)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(names.get(c, c) for c in cols) + "\n")
        for i in range(len(rows[cols[0]])):
            fh.write(",".join(repr(float(rows[c][i])) if c != "id" else str(int(rows[c][i])) for c in cols) + "\n")
