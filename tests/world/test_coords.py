"""Coordinate round-trips between SUMO, OpenDRIVE and CARLA frames (property tests)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.world.coords import (carla_to_odr, carla_to_sumo, carla_yaw_to_sumo_angle, odr_to_carla,
                                   sumo_angle_to_carla_yaw, sumo_to_carla, wrap_deg)

coord = st.floats(-1e5, 1e5, allow_nan=False)
angle = st.floats(-720, 720, allow_nan=False)


def ang_close(a, b, tol=1e-7):
    return abs(float(wrap_deg(np.asarray(a) - np.asarray(b)))) < tol


@given(coord, coord, angle, coord, coord)
@settings(max_examples=200, deadline=None)
def test_sumo_carla_round_trip(x, y, a, ox, oy):
    cx, cy, yaw = sumo_to_carla(x, y, a, (ox, oy))
    sx, sy, sa = carla_to_sumo(cx, cy, yaw, (ox, oy))
    assert np.isclose(sx, x, atol=1e-6) and np.isclose(sy, y, atol=1e-6)
    assert ang_close(sa, a, 1e-6)
    assert -180.0 <= float(yaw) < 180.0


@given(coord, coord, st.floats(-10, 10, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_odr_carla_round_trip(x, y, hdg):
    cx, cy, yaw = odr_to_carla(x, y, hdg)
    assert cy == -y
    ox, oy, h2 = carla_to_odr(cx, cy, yaw)
    assert ox == x and oy == y
    assert abs(np.sin(h2) - np.sin(hdg)) < 1e-9 and abs(np.cos(h2) - np.cos(hdg)) < 1e-9


@given(angle)
def test_sumo_angle_conventions(a):
    # SUMO 0 deg = north (+y odr = -y carla) -> CARLA yaw -90; SUMO 90 = east -> yaw 0
    assert ang_close(sumo_angle_to_carla_yaw(a), a - 90.0)
    assert ang_close(carla_yaw_to_sumo_angle(sumo_angle_to_carla_yaw(a)), a)


def test_fixed_points():
    assert ang_close(sumo_angle_to_carla_yaw(0.0), -90.0)
    assert ang_close(sumo_angle_to_carla_yaw(90.0), 0.0)
    assert ang_close(sumo_angle_to_carla_yaw(180.0), 90.0)
    x, y = sumo_to_carla(10.0, 20.0, net_offset=(1.0, 2.0))
    assert (float(x), float(y)) == (9.0, -18.0)


@given(st.lists(st.tuples(coord, coord, angle), min_size=1, max_size=50), coord, coord)
@settings(max_examples=50, deadline=None)
def test_vectorised_matches_scalar(rows, ox, oy):
    arr = np.array(rows)
    vx, vy, va = sumo_to_carla(arr[:, 0], arr[:, 1], arr[:, 2], (ox, oy))
    for i, (x, y, a) in enumerate(rows):
        sx, sy, sa = sumo_to_carla(x, y, a, (ox, oy))
        assert vx[i] == sx and vy[i] == sy and yaw_eq(va[i], sa)


def yaw_eq(a, b):
    return ang_close(a, b, 1e-9)
