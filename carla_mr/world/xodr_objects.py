"""OpenDRIVE ``<object>`` elements (poles, buildings, crosswalks, barriers, ...) with world poses.

Every ``<road>``'s ``<objects><object>`` is read and placed on the road's reference line
(``<planView>``: line, arc, spiral, poly3 and paramPoly3 geometries; ``<elevationProfile>``
for heights). ``<objectReference>`` elements are not placed, only counted. Lateral profiles
(superelevation) and an object's pitch and roll are ignored.

- position: the reference line at ``s``, ``t`` metres to its left (OpenDRIVE), ``zOffset``
  metres above the road's elevation there;
- heading: the reference line's heading at ``s`` plus the object's ``hdg``;
- ``<repeat>``: with ``distance > 0``, one instance every ``distance`` metres from the
  repeat's ``s`` over its ``length`` (``floor(length / distance) + 1`` instances); with
  ``distance = 0`` (a continuous object such as a guard rail) pieces of at most
  :data:`CONTINUOUS_STEP_M` along the road, each as long as its piece and heading along the
  road. ``tStart/tEnd``, ``zOffsetStart/End``, ``widthStart/End``, ``heightStart/End``,
  ``lengthStart/End`` and ``radiusStart/End`` are interpolated linearly along the repeat.
  The repeated instances replace the object itself;
- ``<outline>`` (OpenDRIVE 1.4, one per object) and ``<outlines><outline>`` (1.5+, one row
  per outline): ``cornerLocal`` (``u`` along the object's heading, ``v`` to its left, ``z``
  above the object's origin, ``height``) or ``cornerRoad`` (``s``, ``t``, ``dz`` above the
  road's elevation, ``height``; shifted along ``s`` with the instance for repeated objects).

Everything returned is in CARLA's world frame (left-handed: x east, y south, z up; yaw in
degrees, clockwise seen from above): ``y_carla = -y_odr`` and ``yaw_carla = -hdg_odr``, as
libcarla does for its waypoints and landmarks.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

from carla_mr.errors import InputError
from carla_mr.world.opendrive import parse_xodr

#: Longest piece (metres) a continuous repeated object (``<repeat distance="0">``) is cut into.
CONTINUOUS_STEP_M = 2.0
#: Gauss-Legendre nodes for the spiral's position integrals (exact to well under 1 mm on CARLA's spirals).
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


@dataclass
class XodrObjects:
    """The placed objects of a map, one row per instance (a repeat gives several rows).

    Per-row arrays (N,): ``road_id``, ``object_id``, ``name``, ``type`` (str, the attributes
    as written; ``type`` may be ``"-1"`` or empty), ``s``, ``t`` (metres, road coordinates),
    ``x``, ``y``, ``z`` (metres, CARLA frame; ``z`` is the object's origin: road elevation plus
    ``zOffset``), ``yaw`` (degrees, CARLA frame: the reference heading plus ``hdg``),
    ``length`` (metres along ``yaw``), ``width`` (metres across), ``height``, ``radius``
    (metres; 0 where the map gives none).

    Outlines: ``corners`` (M, 3) metres in the CARLA frame (each corner's base),
    ``corner_height`` (M,) metres; row ``i``'s corners are ``corners[outline_start[i]:
    outline_start[i + 1]]`` (``outline_start`` is (N + 1,); empty for rows without outline).
    ``references`` counts the ``<objectReference>`` elements, which are not placed.
    """

    road_id: np.ndarray
    object_id: np.ndarray
    name: np.ndarray
    type: np.ndarray
    s: np.ndarray
    t: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    yaw: np.ndarray
    length: np.ndarray
    width: np.ndarray
    height: np.ndarray
    radius: np.ndarray
    outline_start: np.ndarray
    corners: np.ndarray
    corner_height: np.ndarray
    references: int = 0

    def __len__(self) -> int:
        return len(self.x)

    def outline(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``i``'s outline corners (K, 3) and corner heights (K,) in metres (K = 0 without one)."""
        a, b = int(self.outline_start[i]), int(self.outline_start[i + 1])
        return self.corners[a:b], self.corner_height[a:b]


# -- the reference line ------------------------------------------------------------------------

def _f(el: ET.Element, key: str, default: float = 0.0) -> float:
    """A float attribute (``default`` when absent or empty); InputError when not a number."""
    v = el.get(key)
    if v is None or v.strip() == "":
        return default
    try:
        return float(v)
    except ValueError:
        raise InputError(f"<{el.tag} {key}={v!r}> is not a number", field=key) from None


def _arc_local(ds: np.ndarray, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Position (u, v) and heading change (radians) ``ds`` metres along an arc of curvature ``k`` (1/m)."""
    if abs(k) < 1e-12:
        return ds, np.zeros_like(ds), np.zeros_like(ds)
    return np.sin(k * ds) / k, (1.0 - np.cos(k * ds)) / k, k * ds


def _spiral_local(ds: np.ndarray, k0: float, k1: float, length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clothoid from curvature ``k0`` to ``k1`` (1/m) over ``length`` metres, ``ds`` metres in."""
    rate = (k1 - k0) / length if length > 0 else 0.0
    u = ds[:, None] * (_GL_X[None, :] + 1.0) / 2.0
    th = k0 * u + 0.5 * rate * u * u
    half = ds / 2.0
    u_end = (np.cos(th) * _GL_W).sum(axis=1) * half
    v_end = (np.sin(th) * _GL_W).sum(axis=1) * half
    return u_end, v_end, k0 * ds + 0.5 * rate * ds * ds


def _poly3_local(ds: np.ndarray, a: float, b: float, c: float, d: float,
                 length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cubic ``v = a + b u + c u^2 + d u^3`` reached ``ds`` metres of arc length along it."""
    u = np.linspace(0.0, max(length, 1e-6), 2001)
    dv = b + 2 * c * u + 3 * d * u * u
    seg = np.sqrt(1.0 + dv * dv)
    arc = np.concatenate([[0.0], np.cumsum((seg[1:] + seg[:-1]) / 2 * np.diff(u))])
    uu = np.interp(ds, arc, u)
    return uu, a + b * uu + c * uu ** 2 + d * uu ** 3, np.arctan(b + 2 * c * uu + 3 * d * uu * uu)


def _param_poly3_local(ds: np.ndarray, g: ET.Element, length: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parametric cubic ``u(p), v(p)`` (``p`` in [0, 1] for pRange ``normalized``, [0, length]
    for ``arcLength``) reached ``ds`` metres of arc length along it."""
    cu = np.array([_f(g, k) for k in ("aU", "bU", "cU", "dU")])
    cv = np.array([_f(g, k) for k in ("aV", "bV", "cV", "dV")])
    p_end = 1.0 if g.get("pRange", "normalized") == "normalized" else max(length, 1e-6)
    grid = np.linspace(0.0, p_end, 2001)
    speed = np.hypot(np.polyval(np.polyder(cu[::-1]), grid), np.polyval(np.polyder(cv[::-1]), grid))
    arc = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2 * np.diff(grid))])
    p = np.interp(ds, arc, grid) if arc[-1] > 0 else np.zeros_like(ds)
    u, v = np.polyval(cu[::-1], p), np.polyval(cv[::-1], p)
    du, dv = np.polyval(np.polyder(cu[::-1]), p), np.polyval(np.polyder(cv[::-1]), p)
    return u, v, np.arctan2(dv, du)


def _geometry_local(g: ET.Element, ds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, heading change) of one ``<geometry>`` ``ds`` metres in, in its own frame (metres, radians)."""
    length = _f(g, "length")
    kind = next((c for c in g), None)
    tag = kind.tag if kind is not None else "line"
    if tag == "arc":
        return _arc_local(ds, _f(kind, "curvature"))
    if tag == "spiral":
        return _spiral_local(ds, _f(kind, "curvStart"), _f(kind, "curvEnd"), length)
    if tag == "poly3":
        return _poly3_local(ds, *(_f(kind, k) for k in "abcd"), length)
    if tag == "paramPoly3":
        return _param_poly3_local(ds, kind, length)
    return ds, np.zeros_like(ds), np.zeros_like(ds)


def reference_pose(road: ET.Element, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The road's reference line at ``s`` (metres): x, y (metres) and heading (radians), all
    in the OpenDRIVE frame (right-handed, counter-clockwise heading)."""
    s = np.atleast_1d(np.asarray(s, float))
    geoms = road.findall("planView/geometry")
    if not geoms:
        raise InputError(f"road {road.get('id')} has no <planView><geometry>", field="planView")
    starts = np.array([_f(g, "s") for g in geoms])
    which = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(geoms) - 1)
    x, y, h = np.zeros_like(s), np.zeros_like(s), np.zeros_like(s)
    for k in np.unique(which):
        g, m = geoms[k], which == k
        u, v, dh = _geometry_local(g, np.maximum(s[m] - starts[k], 0.0))
        h0 = _f(g, "hdg")
        c, sn = math.cos(h0), math.sin(h0)
        x[m] = _f(g, "x") + c * u - sn * v
        y[m] = _f(g, "y") + sn * u + c * v
        h[m] = h0 + dh
    return x, y, h


def elevation(road: ET.Element, s: np.ndarray) -> np.ndarray:
    """The road's elevation (metres) at ``s`` (metres) from ``<elevationProfile>``; 0 without one."""
    s = np.atleast_1d(np.asarray(s, float))
    rows = road.findall("elevationProfile/elevation")
    if not rows:
        return np.zeros_like(s)
    starts = np.array([_f(e, "s") for e in rows])
    k = np.clip(np.searchsorted(starts, s, side="right") - 1, 0, len(rows) - 1)
    coef = np.array([[_f(e, c) for c in "abcd"] for e in rows])[k]
    ds = s - starts[k]
    return coef[:, 0] + coef[:, 1] * ds + coef[:, 2] * ds ** 2 + coef[:, 3] * ds ** 3


def road_points(road: ET.Element, s: np.ndarray,
                t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Road coordinates (s, t metres) to OpenDRIVE x, y, elevation (metres) and the reference
    heading (radians) at ``s``."""
    s = np.atleast_1d(np.asarray(s, float))
    t = np.broadcast_to(np.asarray(t, float), s.shape)
    x, y, h = reference_pose(road, s)
    return x - np.sin(h) * t, y + np.cos(h) * t, elevation(road, s), h


# -- objects -----------------------------------------------------------------------------------

@dataclass
class _Instance:
    """One placed object in road coordinates (metres, radians) before the frame change."""

    s: float
    t: float
    z_offset: float
    hdg: float
    length: float
    width: float
    height: float
    radius: float
    ds: float = 0.0  # how far along s this instance lies from the object's own s (cornerRoad shift)


def _base_instance(obj: ET.Element) -> _Instance:
    return _Instance(_f(obj, "s"), _f(obj, "t"), _f(obj, "zOffset"), _f(obj, "hdg"), _f(obj, "length"),
                     _f(obj, "width"), _f(obj, "height"), _f(obj, "radius"))


def _lerp(rep: ET.Element, key: str, default: float, frac: float) -> float:
    a = _f(rep, key + "Start", default)
    return a + (_f(rep, key + "End", a) - a) * frac


def _repeat_instances(rep: ET.Element, base: _Instance, road_length: float) -> list[_Instance]:
    """The instances of one ``<repeat>`` (see the module notes)."""
    s0 = _f(rep, "s", base.s)
    length = max(min(_f(rep, "length"), max(road_length - s0, 0.0)) if road_length > 0 else _f(rep, "length"), 0.0)
    distance = _f(rep, "distance")
    if distance > 0:
        offsets = np.arange(int(math.floor(length / distance + 1e-9)) + 1) * distance
        pieces = [(float(o), None) for o in offsets]
    else:
        n = max(int(math.ceil(length / CONTINUOUS_STEP_M - 1e-9)), 1)
        step = length / n
        pieces = [((k + 0.5) * step, step) for k in range(n)]
    out = []
    for off, piece in pieces:
        frac = off / length if length > 0 else 0.0
        out.append(_Instance(s0 + off, _lerp(rep, "t", base.t, frac), _lerp(rep, "zOffset", base.z_offset, frac),
                             0.0 if piece is not None else base.hdg,
                             piece if piece is not None else _lerp(rep, "length", base.length, frac),
                             _lerp(rep, "width", base.width, frac), _lerp(rep, "height", base.height, frac),
                             _lerp(rep, "radius", base.radius, frac), s0 + off - base.s))
    return out


def _instances(obj: ET.Element, road_length: float) -> list[_Instance]:
    """The object itself, or its ``<repeat>``s' instances when it has any."""
    base = _base_instance(obj)
    reps = obj.findall("repeat")
    if not reps:
        return [base]
    return [inst for rep in reps for inst in _repeat_instances(rep, base, road_length)]


def _outlines(obj: ET.Element) -> list[ET.Element]:
    """The object's ``<outline>`` (1.4) and ``<outlines><outline>`` (1.5+) elements."""
    return obj.findall("outline") + obj.findall("outlines/outline")


def _outline_corners(road: ET.Element, outline: ET.Element, inst: _Instance, ox: float, oy: float, oz: float,
                     yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """One outline's corners (K, 3) in the OpenDRIVE frame and their heights (K,), metres.
    ``ox, oy, oz`` is the instance's origin and ``yaw`` its heading (radians, OpenDRIVE)."""
    local = outline.findall("cornerLocal")
    if local:
        u = np.array([_f(c, "u") for c in local])
        v = np.array([_f(c, "v") for c in local])
        z = np.array([_f(c, "z") for c in local])
        c, sn = math.cos(yaw), math.sin(yaw)
        xyz = np.column_stack([ox + c * u - sn * v, oy + sn * u + c * v, oz + z])
        return xyz, np.array([_f(c, "height") for c in local])
    road_c = outline.findall("cornerRoad")
    if not road_c:
        return np.zeros((0, 3)), np.zeros(0)
    s = np.array([_f(c, "s") for c in road_c]) + inst.ds
    x, y, z, _ = road_points(road, s, np.array([_f(c, "t") for c in road_c]))
    dz = np.array([_f(c, "dz") for c in road_c])
    return np.column_stack([x, y, z + dz]), np.array([_f(c, "height") for c in road_c])


def _road_rows(road: ET.Element) -> list[dict]:
    """Every placed row (instance x outline) of one road's objects, OpenDRIVE frame."""
    rows = []
    road_length = _f(road, "length")
    for obj in road.findall("objects/object"):
        for inst in _instances(obj, road_length):
            x, y, z, h = road_points(road, [inst.s], [inst.t])
            yaw = float(h[0]) + inst.hdg
            origin = (float(x[0]), float(y[0]), float(z[0]) + inst.z_offset)
            row = {"road_id": road.get("id", ""), "object_id": obj.get("id", ""), "name": obj.get("name", ""),
                   "type": obj.get("type", ""), "inst": inst, "xyz": origin, "yaw": yaw}
            outlines = _outlines(obj)
            if not outlines:
                rows.append({**row, "corners": np.zeros((0, 3)), "heights": np.zeros(0)})
            for ol in outlines:
                xyz, hts = _outline_corners(road, ol, inst, *origin, yaw)
                rows.append({**row, "corners": xyz, "heights": hts})
    return rows


def _to_carla(rows: list[dict], references: int) -> XodrObjects:
    """Rows in the OpenDRIVE frame -> :class:`XodrObjects` in CARLA's frame (y and yaw flipped)."""
    def col(fn, dtype=float):
        return np.array([fn(r) for r in rows], dtype=dtype).reshape(len(rows))

    sizes = [len(r["corners"]) for r in rows]
    corners = np.concatenate([r["corners"] for r in rows]) if rows else np.zeros((0, 3))
    corners = corners.reshape(-1, 3) * (1.0, -1.0, 1.0)
    yaw = -np.degrees(col(lambda r: r["yaw"]))
    return XodrObjects(
        road_id=col(lambda r: r["road_id"], object), object_id=col(lambda r: r["object_id"], object),
        name=col(lambda r: r["name"], object), type=col(lambda r: r["type"], object),
        s=col(lambda r: r["inst"].s), t=col(lambda r: r["inst"].t),
        x=col(lambda r: r["xyz"][0]), y=-col(lambda r: r["xyz"][1]), z=col(lambda r: r["xyz"][2]),
        yaw=(yaw + 180.0) % 360.0 - 180.0,
        length=col(lambda r: r["inst"].length), width=col(lambda r: r["inst"].width),
        height=col(lambda r: r["inst"].height), radius=col(lambda r: r["inst"].radius),
        outline_start=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        corners=corners, corner_height=np.concatenate([r["heights"] for r in rows]) if rows else np.zeros(0),
        references=references)


def read_objects(text: str, *, source: str = "xodr") -> XodrObjects:
    """Every ``<object>`` of OpenDRIVE ``text`` placed in CARLA's frame (see the module notes).
    InputError for text that is not OpenDRIVE or a malformed number."""
    root = parse_xodr(text, source=source).getroot()
    rows: list[dict] = []
    references = 0
    for road in root.findall("road"):
        references += len(road.findall("objects/objectReference"))
        if road.find("objects/object") is not None:
            rows += _road_rows(road)
    return _to_carla(rows, references)
