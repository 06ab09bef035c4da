"""Loading, resampling, bad-data accounting, windows and the by-vehicle split."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.twin import data
from twin_helpers import synthetic_rows, write_csv


def test_csv_xy_resampled_exactly(tmp_path):
    # a vehicle moving x = 2 t, y = -t, sampled irregularly at ~10 Hz; linear -> resampling is exact
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 20, 200))
    t[0], t[-1] = 0.0, 20.0
    p = tmp_path / "a.csv"
    write_csv(p, {"track_id": np.full(t.size, 7), "timestamp": t, "x": 2 * t, "y": -t})
    tr, info = data.load_tracks(p, sample_hz=2.0)
    assert info["id_col"] == "track_id" and info["time_col"] == "timestamp" and info["coords"] == "metres"
    assert tr.n_tracks == 1 and tr.dt == 0.5
    np.testing.assert_allclose(tr.t, np.arange(41) * 0.5)
    np.testing.assert_allclose(tr.xy[:, 0], 2 * tr.t, atol=1e-9)
    np.testing.assert_allclose(tr.xy[:, 1], -tr.t, atol=1e-9)


def test_iso_timestamps_and_milliseconds(tmp_path):
    p = tmp_path / "iso.csv"
    with open(p, "w") as fh:
        fh.write("vehicle_id,time,x,y\n")
        for k in range(11):
            fh.write(f"a,2024-05-01T12:00:{k:02d}.000Z,{k * 3.0},0\n")
    tr, _ = data.load_tracks(p, sample_hz=1.0)
    np.testing.assert_allclose(tr.t, np.arange(11.0))
    np.testing.assert_allclose(tr.xy[:, 0], np.arange(11) * 3.0)
    q = tmp_path / "ms.csv"
    write_csv(q, {"id": np.zeros(11), "t": np.arange(11) * 1000.0, "x": np.arange(11.0), "y": np.zeros(11)})
    tr2, _ = data.load_tracks(q, sample_hz=1.0, time_unit="ms")
    np.testing.assert_allclose(tr2.t, np.arange(11.0))


def test_lonlat_projected_to_metres(tmp_path):
    # moving north 10 m/s at latitude 48 deg: y (south) must fall 10 m per second
    t = np.arange(30.0)
    lat = 48.0 + np.degrees(10.0 * t / data.EARTH_RADIUS_M)
    lon = np.full(t.size, 11.5)
    p = tmp_path / "geo.csv"
    write_csv(p, {"id": np.ones(t.size), "t": t, "longitude": lon, "lat": lat})
    tr, info = data.load_tracks(p, sample_hz=1.0)
    assert info["coords"] == "lonlat"
    np.testing.assert_allclose(np.diff(tr.xy[:, 1]), -10.0, rtol=1e-6)
    np.testing.assert_allclose(tr.xy[:, 0], 0.0, atol=1e-6)
    # east-west: 1e-4 deg of longitude at 48 deg is R cos(48) * 1e-4 rad
    x, _, _ = data.project_lonlat(np.array([0.0, 1e-4]), np.array([48.0, 48.0]), origin=(0.0, 48.0))
    assert x[1] == pytest.approx(data.EARTH_RADIUS_M * math.cos(math.radians(48)) * math.radians(1e-4))


def test_column_overrides_and_unknown_columns(tmp_path):
    p = tmp_path / "odd.csv"
    write_csv(p, {"car": np.zeros(5), "sec": np.arange(5.0), "px": np.arange(5.0), "py": np.zeros(5)})
    with pytest.raises(InputError, match="no vehicle id column.*--id-col"):
        data.load_tracks(p, sample_hz=1.0)
    tr, _ = data.load_tracks(p, sample_hz=1.0, columns={"id": "car", "time": "sec", "x": "px", "y": "py"})
    assert tr.n_tracks == 1
    with pytest.raises(InputError, match="--x-col.*'nope' is not in the file"):
        data.load_tracks(p, sample_hz=1.0, columns={"id": "car", "time": "sec", "x": "nope", "y": "py"})
    q = tmp_path / "nopos.csv"
    write_csv(q, {"id": np.zeros(5), "t": np.arange(5.0), "a": np.zeros(5)})
    with pytest.raises(InputError, match="no position columns"):
        data.load_tracks(q, sample_hz=1.0)
    r = tmp_path / "notime.csv"
    write_csv(r, {"id": np.zeros(5), "x": np.arange(5.0), "y": np.zeros(5)})
    with pytest.raises(InputError, match="no time column"):
        data.load_tracks(r, sample_hz=1.0)


def test_bad_lonlat_and_bad_times(tmp_path):
    p = tmp_path / "bad.csv"
    write_csv(p, {"id": np.zeros(5), "t": np.arange(5.0), "lon": np.full(5, 500.0), "lat": np.zeros(5)})
    with pytest.raises(InputError, match="latitudes must lie"):
        data.load_tracks(p, sample_hz=1.0)
    q = tmp_path / "t.csv"
    q.write_text("id,t,x,y\n1,yesterday,0,0\n1,today,1,0\n")
    with pytest.raises(InputError, match="ISO-8601"):
        data.load_tracks(q, sample_hz=1.0)


def test_bad_rows_are_counted_not_silent():
    r = synthetic_rows(n_vehicles=4, seconds=10, hz=10)
    ids, t, x, y = (r[k].copy() for k in ("id", "t", "x", "y"))
    clean = data.resample(ids, t, x, y, sample_hz=2.0, min_samples=5)
    # NaNs in 3 rows, a shuffled vehicle, a duplicated row, a gap, and a too-short vehicle
    x[[3, 50, 77]] = np.nan
    m = ids == 101
    perm = np.random.default_rng(0).permutation(np.flatnonzero(m))
    ids[m], t[m], x[m], y[m] = ids[perm], t[perm], x[perm], y[perm]
    ids = np.concatenate([ids, ids[-1:], np.full(3, 999)])  # the last row again: a duplicate time
    t = np.concatenate([t, t[-1:], [0.0, 0.1, 0.2]])
    x = np.concatenate([x, x[-1:], [0.0, 1.0, 2.0]])
    y = np.concatenate([y, y[-1:], [0.0, 0.0, 0.0]])
    gap = (ids == 103) & (t > 4.0) & (t < 6.0)
    ids, t, x, y = ids[~gap], t[~gap], x[~gap], y[~gap]
    x[(ids == 102) & (t > 7.0)] += 500.0  # a teleport: 500 m in 0.1 s
    with pytest.raises(InputError, match="time: time is not increasing for vehicle 101.*--sort-time"):
        data.resample(ids, t, x, y, sample_hz=2.0, min_samples=5)
    tr = data.resample(ids, t, x, y, sample_hz=2.0, min_samples=5, sort_time=True)
    rep = tr.report
    assert rep["nan_rows"] == 3
    assert rep["unsorted_tracks"] == 1
    assert rep["duplicate_time_rows"] == 1
    assert rep["gap_splits"] == 1
    assert rep["jump_splits"] == 1
    assert rep["short_segments"] == 1  # vehicle 999 (0.2 s long)
    assert rep["native_hz"] == 10.0 and rep["upsampled"] is False
    assert tr.n_tracks == clean.n_tracks + 2  # vehicles 102 and 103 are now two segments each
    # the shuffled vehicle resamples to the same positions as the clean one
    np.testing.assert_allclose(tr.track(1), clean.track(1))
    with pytest.raises(InputError, match="no track has"):
        data.resample(np.zeros(3), np.arange(3.0), np.zeros(3), np.zeros(3), sample_hz=1.0, min_samples=10)
    with pytest.raises(InputError, match="finite"):
        data.resample(np.zeros(2), np.array([np.nan, np.nan]), np.zeros(2), np.zeros(2), sample_hz=1.0)


def _write_run(tmp_path, rows, role=None):
    run = tmp_path / "run"
    run.mkdir()
    n = rows["id"].size
    table = pa.table({"frame": np.round(rows["t"] / 0.05).astype(np.int64), "time": rows["t"],
                      "id": rows["id"].astype(np.int64),
                      "role": (role if role is not None else np.zeros(n)).astype(np.uint8),
                      "x": rows["x"], "y": rows["y"], "z": np.zeros(n), "yaw": np.zeros(n), "speed": np.zeros(n),
                      "rsu": np.full(n, -1, np.int32)})
    pq.write_table(table, run / "trajectories.parquet")
    return run


def test_run_directory_and_roles(tmp_path):
    r = synthetic_rows(n_vehicles=5, seconds=10, hz=20)
    role = (r["id"] % 2 == 0).astype(np.uint8)
    run = _write_run(tmp_path, r, role)
    tr, info = data.load_tracks(run, sample_hz=20.0)
    assert tr.n_tracks == 5 and info["source"].endswith("trajectories.parquet")
    av, _ = data.load_tracks(run, sample_hz=20.0, role="av")
    assert av.n_tracks == int(np.unique(r["id"][role == 1]).size)
    with pytest.raises(InputError, match="no trajectories.parquet"):
        data.load_tracks(tmp_path, sample_hz=1.0)
    with pytest.raises(InputError, match="not found"):
        data.load_tracks(tmp_path / "missing.csv", sample_hz=1.0)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(InputError, match="unknown file type"):
        data.load_tracks(tmp_path / "x.txt", sample_hz=1.0)


def test_windows_and_split():
    r = synthetic_rows(n_vehicles=10, seconds=20, hz=2)
    tr = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=2.0)
    past, fut, veh = data.windows(tr, 6, 3, step=2)
    per_track = (tr.lengths - 9) // 2 + 1
    assert past.shape == (per_track.sum(), 6, 2) and fut.shape == (per_track.sum(), 3, 2)
    # first window of track 3 is its first 9 samples
    first = int(per_track[:3].sum())
    np.testing.assert_array_equal(np.concatenate([past[first], fut[first]]), tr.track(3)[:9])
    assert veh[first] == tr.vehicle[3]
    sub, _, _ = data.windows(tr, 6, 3, max_windows=7, seed=1)
    assert sub.shape[0] == 7
    train, test = data.split_by_vehicle(tr, 0.3, seed=0)
    assert set(train.vehicle.tolist()).isdisjoint(test.vehicle.tolist())
    assert train.n_tracks + test.n_tracks == tr.n_tracks
    assert test.n_tracks == 3
    with pytest.raises(InputError):
        data.split_by_vehicle(tr, 1.5)
    with pytest.raises(InputError):
        data.windows(tr, 1, 3)


def test_concat_keeps_vehicles_apart():
    r = synthetic_rows(n_vehicles=3, seconds=10, hz=2)
    a = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=2.0)
    both = data.concat([a, a])
    assert np.unique(both.vehicle).size == 6
    assert both.report["tracks"] == 6
    b = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=1.0)
    with pytest.raises(InputError, match="sample intervals"):
        data.concat([a, b])


def test_rows_without_id_are_counted(tmp_path):
    p = tmp_path / "n.csv"
    lines = ["id,t,x,y"] + [f"1,{k},{k},0" for k in range(10)] + [f",{k},5,5" for k in range(3)]
    p.write_text("\n".join(lines) + "\n")
    tr, info = data.load_tracks(p, sample_hz=1.0)
    assert tr.n_tracks == 1 and tr.report["null_id_rows"] == 3 and info["null_id_rows"] == 3
    np.testing.assert_allclose(tr.xy[:, 0], np.arange(10.0))


def _jittered(seed=0, n_veh=6, seconds=30.0, hz=4.0):
    """Irregularly sampled rows (jitter of up to a third of a period) of curvy vehicles."""
    r = synthetic_rows(n_vehicles=n_veh, seconds=seconds, hz=hz, seed=seed)
    rng = np.random.default_rng(seed)
    t = r["t"] + rng.uniform(-0.3, 0.3, r["t"].size) / hz
    return r["id"], t, r["x"], r["y"]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from([1.0, 2.0, 4.0, 8.0]), st.floats(3.0, 25.0))
def test_resampling_is_causal(seed, hz, t_cut):
    """Perturb every raw sample after t_cut: no window whose last input time is <= t_cut changes
    (at the native rate, downsampled, and upsampled with --allow-upsample)."""
    ids, t, x, y = _jittered(seed % 1000)
    rng = np.random.default_rng(seed)
    after = t > t_cut
    x2, y2 = x.copy(), y.copy()
    x2[after] += rng.normal(size=after.sum()) * 5
    y2[after] += rng.normal(size=after.sum()) * 5
    kw = dict(sample_hz=hz, allow_upsample=True, max_gap_s=10.0, max_speed_mps=1e9)
    a = data.resample(ids, t, x, y, **kw)
    b = data.resample(ids, t, x2, y2, **kw)
    assert a.n_tracks == b.n_tracks
    past = 3
    starts = data.window_starts(a, past, 1)
    last = starts + past - 1
    keep = a.t[last] <= t_cut
    idx = starts[keep][:, None] + np.arange(past)
    np.testing.assert_array_equal(a.xy[idx], b.xy[idx])
    np.testing.assert_array_equal(a.t, b.t)


def test_native_rate_default_and_no_upsampling():
    r = synthetic_rows(n_vehicles=3, seconds=20, hz=5)
    tr = data.resample(r["id"], r["t"], r["x"], r["y"])
    assert tr.hz == 5.0 and tr.report["native_hz"] == 5.0
    # at its own rate each track is exactly its raw samples, on a grid starting at its first sample
    np.testing.assert_array_equal(tr.track(0)[:, 0], r["x"][r["id"] == 100])
    with pytest.raises(InputError, match="sample_hz.*above the data's own rate.*--allow-upsample"):
        data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=10.0)
    up = data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=10.0, allow_upsample=True)
    assert up.report["upsampled"] is True
    with pytest.raises(InputError, match="sample_hz.*0.5 Hz is outside 1-25 Hz"):
        data.resample(r["id"], r["t"], r["x"], r["y"], sample_hz=0.5)
    fast = synthetic_rows(n_vehicles=2, seconds=2, hz=50)
    with pytest.raises(InputError, match="data's own rate 50 Hz is outside 1-25 Hz"):
        data.resample(fast["id"], fast["t"], fast["x"], fast["y"])
    ok = data.resample(fast["id"], fast["t"], fast["x"], fast["y"], sample_hz=25.0)
    assert ok.hz == 25.0


def test_single_sample_tracks_are_counted():
    r = synthetic_rows(n_vehicles=2, seconds=10, hz=2)
    ids = np.concatenate([r["id"], [7, 8]])
    t = np.concatenate([r["t"], [1.0, 2.0]])
    x = np.concatenate([r["x"], [0.0, 0.0]])
    y = np.concatenate([r["y"], [0.0, 0.0]])
    tr = data.resample(ids, t, x, y)
    assert tr.report["single_sample_tracks"] == 2 and tr.n_tracks == 2


def test_vehicle_keys_follow_the_vehicle_not_the_rate():
    ids = np.array([0, 0, 1, 1])
    t = np.array([0.0, 1.0, 5.0, 6.0])
    x = np.array([1.0, 2.0, 1.0, 2.0])
    k = data.vehicle_keys(ids, t, x, x, ["7", "8"])
    k_same_place_later = data.vehicle_keys(ids, t + 100.0, x, x, ["7", "8"])
    assert k[0] != k[1] and len(set(k) & set(k_same_place_later)) == 0
    assert data.vehicle_keys(ids[::-1], t[::-1], x[::-1], x[::-1], ["7", "8"]) == k
