"""libsumo's subscription results -> a Snapshot's columns in CARLA's frame and each vehicle's RSU.

The embedded world's per-tick conversion (its hot path after SUMO's own step). Per vehicle,
SUMO reports the 3-D position (metres, SUMO's right-handed net frame), the angle (degrees,
clockwise from north) and the speed (m/s); the Snapshot wants CARLA's left-handed frame:

    x = px - ox,  y = oy - py,  z = pz,  yaw = remainder(angle + 90, 360) - 180,  speed

(``(ox, oy)`` the net offset), and the index of the nearest RSU whose range covers the vehicle
(:class:`~carla_mr.world.rsu.RsuAssociator`). Two implementations give the same values bit for
bit (``tests/world/test_sumo_columns.py`` holds them to it):

- the C pass, ``carla_mr.world._sumo_columns`` (built by ``setup.py`` where a C compiler is
  found; one pass over the result dicts, no temporaries): at 50 vehicles it takes the embedded
  world from ~1.6x to ~1.3x the CPU time per tick of bare libsumo (``bench/bench_world.py``);
- the numpy pass, used where the extension is not built and for any tick with a teleporting
  vehicle (libsumo's INVALID position or speed), whose vehicle is left out of that tick.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from carla_mr.world.rsu import RsuAssociator

#: The ``fill`` signature this module calls (the extension's ``ABI``).
C_ABI = 1

try:  # optional: setup.py builds it where a C compiler is found
    from carla_mr.world import _sumo_columns as _c
except ImportError:  # pragma: no cover - depends on the install
    _c = None
if _c is not None and getattr(_c, "ABI", None) != C_ABI:  # pragma: no cover - a build older than the source
    import warnings

    warnings.warn("carla_mr.world._sumo_columns was built from an older source (ABI "
                  f"{getattr(_c, 'ABI', None)}, want {C_ABI}); using the numpy pass. Rebuild: pip install -e .",
                  RuntimeWarning, stacklevel=2)
    _c = None

#: libsumo reports INVALID_DOUBLE_VALUE (-2**30) for vehicles off the network (teleporting).
INVALID_BELOW = -1.0e9
#: Per-row factors of SUMO's (x, y, z, angle, speed) on the way to CARLA's frame (y flips).
_COL_SIGN = np.array([1.0, -1.0, 1.0, 1.0, 1.0]).reshape(5, 1)


def c_pass_available() -> bool:
    """True when the compiled conversion is importable (see the module docstring)."""
    return _c is not None


class SumoColumns:
    """Callable: ``columns(results) -> (keys, cols, rsu)``.

    ``results`` is ``libsumo.vehicle.getAllSubscriptionResults()`` with ``variables`` =
    (VAR_POSITION3D, VAR_ANGLE, VAR_SPEED) subscribed. Returns the vehicle id strings kept (in
    the results' order; teleporting vehicles left out), a new (5, n) C-ordered float64 array of
    rows x, y, z (metres), yaw (degrees, [-180, 180)), speed (m/s) in CARLA's frame, and a new
    (n,) int32 array of serving-RSU indices (-1: none in range).

    ``use_c``: take the compiled pass when it is built (False: always numpy; for tests and the
    benchmark's comparison).
    """

    def __init__(self, variables: tuple[int, int, int], net_offset: tuple[float, float], rsus: RsuAssociator,
                 *, use_c: bool = True):
        self.variables = tuple(int(v) for v in variables)
        if len(self.variables) != 3:
            raise ValueError("variables must be (VAR_POSITION3D, VAR_ANGLE, VAR_SPEED)")
        self.ox, self.oy = float(net_offset[0]), float(net_offset[1])
        self.rsus = rsus
        self._shift = np.array([-self.ox, self.oy, 0.0, 90.0, 0.0]).reshape(5, 1)
        self._fill: Optional[object] = _c.fill if (use_c and _c is not None) else None

    @property
    def uses_c(self) -> bool:
        """Whether calls take the compiled pass (ticks with a teleporting vehicle still go numpy)."""
        return self._fill is not None

    def __call__(self, res: dict) -> tuple[list, np.ndarray, np.ndarray]:
        keys = list(res)
        n = len(keys)
        fill = self._fill
        if fill is not None:
            cols = np.empty((5, n))
            rsu = np.empty(n, np.int32)
            a = self.rsus
            p_var, a_var, s_var = self.variables
            if fill(res, p_var, a_var, s_var, INVALID_BELOW, self.ox, self.oy, a.rx, a.ry, a.r2, a.uniform, cols, rsu):
                return keys, cols, rsu
        return self._numpy(res, keys)

    def _numpy(self, res: dict, keys: list) -> tuple[list, np.ndarray, np.ndarray]:
        p_var, a_var, s_var = self.variables
        n = len(keys)
        # one pass over libsumo's result dicts -> a flat list x, y, z, angle, speed per vehicle
        # (a flat list converts to numpy faster than a list of tuples)
        flat: list = []
        put, put1 = flat.extend, flat.append
        for v in res.values():
            put(v[p_var])
            put1(v[a_var])
            put1(v[s_var])
        # a teleporting vehicle reports a 2-D INVALID position (a short tuple) or an INVALID speed
        if len(flat) == 5 * n and (n == 0 or min(flat[4::5]) > INVALID_BELOW):
            rows = np.array(flat, dtype=np.float64)
        else:  # leave vehicles that are off the network (teleporting) out of this tick
            good = [(k, v) for k, v in res.items()
                    if len(v[p_var]) == 3 and v[p_var][0] > INVALID_BELOW and v[s_var] > INVALID_BELOW]
            keys = [k for k, _ in good]
            n = len(keys)
            rows = np.array([tuple(v[p_var]) + (v[a_var], v[s_var]) for _, v in good], dtype=np.float64)
        # per row (x, y, z, angle, speed) -> (x - ox, oy - y, z, angle + 90, speed): the net offset
        # off, SUMO (right-handed) -> CARLA (left-handed), SUMO angle (cw from north) -> cw from +x;
        # the same values as subtracting and negating one column at a time (in fewer numpy calls),
        # written straight into (5, n) C-ordered columns
        cols = np.multiply(rows.reshape(n, 5).T, _COL_SIGN, order="C")
        cols += self._shift
        yaw = cols[3]
        np.remainder(yaw, 360.0, out=yaw)  # CARLA yaw in [-180, 180)
        yaw -= 180.0
        return keys, cols, self.rsus.assign(cols[0], cols[1])
