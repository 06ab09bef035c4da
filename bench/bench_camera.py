"""Embedded camera and recorder throughput vs the I/O floor (same run, CPU time of all threads).

Scene: Town01 (maps/) with 10 signs placed along the ego AV's road 15-65 m ahead
(both sides, every kind; the map's own landmarks are left out so exactly those 10 are in
view) and 50 vehicles (the ego, 12 spread ahead on its road, the rest over the map), all
driving their lanes (KinematicWorld, no SUMO, so only the camera is measured). 640x480,
90 deg FOV, OpenCV on one thread.

Rows (frames per second, best of two repeats), each twice: ``_cpu`` from this process's CPU
time (``time.process_time``: every thread of the process, llvmpipe's included; robust to other load on a shared machine) and
``_wall`` from the wall clock (includes waiting for the CPU and the disk):

- ``camera_fps``: ``world.read_camera`` (render + exact labels) per tick;
- ``recorder_fps``: the recorder end to end (tick + render + labels + PNG encode + atomic
  writes of image, depth, YOLO and meta JSON with masks + COCO at the end);
- each for the OpenGL camera (``gl_``, with its depth PNG and RLE masks) and the CPU
  rasteriser (``cpu_``, the fallback) in the same run;
- all against ``io_floor_fps``: writing the same number of blank 640x480 frames with the
  same encoder and the same atomic writes (the I/O floor). Target: recorder >= 20 frames/s.

Run: ``python bench/bench_camera.py [--quick]``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOWN01 = REPO / "maps" / "Town01.xodr"
KINDS = ("stop", "yield", "speed_limit", "no_entry", "priority_road", "parking", "warning", "mandatory_arrow",
         "speed_limit", "stop")


def _scene():
    import carla
    import numpy as np

    from carla_mr.testing.fake_world import KinematicWorld
    from carla_mr.world.base import SignTable

    cmap = carla.Map("Town01", TOWN01.read_text())
    pool = cmap.generate_waypoints(4.0)
    # The ego: a waypoint with at least 150 m of lane ahead and no junction in the first 90 m.
    ego = None
    for wp in pool:
        ahead, ok = wp, True
        for _ in range(18):
            nxt = ahead.next(5.0)
            if len(nxt) != 1 or nxt[0].is_junction:
                ok = False
                break
            ahead = nxt[0]
        if ok:
            ego = wp
            break
    if ego is None:
        raise RuntimeError("no straight road in Town01")
    # 10 signs, 10..60 m ahead, alternating sides, facing the ego.
    rows = []
    for k in range(10):
        d = 15.0 + 5.5 * k
        wp = ego.next(d)[0]
        tf = wp.transform
        r = tf.get_right_vector()
        side = 1.0 if k % 2 == 0 else -1.0
        off = side * (wp.lane_width / 2 + 1.0 + (wp.lane_width if side < 0 else 0))
        rows.append((f"b{k}", KINDS[k], 30.0 + 10 * k if KINDS[k] == "speed_limit" else np.nan,
                     tf.location.x + r.x * off, tf.location.y + r.y * off, 2.0, tf.rotation.yaw + 180.0))
    a = list(zip(*rows))
    o = lambda v: np.array(v, dtype=object)  # noqa: E731
    f = lambda v: np.array(v, dtype=np.float64)  # noqa: E731
    signs = SignTable(o(a[0]), o(a[1]), f(a[2]), o(["x"] * 10), f(a[3]), f(a[4]), f(a[5]), f(a[6]),
                      f([np.nan] * 10), f([np.nan] * 10), np.zeros(10, np.int64))
    ahead = [ego.next(12.0 + 7.0 * i)[0] for i in range(12)]
    rest = pool[:: max(1, len(pool) // 37)][:37]
    start = [ego] + ahead + rest
    return KinematicWorld(cmap, signs, n_avs=1, n_background=len(start) - 1, seed=0, start=start, speed=1.0)


def _best(fn, repeats=2):
    """(cpu_s, wall_s) of the repeat with the least CPU time."""
    return min((fn() for _ in range(repeats)), key=lambda r: r[0])


def run(quick: bool = False) -> list[dict]:
    import cv2
    import numpy as np

    from carla_mr.config import scenario_from_dict
    from carla_mr.config.dataset import RecorderConfig
    from carla_mr.dataset.recorder import Recorder
    from carla_mr.io import atomic_write
    from carla_mr.config.camera import CameraSpec

    cv2.setNumThreads(1)
    if not TOWN01.is_file():
        raise RuntimeError(f"{TOWN01} is missing (CARLA's Town01; see tests/conftest.py)")
    n = 40 if quick else 200
    spec = CameraSpec(width=640, height=480, fov_deg=90.0)
    labels_seen = []

    def camera_time():
        w = _scene()
        snap = w.reset()
        w.attach_camera("c", spec, 0)
        w.read_camera("c")  # warm caches (textures, sky)
        t = c = 0.0
        for _ in range(n):
            snap = w.tick()
            t0, c0 = time.perf_counter(), time.process_time()
            fr = w.read_camera("c")
            t += time.perf_counter() - t0
            c += time.process_time() - c0
            labels_seen.append(len(fr.labels))
        assert len(snap) == 50
        return c, t

    tmp = Path(tempfile.mkdtemp(prefix="bench_camera_"))
    cfg = RecorderConfig(enabled=True, camera=spec, max_frames=n + 1)
    sc = scenario_from_dict({"map": str(TOWN01), "recorder": cfg.model_dump()})

    def recorder_time():
        out = tmp / f"rec{time.perf_counter_ns()}"
        w = _scene()
        snap = w.reset()
        rec = Recorder(cfg, out, seed=0, scenario=sc)
        rec.start(w)
        rec.on_snapshot(snap)  # builds the road scene once (per map); not timed
        t0, c0 = time.perf_counter(), time.process_time()
        while not rec.done:
            rec.on_snapshot(w.tick())
        rec.close()
        c, t = time.process_time() - c0, time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return c, t

    def floor_time():
        out = tmp / f"floor{time.perf_counter_ns()}"
        blank = np.zeros((480, 640, 3), np.uint8)
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            ok, buf = cv2.imencode(".png", blank, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            data = buf.tobytes()
            atomic_write(out / "images" / f"{i:06d}.png", lambda fh: fh.write(data), fsync=False)
            atomic_write(out / "labels" / f"{i:06d}.txt", lambda fh: fh.write(""), binary=False, fsync=False)
            meta = json.dumps({"frame": i, "labels": []})
            atomic_write(out / "meta" / f"{i:06d}.json", lambda fh: fh.write(meta), binary=False, fsync=False)
        c, t = time.process_time() - c0, time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        return c, t

    import os

    from carla_mr.world.gl_context import RENDERER_ENV, gl_available

    renderers = ("gl", "cpu") if gl_available()[0] else ("cpu",)
    old = os.environ.get(RENDERER_ENV)
    times = {}
    try:
        for r in renderers:
            os.environ[RENDERER_ENV] = r
            times[r] = (_best(camera_time), _best(recorder_time))
        floor_c, floor_w = _best(floor_time)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is None:
            os.environ.pop(RENDERER_ENV, None)
        else:
            os.environ[RENDERER_ENV] = old
    mean_labels = float(np.mean(labels_seen)) if labels_seen else 0.0
    rows = []
    for r, ((cam_c, cam_w), (rec_c, rec_w)) in times.items():
        for suffix, cam, rec, floor in (("cpu", cam_c, rec_c, floor_c), ("wall", cam_w, rec_w, floor_w)):
            cam_fps, rec_fps, floor_fps = n / cam, n / rec, n / floor
            rows += [
                {"name": f"{r}_camera_fps_640x480_10signs_50veh_{suffix}", "value": cam_fps, "unit": "frames/s",
                 "baseline": floor_fps, "ratio": cam_fps / floor_fps, "target": ">= 20 frames/s"},
                {"name": f"{r}_recorder_fps_end_to_end_{suffix}", "value": rec_fps, "unit": "frames/s",
                 "baseline": floor_fps, "ratio": rec_fps / floor_fps, "target": ">= 20 frames/s (real time at 20 Hz)"},
            ]
    rows.append({"name": "signs_labelled_per_frame", "value": mean_labels, "unit": "labels", "baseline": 10.0,
                 "ratio": mean_labels / 10.0, "target": "~1 (10 signs in view)"})
    return rows


if __name__ == "__main__":
    from carla_mr.bench_cli import main_for

    main_for(run)
