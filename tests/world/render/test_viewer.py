"""The viewer renders headless: PNG frames and an MP4, from a run directory and from a scenario."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.stages import MarketRound
from carla_mr.viewer import AV, PRED, WINNER, Rounds, round_line


def make_run_dir(tmp_path, town01):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    carla = pytest.importorskip("carla")
    from carla_mr.testing.fake_world import KinematicWorld

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"name: t\nmap: {town01}\nseed: 0\nvehicles: {{avs: 2, background: 6}}\n")
    w = KinematicWorld(carla.Map("Town01", town01.read_text()), n_avs=2, n_background=6, seed=3)
    rows = {k: [] for k in ("frame", "time", "id", "role", "x", "y", "z", "yaw", "speed", "rsu")}
    preds = {k: [] for k in ("frame", "time", "id", "rsu", "step", "target_frame", "target_time", "x", "y")}
    snap = w.reset()
    for t in range(6):
        if t:
            snap = w.tick()
        for k in rows:
            if k in ("frame", "time"):
                rows[k] += [getattr(snap, k)] * len(snap)
            else:
                rows[k] += getattr(snap, "ids" if k == "id" else k).tolist()
        for j in np.nonzero(snap.av_mask)[0]:
            for s in range(1, 6):  # a 20 m straight prediction ahead of each AV
                yaw = np.deg2rad(snap.yaw[j])
                preds["frame"].append(snap.frame)
                preds["time"].append(snap.time)
                preds["id"].append(int(snap.ids[j]))
                preds["rsu"].append(0)
                preds["step"].append(s)
                preds["target_frame"].append(snap.frame + 2 * s)
                preds["target_time"].append(snap.time + 0.1 * s)
                preds["x"].append(snap.x[j] + 4 * s * np.cos(yaw))
                preds["y"].append(snap.y[j] + 4 * s * np.sin(yaw))
    pq.write_table(pa.table(rows), run / "trajectories.parquet")
    pq.write_table(pa.table(preds), run / "predictions.parquet")
    (run / "market").mkdir()
    # one market round at frame 2 whose winner is the first AV (a vehicle id, not a bidder slot)
    av = int(np.sort(snap.ids[snap.av_mask])[0])
    rnd = MarketRound.from_windows(round_id=3, frame=2, time=0.1, participants=2, winner_vehicle_id=av,
                                   payment_micro=1200, mechanism="mtepvisa", windows=[
                                       {"sim_id": "sim-001", "sim_index": 1, "vehicle_id": av, "task": 0,
                                        "start_s": 0.0, "duration_s": 0.2, "payment_micro": 1200},
                                       {"sim_id": "sim-000", "sim_index": 0, "vehicle_id": av, "task": 1,
                                        "start_s": 0.2, "duration_s": 0.2, "payment_micro": 0}])
    (run / "market" / "rounds.jsonl").write_text(json.dumps({**rnd.to_record(), "by_mechanism": {}}) + "\n")
    return run


def colour_present(img_rgb, colour, tol=8):
    return (np.abs(img_rgb.astype(int) - np.array(colour)).max(axis=2) <= tol).sum()


def test_view_run_dir_headless_png_and_mp4(tmp_path, town01):
    run = make_run_dir(tmp_path, town01)
    rounds = Rounds.read(run)
    assert rounds.at(1) is None and rounds.at(2).round_id == 3 and rounds.at(5).round_id == 3
    av = rounds.at(2).winner_vehicle_id
    assert round_line(rounds.at(4)) == f"round 3: winner vehicle {av} (pays 1200 micro), GPU windows: sim-001"
    out = tmp_path / "view"
    res = CliRunner().invoke(main, ["view", str(run), "--headless", "--frames", "5", "--png-every", "2",
                                    "--mp4", "v.mp4", "--zoom", "4", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout)
    assert r["frames"] == 5 and r["pngs"] == 3
    pngs = sorted((out / "frames").glob("*.png"))
    assert [p.stem for p in pngs] == ["000000", "000002", "000004"]
    img = cv2.imread(str(pngs[-1]))[:, :, ::-1]
    assert img.shape == (720, 960, 3)
    assert colour_present(img, AV) > 20  # the followed AV at the centre
    assert colour_present(img, PRED, tol=3) > 20  # its predicted trajectory
    # the round's winning vehicle (by vehicle id, from rounds.jsonl) is ringed in gold from frame 2 on
    assert colour_present(img, WINNER, tol=3) > 20
    first = cv2.imread(str(pngs[0]))[:, :, ::-1]
    assert colour_present(first, WINNER, tol=3) == 0
    assert np.array_equal(img[360, 480], [255, 255, 255]) or colour_present(img[340:380, 460:500], AV) > 0
    cap = cv2.VideoCapture(str(out / "v.mp4"))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    assert n == 5


def test_view_scenario_live_headless(tmp_path, town01):
    sc = tmp_path / "s.yaml"
    sc.write_text(f"name: live\nmap: {town01}\nvehicles: {{avs: 1, background: 5}}\n")
    res = CliRunner().invoke(main, ["view", str(sc), "--headless", "--frames", "3", "--out", str(tmp_path / "o"),
                                    "--size", "480x360", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["frames"] == 3
    assert cv2.imread(str(tmp_path / "o" / "frames" / "000002.png")).shape == (360, 480, 3)


def test_view_rejects_non_run_dir(tmp_path):
    res = CliRunner().invoke(main, ["view", str(tmp_path), "--headless", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "run directory" in res.stderr
    res = CliRunner().invoke(main, ["view", str(tmp_path), "--size", "big"])
    assert res.exit_code == 2


def test_window_mode_keys(town01, monkeypatch):
    """The windowed loop (SDL dummy display): zoom, follow, pause, step and quit keys."""
    carla = pytest.importorskip("carla")
    pg = pytest.importorskip("pygame")
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    from carla_mr.testing.fake_world import KinematicWorld
    from carla_mr.viewer import Source, run_viewer
    from carla_mr.world.scene import build_road_scene

    cmap = carla.Map("Town01", town01.read_text())
    w = KinematicWorld(cmap, n_avs=1, n_background=3, seed=1)

    def snaps():
        yield w.reset()
        for _ in range(50):
            yield w.tick()

    src = Source(build_road_scene(cmap), cmap, w.signs, None, snaps())
    pg.display.init()
    keys = [pg.K_PLUS, pg.K_PLUS, pg.K_MINUS, pg.K_f, pg.K_SPACE, pg.K_n, pg.K_q]
    for k in keys:
        pg.event.post(pg.event.Event(pg.KEYDOWN, key=k))
    res = run_viewer(src, out=None, headless=False, size=(320, 240), camera=False, fps=1000)
    assert res["zoom"] == pytest.approx(2.0 * 1.25) and res["follow"] is False and res["paused"] is True
    assert res["frames"] == 1  # quit in the first event batch: one frame drawn
