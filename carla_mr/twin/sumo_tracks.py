"""Training trajectories straight from SUMO: random-route traffic on a ``.net.xml``.

The twin learns from vehicle tracks. The project's runner (``carla-mr run``) writes them for
a scenario; this module is the light path when only a SUMO network is at hand (tests, the
quality check on two maps): it keeps ``vehicles`` cars driving random shortest-path routes,
replaces each one that arrives, stops recording any that SUMO teleports (a teleport is a jump no
predictor should learn), and writes a ``trajectories.parquet`` with the runner's schema
(frame, time, id, role, x, y, z, yaw, speed, rsu; CARLA frame, metres, degrees).

libsumo holds one simulation per process: call :func:`simulate` in a fresh process
(``python -m carla_mr.twin.sumo_tracks NET OUT ...``) when another one may be open.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from carla_mr.errors import InputError

#: SUMO variable codes (libsumo constants) for one subscription per vehicle.
_VAR_POSITION, _VAR_ANGLE, _VAR_SPEED = 0x42, 0x43, 0x40


def simulate(net_path: str | os.PathLike, out_path: str | os.PathLike, *, vehicles: int = 100,
             duration_s: float = 600.0, tick_s: float = 0.05, record_every: int = 1, av_share: float = 0.2,
             seed: int = 0, warmup_s: float = 20.0, speed_factor: tuple[float, float] = (0.7, 1.3),
             lane_change_s: float = 3.0) -> dict:
    """Run random-route SUMO traffic and write its tracks as parquet; returns a summary dict.

    ``vehicles`` cars are kept alive (arrivals are replaced); a share ``av_share`` of them get
    role 1 (AV). Every ``record_every``-th tick after ``warmup_s`` seconds is written. Each car
    drives at its own share of the speed limit, drawn uniformly from ``speed_factor`` (varied
    speeds; SUMO's lane-change model changes lanes on multi-lane roads, each change a smooth
    lateral move over ``lane_change_s`` seconds, not a jump).
    ``net_path`` may be a ``.net.xml`` or an OpenDRIVE ``.xodr`` (converted by netconvert, cached).
    """
    import libsumo as ts
    import sumolib

    net_path = Path(net_path)
    if not net_path.is_file():
        raise InputError("SUMO network not found", field="net", source=str(net_path))
    if net_path.suffix.lower() == ".xodr":
        from carla_mr.world.sumo_net import build_net

        net_path = Path(build_net(net_path).path)
    rng = np.random.default_rng(seed)
    net = sumolib.net.readNet(str(net_path))
    edges = [e.getID() for e in net.getEdges() if e.allows("passenger") and e.getFunction() != "internal"]
    if len(edges) < 2:
        raise InputError("the network has fewer than two drivable edges", field="net", source=str(net_path))
    off = net.getLocationOffset()
    ts.start(["sumo", "-n", str(net_path), "--step-length", str(tick_s), "--seed", str(int(seed) % (2**31)),
              "--no-step-log", "true", "--no-warnings", "true", "--time-to-teleport", "60",
              "--collision.action", "remove", "--ignore-route-errors", "true",
              "--lanechange.duration", str(lane_change_s)])
    try:
        cols, dropped_teleports = _drive(ts, rng, edges, vehicles=vehicles, ticks=int(round(duration_s / tick_s)),
                                         warm=int(round(warmup_s / tick_s)), tick_s=tick_s,
                                         record_every=record_every, av_share=av_share, speed_factor=speed_factor)
    finally:
        ts.close()
    out_path = Path(out_path)
    n = _write_tracks(cols, off, out_path)
    return {"rows": n, "vehicles": int(len(np.unique(cols["id"]))) if n else 0,
            "dropped_teleports": dropped_teleports, "out": str(out_path)}


def _top_up(ts, rng, edges: list[str], vehicles: int, roles: dict[str, int], next_id: int,
            av_share: float, speed_factor: tuple[float, float]) -> int:
    """Add cars on random routes until ``vehicles`` are inserted or waiting (at most 4 tries
    per car); returns the next free id number."""
    live = ts.simulation.getMinExpectedNumber()  # inserted + waiting
    tries = 0
    while live < vehicles and tries < 4 * vehicles:
        tries += 1
        a, b = rng.choice(len(edges), 2, replace=False)
        route = ts.simulation.findRoute(edges[a], edges[b])
        if not route.edges:
            continue
        vid = f"v{next_id}"
        rid = f"r{next_id}"
        next_id += 1
        ts.route.add(rid, list(route.edges))
        ts.vehicle.add(vid, rid, departLane="best", departSpeed="max")
        ts.vehicle.setSpeedFactor(vid, float(rng.uniform(*speed_factor)))
        roles[vid] = 1 if rng.random() < av_share else 0
        live += 1
    return next_id


def _drive(ts, rng, edges: list[str], *, vehicles: int, ticks: int, warm: int, tick_s: float, record_every: int,
           av_share: float, speed_factor: tuple[float, float]) -> tuple[dict[str, list], int]:
    """Step the started simulation ``warm + ticks`` times, keeping ``vehicles`` alive; returns
    the recorded columns (SUMO's frame: x, y metres, yaw = SUMO angle in degrees) and how many
    tracks ended at a teleport."""
    next_id = 0
    roles: dict[str, int] = {}
    cols: dict[str, list] = {k: [] for k in ("frame", "time", "id", "role", "x", "y", "yaw", "speed")}
    dropped_teleports = 0
    for frame in range(ticks + warm):
        next_id = _top_up(ts, rng, edges, vehicles, roles, next_id, av_share, speed_factor)
        ts.simulationStep()
        for vid in ts.simulation.getDepartedIDList():
            ts.vehicle.subscribe(vid, [_VAR_POSITION, _VAR_ANGLE, _VAR_SPEED])
        for vid in ts.simulation.getStartingTeleportIDList():
            dropped_teleports += 1
            roles[vid] = -1  # its track ends here: never record it again
        if frame < warm or (frame - warm) % record_every:
            continue
        t = (frame + 1) * tick_s
        for vid, r in ts.vehicle.getAllSubscriptionResults().items():
            role = roles.get(vid, 0)
            if role < 0 or _VAR_POSITION not in r:
                continue
            x, y = r[_VAR_POSITION]
            cols["frame"].append(frame + 1)
            cols["time"].append(t)
            cols["id"].append(int(vid[1:]))
            cols["role"].append(role)
            cols["x"].append(x)
            cols["y"].append(y)
            cols["yaw"].append(r[_VAR_ANGLE])
            cols["speed"].append(r[_VAR_SPEED])
    return cols, dropped_teleports


def _write_tracks(cols: dict[str, list], net_offset, out_path: Path) -> int:
    """The recorded columns in CARLA's frame as the trajectory parquet schema; returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from carla_mr.io import atomic_write
    from carla_mr.world.coords import sumo_to_carla

    x, y, yaw = sumo_to_carla(np.asarray(cols["x"]), np.asarray(cols["y"]), np.asarray(cols["yaw"]), net_offset)
    n = len(cols["id"])
    table = pa.table({
        "frame": pa.array(np.asarray(cols["frame"], np.int64)),
        "time": pa.array(np.asarray(cols["time"], np.float64)),
        "id": pa.array(np.asarray(cols["id"], np.int64)),
        "role": pa.array(np.asarray(cols["role"], np.uint8)),
        "x": pa.array(x), "y": pa.array(y), "z": pa.array(np.zeros(n)),
        "yaw": pa.array(yaw), "speed": pa.array(np.asarray(cols["speed"], np.float64)),
        "rsu": pa.array(np.full(n, -1, np.int32)),
    })
    atomic_write(out_path, lambda fh: pq.write_table(table, fh))
    return n


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin wrapper
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("net")
    p.add_argument("out")
    p.add_argument("--vehicles", type=int, default=100)
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--tick", type=float, default=0.05)
    p.add_argument("--record-every", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import json

    print(json.dumps(simulate(a.net, a.out, vehicles=a.vehicles, duration_s=a.duration, tick_s=a.tick,
                              record_every=a.record_every, seed=a.seed)))


if __name__ == "__main__":  # pragma: no cover
    main()
