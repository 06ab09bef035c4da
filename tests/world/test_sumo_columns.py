"""SumoColumns: libsumo subscription results -> Snapshot columns and serving RSU.

The compiled pass and the numpy pass must agree bit for bit, and both must mean what the
module says (checked against a plain per-vehicle Python reference)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.world.base import RsuTable
from carla_mr.world.rsu import RsuAssociator
from carla_mr.world.sumo_columns import INVALID_BELOW, SumoColumns, c_pass_available

P, A, S = 0x39, 0x43, 0x40  # libsumo's VAR_POSITION3D, VAR_ANGLE, VAR_SPEED
INVALID = -(2.0 ** 30)  # libsumo's INVALID_DOUBLE_VALUE

needs_c = pytest.mark.skipif(not c_pass_available(), reason="the C pass is not built in this install")


def table(xs, ys, ranges) -> RsuAssociator:
    one = np.ones(len(xs))
    return RsuAssociator(RsuTable(x=np.array(xs, float), y=np.array(ys, float), z=0 * one,
                                  range_m=np.array(ranges, float), bandwidth_up_hz=one, bandwidth_down_hz=one,
                                  cpu_hz=one, gpu_hz=one))


def reference(res, ox, oy, xs, ys, ranges):
    """Per vehicle, in plain Python: CARLA-frame row and the nearest covering RSU (ties: lower index)."""
    keys, rows, rsu = [], [], []
    for k, v in res.items():
        p, a, s = v[P], v[A], v[S]
        if len(p) != 3 or p[0] <= INVALID_BELOW or s <= INVALID_BELOW:
            continue
        x, y = p[0] - ox, oy - p[1]
        keys.append(k)
        rows.append((x, y, p[2] + 0.0, (a + 90.0) % 360.0 - 180.0, s + 0.0))
        best, best_d2 = -1, math.inf
        for j, (rx, ry, r) in enumerate(zip(xs, ys, ranges)):
            d2 = (x - rx) * (x - rx) + (y - ry) * (y - ry)
            if d2 <= r * r and d2 < best_d2:
                best, best_d2 = j, d2
        rsu.append(best)
    return keys, rows, rsu


def columns_both(res, ox, oy, assoc):
    out = []
    for use_c in (True, False):
        keys, cols, rsu = SumoColumns((P, A, S), (ox, oy), assoc, use_c=use_c)(res)
        assert cols.dtype == np.float64 and cols.flags.c_contiguous and cols.shape == (5, len(keys))
        assert rsu.dtype == np.int32 and rsu.shape == (len(keys),)
        out.append((keys, cols, rsu))
    return out


coord = st.floats(-3000, 3000, allow_nan=False, allow_infinity=False)
# angles on and off the multiples of 90 degrees (the remainder's edge cases), both signs
angle = st.one_of(st.floats(-720, 720, allow_nan=False, allow_infinity=False),
                  st.sampled_from([-450.0, -360.0, -270.0, -90.0, -0.0, 0.0, 90.0, 180.0, 270.0, 360.0, 1e-300, -1e-300]))


@st.composite
def ticks(draw):
    """(results, ox, oy, rsu xs, ys, ranges): some vehicles exactly on RSUs or on the grid
    where two RSUs tie, and ranges either all equal or not; sometimes a teleporting vehicle."""
    nr = draw(st.integers(0, 6))
    grid = st.sampled_from([-100.0, -50.0, 0.0, 50.0, 100.0])
    near = st.sampled_from([-50.0, 0.0, 50.0])  # RSUs on a small grid: duplicates and ties are common
    xs = [draw(near) for _ in range(nr)]
    ys = [draw(near) for _ in range(nr)]
    if draw(st.booleans()):
        ranges = [draw(st.sampled_from([0.0, 50.0, 70.0, 1e4]))] * nr
    else:
        ranges = [draw(st.sampled_from([0.0, 25.0, 50.0, 70.0, 1e4])) for _ in range(nr)]
    ox, oy = draw(st.sampled_from([0.0, 12.5, -333.25])), draw(st.sampled_from([0.0, 7.75, 480.5]))
    res = {}
    for i in range(draw(st.integers(0, 40))):
        kind = draw(st.sampled_from(["free", "free", "grid", "tele_pos", "tele_speed"]))
        if kind == "grid":  # on a grid point in CARLA's frame: exactly on an RSU or equidistant to some
            cx, cy = draw(st.sampled_from([-100.0, -75.0, -50.0, -25.0, 0.0, 25.0, 50.0, 75.0, 100.0])), draw(grid)
            pos = (cx + ox, oy - cy, draw(coord))
        else:
            pos = (draw(coord), draw(coord), draw(st.floats(-50, 50, allow_nan=False)))
        speed = draw(st.floats(0, 60, allow_nan=False))
        if kind == "tele_pos":
            pos = (INVALID, INVALID)
        elif kind == "tele_speed":
            speed = INVALID
        res[str(i * 3)] = {P: pos, S: speed, A: draw(angle)}
    return res, ox, oy, xs, ys, ranges


@settings(max_examples=300, deadline=None)
@given(ticks())
def test_both_passes_equal_the_reference_bit_for_bit(case):
    res, ox, oy, xs, ys, ranges = case
    keys, rows, rsu = reference(res, ox, oy, xs, ys, ranges)
    for got_keys, cols, got_rsu in columns_both(res, ox, oy, table(xs, ys, ranges)):
        assert got_keys == keys
        want = np.array(rows, dtype=np.float64).reshape(len(keys), 5).T
        assert cols.tobytes() == np.ascontiguousarray(want).tobytes()  # bitwise, -0.0 included
        assert got_rsu.tolist() == rsu
        assert np.all((cols[3] >= -180.0) & (cols[3] < 180.0))


@pytest.mark.parametrize("ranges", [[60.0, 60.0, 60.0], [60.0, 80.0, 60.0]], ids=["uniform", "mixed"])
def test_ties_go_to_the_lower_rsu_index(ranges):
    # RSU 0 and 2 at the same place, RSU 1 50 m east: (25, 0) is equidistant from all three
    res = {str(i): {P: (x, -y, 0.0), A: 0.0, S: 1.0} for i, (x, y) in enumerate([(25.0, 0.0), (0.0, 0.0), (50.0, 0.0),
                                                                               (0.0, 59.0), (0.0, 61.0)])}
    for keys, cols, rsu in columns_both(res, 0.0, 0.0, table([0.0, 50.0, 0.0], [0.0, 0.0, 0.0], ranges)):
        assert keys == ["0", "1", "2", "3", "4"]
        assert rsu.tolist() == [0, 0, 1, 0, -1 if ranges[1] == 60.0 else 1]


@needs_c
def test_the_c_pass_is_taken_and_a_teleporting_tick_goes_numpy(monkeypatch):
    assoc = table([0.0], [0.0], [100.0])
    cols_c = SumoColumns((P, A, S), (0.0, 0.0), assoc)
    assert cols_c.uses_c and not SumoColumns((P, A, S), (0.0, 0.0), assoc, use_c=False).uses_c
    calls = []
    numpy_pass = SumoColumns._numpy

    def spy(self, res, keys):
        calls.append(list(keys))
        return numpy_pass(self, res, keys)

    monkeypatch.setattr(SumoColumns, "_numpy", spy)
    clean = {"1": {P: (1.0, 2.0, 0.0), A: 0.0, S: 3.0}}
    cols_c(clean)
    assert calls == []
    keys, cols, rsu = cols_c({**clean, "2": {P: (INVALID, INVALID), A: 0.0, S: INVALID}})
    assert calls == [["1", "2"]] and keys == ["1"] and cols[:, 0].tolist() == [1.0, -2.0, 0.0, -90.0, 3.0]
    assert rsu.tolist() == [0]


@needs_c
def test_the_c_pass_rejects_malformed_input_by_name():
    from carla_mr.world import _sumo_columns as c

    rx = np.zeros(2)
    good = {"1": {P: (1.0, 2.0, 0.0), A: 0.0, S: 3.0}}

    def call(res=good, cols=None, rsu=None, r2=None):
        return c.fill(res, P, A, S, INVALID_BELOW, 0.0, 0.0, rx, rx, rx if r2 is None else r2, True,
                      np.empty((5, len(res))) if cols is None else cols,
                      np.empty(len(res), np.int32) if rsu is None else rsu)

    assert call() is True
    with pytest.raises(TypeError, match="results must be a dict"):
        call(res=[1])
    with pytest.raises(TypeError, match="dict of subscribed variables"):
        call(res={"1": (1.0, 2.0)})
    with pytest.raises(KeyError):
        call(res={"1": {P: (1.0, 2.0, 0.0), A: 0.0}})
    with pytest.raises(ValueError, match="cols must be a float64 array of 5"):
        call(cols=np.empty((5, 2)))
    with pytest.raises(ValueError, match="cols must be"):
        call(cols=np.empty((5, 1), np.float32))
    with pytest.raises(ValueError, match="rsu must be an int32 array"):
        call(rsu=np.empty(1, np.int64))
    with pytest.raises(ValueError, match="one length"):
        call(r2=np.zeros(3))
    with pytest.raises(ValueError, match="not C-contiguous"):
        call(res={**good, "2": good["1"]}, cols=np.empty((2, 5)).T)
    with pytest.raises(TypeError):
        call(res={"1": {P: ("a", 2.0, 0.0), A: 0.0, S: 3.0}})
    with pytest.raises(TypeError, match="13 arguments"):
        c.fill(good)


def test_a_stale_build_is_ignored_with_a_warning():
    """An extension built from an older source (another ABI) must not be called: numpy instead."""
    code = ("import sys, types, warnings; warnings.simplefilter('always')\n"
            "m = types.ModuleType('carla_mr.world._sumo_columns'); m.ABI = 0; m.fill = None\n"
            "sys.modules['carla_mr.world._sumo_columns'] = m\n"
            "import carla_mr.world.sumo_columns as s; print(s.c_pass_available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and "built from an older source" in out.stderr


@pytest.mark.skipif(sys.platform == "win32" or not (shutil.which("cc") or shutil.which("gcc")),
                    reason="no C compiler here: the install falls back to the numpy pass")
def test_the_c_pass_is_built_where_a_compiler_is():
    # setup.py builds it optionally: a failed build would silently cost the embedded world ~25%
    # per tick at 50 vehicles (bench/bench_world.py), so an install with a compiler must have it
    assert c_pass_available(), "carla_mr.world._sumo_columns is missing: run `pip install -e .` again and read its log"
    from carla_mr.world import _sumo_columns
    from carla_mr.world.sumo_columns import C_ABI

    assert _sumo_columns.ABI == C_ABI
