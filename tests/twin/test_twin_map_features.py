"""Map features of the twin (lane geometry ahead from an offline carla.Map) and the residual model
with map inputs: signs, invariance, the no-map case, the cache, constant velocity at zero output,
and ``--map`` on the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from carla_mr.twin import map_features as mf
from carla_mr.twin.residual import ResidualPredictor, n_features
from carla_mr.twin.predictors import ConstantVelocity, load_predictor

pytest.importorskip("carla")

ROOT = Path(__file__).resolve().parents[2]


def _xodr(x0: float = 0.0, y0: float = 0.0, hdg: float = 0.0, curvature: float = 1 / 25.0) -> str:
    """One road, one right-hand driving lane: 60 m straight, a 90-degree arc (curvature > 0: a LEFT
    turn for the driver), 40 m straight; start (x0, y0) and heading ``hdg`` in the OpenDRIVE frame."""
    arc = 0.5 * math.pi / abs(curvature)
    geoms, s, x, y, h = [], 0.0, x0, y0, hdg
    for kind, length in (("line", 60.0), ("arc", arc), ("line", 40.0)):
        body = "<line/>" if kind == "line" else f'<arc curvature="{curvature:.9f}"/>'
        geoms.append(f'<geometry s="{s:.6f}" x="{x:.6f}" y="{y:.6f}" hdg="{h:.9f}" length="{length:.6f}">{body}'
                     f'</geometry>')
        if kind == "line":
            x, y = x + length * math.cos(h), y + length * math.sin(h)
        else:
            r = 1.0 / curvature
            h2 = h + length * curvature
            x, y = x + r * (math.sin(h2) - math.sin(h)), y - r * (math.cos(h2) - math.cos(h))
            h = h2
        s += length
    return f"""<?xml version="1.0" standalone="yes"?>
<OpenDRIVE><header revMajor="1" revMinor="4" name="t" version="1"/>
<road name="r" length="{s:.6f}" id="1" junction="-1"><link/>
<planView>{''.join(geoms)}</planView>
<elevationProfile/><lateralProfile/>
<lanes><laneSection s="0"><center><lane id="0" type="none" level="false"/></center>
<right><lane id="-1" type="driving" level="false"><width sOffset="0" a="3.5" b="0" c="0" d="0"/></lane></right>
</laneSection></lanes></road></OpenDRIVE>"""


def _features(text: str, name: str = "t", **kw) -> mf.MapFeatures:
    import carla

    return mf.MapFeatures(carla.Map(name, text), name=name, **kw)


def _on_lane(feats: mf.MapFeatures, s_along: float) -> tuple[float, float, float]:
    """x, y (CARLA), heading of the lane point nearest to ``s_along`` metres from the road start."""
    w = feats.map.get_waypoint_xodr(1, -1, s_along)
    t = w.transform
    return t.location.x, t.location.y, math.radians(t.rotation.yaw)


def test_left_turn_ahead_negative_and_straight_zero():
    f = _features(_xodr())
    x, y, h = _on_lane(f, 5.0)  # 55 m before the turn: straight for 30 m
    straight = f.compute([x], [y], [h])[0]
    assert straight[0] == 1 and straight[1] == 1
    assert np.all(np.abs(straight[2:10]) < 0.02)
    x, y, h = _on_lane(f, 45.0)  # 15 m before a left turn
    before = f.compute([x], [y], [h])[0]
    assert before[7] < -0.05 and before[9] < -0.2  # 20 and 30 m ahead: the lane bends LEFT (negative)
    assert before[8] < before[6] <= 0.02  # the side offset grows with the distance
    right = _features(_xodr(curvature=-1 / 25.0))
    x, y, h = _on_lane(right, 45.0)
    assert right.compute([x], [y], [h])[0][9] > 0.2  # a right turn: positive


def test_lateral_offset_sign_and_off_lane():
    f = _features(_xodr())
    x, y, h = _on_lane(f, 20.0)
    # CARLA frame: at heading h, the vehicle's right is (-sin h, cos h)... rotated: (cos(h+90), sin(h+90))
    rx, ry = math.cos(h + math.pi / 2), math.sin(h + math.pi / 2)
    a = f.compute([x + 1.0 * rx], [y + 1.0 * ry], [h])[0]
    assert a[2] == pytest.approx(0.5, abs=0.05)  # 1 m right of centre, / 2
    far = f.compute([x + 40 * rx], [y + 40 * ry], [h])[0]
    assert far[0] == 1 and far[1] == 0 and np.all(far[2:] == 0)  # no lane near: only the map flag
    wrong_way = f.compute([x], [y], [h + math.pi])[0]
    assert wrong_way[1] == 0  # no lane in the vehicle's direction


def test_invariant_to_moving_and_rotating_the_whole_map():
    a = _features(_xodr(), "a")
    b = _features(_xodr(x0=123.0, y0=-45.0, hdg=2.1), "b")
    # (on lane points of the 2 m table: between them the look-ahead is quantised to the table's point)
    for s_along in (10.2, 44.2, 70.2, 100.2):
        fa = a.compute(*[[v] for v in _on_lane(a, s_along)])
        fb = b.compute(*[[v] for v in _on_lane(b, s_along)])
        np.testing.assert_allclose(fa, fb, atol=0.03)


def test_no_map_zeros_and_flag_zero():
    z = mf.absent(4)
    assert z.shape == (4, mf.N_MAP) and not z.any()
    rng = np.random.default_rng(0)
    past = np.cumsum(rng.normal(size=(3, 12, 2)), axis=1)
    from carla_mr.twin.residual import map_inputs_for

    assert not map_inputs_for(past, None).any()
    assert n_features(True) == n_features(False) + mf.N_MAP
    m = _zero_model(True, past=12)  # map-aware, no fallback, no map: zero map inputs, still served
    assert m.map is None and m.fallback is None
    np.testing.assert_allclose(m.predict(past), ConstantVelocity(12, 5, 5.0).predict(past), atol=1e-9)


def test_cache_matches_uncached_town01():
    import carla

    cmap = carla.Map("Town01", (ROOT / "maps" / "Town01.xodr").read_text())
    cached, fresh = mf.MapFeatures(cmap), mf.MapFeatures(cmap, cache=False)
    rng = np.random.default_rng(1)
    i = rng.integers(0, len(cached.xy), 300)
    x = cached.xy[i, 0] + rng.normal(0, 0.7, i.size)
    y = cached.xy[i, 1] + rng.normal(0, 0.7, i.size)
    h = cached.yaw[i] + rng.normal(0, 0.1, i.size)
    first = cached.compute(x, y, h)
    assert cached.cached.sum() > 0
    np.testing.assert_array_equal(first, cached.compute(x, y, h))  # from the cache
    np.testing.assert_array_equal(first, fresh.compute(x, y, h))  # recomputed every time
    assert np.isfinite(first).all() and (first[:, 0] == 1).all()


def _zero_model(map_inputs: bool, past: int = 20) -> ResidualPredictor:
    d = n_features(map_inputs)
    params = {"W0": np.ones((d, 8), np.float32), "b0": np.zeros(8, np.float32),
              "W1": np.zeros((8, 10), np.float32), "b1": np.zeros(10, np.float32)}
    return ResidualPredictor(past, 5, 5.0, params=params, norm={"mean": np.zeros(d), "std": np.ones(d)},
                             map_inputs=map_inputs)


def test_zero_output_with_map_inputs_is_constant_velocity(tmp_path):
    f = _features(_xodr())
    x, y, h = _on_lane(f, 40.0)
    t = np.arange(20)[::-1] * -0.2 * 8.0  # 8 m/s towards the turn
    past = np.stack([x + t * math.cos(h), y + t * math.sin(h)], axis=-1)[None]
    m = _zero_model(True)
    m.map = f
    cv = ConstantVelocity(20, 5, 5.0).predict(past)
    np.testing.assert_allclose(m.predict(past), cv, atol=1e-9)
    m.save(tmp_path / "m")
    back = load_predictor(tmp_path / "m", sample_hz=5.0)
    assert back.map_inputs and back.map is None
    np.testing.assert_allclose(back.predict(past), cv, atol=1e-9)  # no map: zeros, still constant velocity


def test_map_free_model_config_loads_without_map_inputs(tmp_path):
    m = _zero_model(False)
    m.save(tmp_path / "m")
    assert not load_predictor(tmp_path / "m").map_inputs
    default = load_predictor(ROOT / "carla_mr" / "data" / "twin" / "residual")
    assert default.kind == "residual"


def test_cli_bad_map_exit_2(tmp_path):
    from click.testing import CliRunner

    from carla_mr.cli import main
    from twin_helpers import synthetic_rows, write_csv

    csv = tmp_path / "t.csv"
    write_csv(csv, synthetic_rows(n_vehicles=4, seconds=30, hz=5, seed=2))
    bad = tmp_path / "bad.xodr"
    bad.write_text("this is not OpenDRIVE")
    for m in (str(bad), str(tmp_path / "missing.xodr")):
        res = CliRunner().invoke(main, ["twin", "eval", "constant_velocity", str(csv), "--past", "5", "--future", "2",
                                        "--map", m])
        assert res.exit_code == 2, res.output
        assert "--map" in res.output
    res = CliRunner().invoke(main, ["twin", "eval", "constant_velocity", str(csv), str(csv), "--past", "5",
                                    "--map", m, "--map", m, "--map", m])
    assert res.exit_code == 2 and "--map" in res.output


def test_stage_builds_the_map_once_for_a_map_model(tmp_path):
    """The twin stage gives a map-aware model the world's map; a map-free model gets none."""
    import carla

    from carla_mr.config import scenario_from_dict
    from carla_mr.runner import Runner
    from carla_mr.twin.online import TwinStage
    from carla_mr.testing.fake_world import FakeWorld
    from carla_mr.world.base import ROLE_AV, RsuTable, Snapshot

    text = _xodr()
    lane = _features(text)
    x0, y0, h = _on_lane(lane, 2.0)

    def script(frame: int) -> Snapshot:
        d = 8.0 * frame * 0.05
        x, y = np.array([x0 + d * math.cos(h)]), np.array([y0 + d * math.sin(h)])
        z = np.zeros(1)
        return Snapshot(frame, frame * 0.05, np.array([1], np.int64), np.array([ROLE_AV], np.uint8), x, y, z, z, z,
                        np.zeros(1, np.int32))

    for map_inputs in (True, False):
        m = _zero_model(map_inputs, past=6)
        m.save(tmp_path / f"m{map_inputs}")
        sc = scenario_from_dict({"map": "nowhere.xodr", "duration_s": 10.0,
                                 "twin": {"enabled": True, "model": str(tmp_path / f"m{map_inputs}"),
                                          "sample_hz": 5.0}})
        sc.source_path = str(tmp_path / "scenario.yaml")
        f = np.zeros(1)
        world = FakeWorld(script, rsus=RsuTable(f, f, f, np.full(1, 500.0), f, f, f, f))
        world.map = carla.Map("synthetic", text)
        stage = TwinStage(sc.twin)
        summary = Runner(sc, tmp_path / f"run{map_inputs}", stages=[stage], world=world, progress=False,
                         ticks=120).run()
        tw = summary["stages"]["twin"]
        assert tw["map_inputs"] is map_inputs
        assert (tw["map"] == "synthetic") if map_inputs else tw["map"] is None
        assert tw["scored"] > 0 and tw["online"]["ade_m"] < 1e-6  # zero output: constant velocity, exact here


def test_fallback_serves_windows_without_a_map_exactly(tmp_path):
    """A map-aware model with a fallback (--init) predicts as the map-free model when there is no map."""
    rng = np.random.default_rng(4)
    d0, d1 = n_features(False), n_features(True)

    def net(d):
        return {"W0": rng.normal(0, 0.3, (d, 8)).astype(np.float32), "b0": np.zeros(8, np.float32),
                "W1": rng.normal(0, 0.3, (8, 10)).astype(np.float32), "b1": np.zeros(10, np.float32)}

    plain_p, norm0 = net(d0), {"mean": np.zeros(d0), "std": np.ones(d0)}
    plain = ResidualPredictor(20, 5, 5.0, params=plain_p, norm=norm0)
    both = ResidualPredictor(20, 5, 5.0, params=net(d1), norm={"mean": np.zeros(d1), "std": np.ones(d1)},
                             map_inputs=True, fallback={"params": plain_p, "norm": norm0})
    past = np.cumsum(rng.normal(1.0, 0.5, (6, 20, 2)), axis=1)
    np.testing.assert_array_equal(both.predict(past), plain.predict(past))
    both.save(tmp_path / "m")
    back = load_predictor(tmp_path / "m", sample_hz=5.0)
    assert back.fallback is not None
    np.testing.assert_allclose(back.predict(past), plain.predict(past), atol=1e-9)
    back.map = _features(_xodr())  # with a map, the map network serves (here: another prediction)
    assert not np.allclose(back.predict(past), plain.predict(past))


def test_cli_train_with_map_and_init(tmp_path):
    """`twin train --map --init`: a map-aware model that keeps the map-free one as its fallback."""
    pytest.importorskip("torch")
    import json

    from click.testing import CliRunner

    from carla_mr.cli import main
    from twin_helpers import synthetic_rows, write_csv

    csv = tmp_path / "t.csv"
    write_csv(csv, synthetic_rows(n_vehicles=12, seconds=40, hz=5, seed=5))
    xodr = ROOT / "maps" / "Town02.xodr"  # (the tracks are not on its lanes: on_lane 0, the flag 1)
    common = [str(csv), "--past", "8", "--future", "3", "--epochs", "1", "--hidden", "8", "--rates", "5",
              "--max-windows", "500", "--json", "--seed", "1"]
    res = CliRunner().invoke(main, ["twin", "train", *common, "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["twin", "train", *common, "--out", str(tmp_path / "b"), "--map", str(xodr),
                                    "--init", str(tmp_path / "a" / "model"), "--rate-balance",
                                    "--compare", str(tmp_path / "a" / "model")])
    assert res.exit_code == 0, res.output
    r = json.loads(res.stdout.strip().splitlines()[-1])
    assert r["map_inputs"] and r["training"]["init"]
    m = r["held_apart"][0]["metrics"]
    assert m["residual_no_map"]["ade"] == pytest.approx(m["reference"]["ade"], rel=1e-9)  # the fallback
    res = CliRunner().invoke(main, ["twin", "train", *common, "--out", str(tmp_path / "c"), "--init",
                                    str(tmp_path / "a" / "model")])
    assert res.exit_code == 2 and "--init" in res.output  # without --map


def test_default_without_a_map_is_the_previous_default():
    """The committed default takes map inputs; without a map it predicts exactly as residual_nomap."""
    data = ROOT / "carla_mr" / "data" / "twin"
    new, old = load_predictor(data / "residual", sample_hz=2.0), load_predictor(data / "residual_nomap", sample_hz=2.0)
    assert new.map_inputs and new.fallback is not None and not old.map_inputs
    past = np.cumsum(np.random.default_rng(7).normal(2.0, 0.6, (16, 60, 2)), axis=1)
    np.testing.assert_array_equal(new.predict(past), old.predict(past))
    assert sum(p.stat().st_size for p in (data / "residual").iterdir()) <= 1_000_000
