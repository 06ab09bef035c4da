"""Maps: load any OpenDRIVE file offline with libcarla, read its landmarks as a SignTable, and
inject static signs into a map (verified by re-loading it with ``carla.Map``).

``carla.Map(name, xodr_text)`` is the real libcarla parser from the ``carla`` wheel: it gives
waypoints, topology and landmarks without a server. Landmark transforms from libcarla are
already in CARLA's (left-handed) frame: ``y_carla = -y_odr``; their yaw is the heading of the
traffic the signal governs, so a sign's face points the opposite way (``yaw + 180``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from carla_mr.errors import InputError
from carla_mr.world.base import SignTable
from carla_mr.world.coords import wrap_deg
from carla_mr.world.opendrive import SIGN_KINDS, SignPlacement, inject_signs, parse_xodr, to_text

if TYPE_CHECKING:  # pragma: no cover
    import carla

#: Default face size (width, height in metres) per kind when the map gives none.
FACE_SIZE: dict[str, tuple[float, float]] = {k: (v["width"], v["height"]) for k, v in SIGN_KINDS.items()}
FACE_SIZE.update({"traffic_light": (0.5, 1.2), "other": (0.6, 0.6)})
#: Default face-centre height above the road (m) per kind when the map's is implausible.
FACE_Z: dict[str, float] = {k: v["z"] for k, v in SIGN_KINDS.items()}
FACE_Z.update({"traffic_light": 3.0, "other": 2.0})

KINDS = ("stop", "yield", "speed_limit", "no_entry", "priority_road", "parking", "warning", "mandatory_arrow",
         "traffic_light", "other")


def classify(odr_type: str, is_dynamic: bool = False) -> str:
    """Sign kind for an OpenDRIVE signal type code (German StVO codes, as CARLA uses them).

    206 stop, 205 yield, 274 speed limit, 267 no entry, 306 priority road, 314 parking,
    1xx warning, 209/2xx mandatory arrows (209, 211, 214, 215, 222, 237-245),
    1000001 and any dynamic signal: traffic light; anything else: other.
    """
    t = str(odr_type).strip()
    if is_dynamic or t.startswith("1000"):
        return "traffic_light"
    table = {"206": "stop", "205": "yield", "274": "speed_limit", "267": "no_entry", "306": "priority_road",
             "314": "parking"}
    if t in table:
        return table[t]
    if len(t) == 3 and t.isdigit():
        if t[0] == "1":
            return "warning"
        if t in ("209", "211", "214", "215", "222") or 237 <= int(t) <= 245:
            return "mandatory_arrow"
    return "other"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError("map file not found", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise InputError("not a UTF-8 OpenDRIVE text file", source=str(path)) from exc


_MAP_CACHE: dict[str, "carla.Map"] = {}


def map_from_text(name: str, text: str) -> "carla.Map":
    """A ``carla.Map`` from OpenDRIVE text (cached by content hash; maps are immutable)."""
    import carla

    key = hashlib.sha256(text.encode("utf-8")).hexdigest()
    m = _MAP_CACHE.get(key)
    if m is None:
        if "<OpenDRIVE" not in text[:4096]:
            raise InputError("not an OpenDRIVE file (no <OpenDRIVE> element)", source=name)
        try:
            m = carla.Map(name, text)
        except RuntimeError as exc:  # libcarla raises on malformed maps
            raise InputError(f"libcarla could not parse the map: {exc}", source=name) from exc
        if not m.get_topology():
            raise InputError("the map has no drivable lanes (empty topology)", source=name)
        if len(_MAP_CACHE) > 8:
            _MAP_CACHE.clear()
        _MAP_CACHE[key] = m
    return m


def load_map(path: str | Path) -> "carla.Map":
    """Load an .xodr file offline with libcarla. InputError if missing or unparseable."""
    p = Path(path)
    if not p.is_file():
        raise InputError("map file not found; give a path to an .xodr file", source=str(p))
    return map_from_text(p.stem, _read_text(p))


def landmarks_to_signs(cmap: "carla.Map") -> SignTable:
    """Every physical sign of the map as a SignTable (CARLA frame; face yaw, size, centre height).

    libcarla lists a signal once per road that references it (``<signalReference>``), with the
    same id and pose; the table keeps the first of each id, so ids are unique.
    """
    seen: set[str] = set()
    lms = []
    for lm in cmap.get_all_landmarks():
        if str(lm.id) not in seen:
            seen.add(str(lm.id))
            lms.append(lm)
    n = len(lms)
    ids = np.empty(n, dtype=object)
    kind = np.empty(n, dtype=object)
    odr_type = np.empty(n, dtype=object)
    value = np.full(n, np.nan)
    x, y, z, yaw, w, h = (np.zeros(n) for _ in range(6))
    road = np.zeros(n, dtype=np.int64)
    for i, lm in enumerate(lms):
        k = classify(lm.type, bool(lm.is_dynamic))
        ids[i] = str(lm.id)
        kind[i] = k
        odr_type[i] = str(lm.type)
        if k == "speed_limit":
            v = float(lm.value)
            if not v > 0:
                try:
                    v = float(lm.sub_type)
                except ValueError:
                    v = float("nan")
            value[i] = v if v > 0 else np.nan
        tf = lm.transform
        x[i], y[i] = tf.location.x, tf.location.y
        dw, dh = FACE_SIZE[k]
        w[i] = float(lm.width) if lm.width and lm.width > 0.05 else dw
        h[i] = float(lm.height) if lm.height and lm.height > 0.05 else dh
        # zOffset is the height of the face's lower edge above the road (OpenDRIVE); CARLA's
        # towns carry negative offsets for their props, so fall back to the kind's default.
        zoff = float(lm.z_offset)
        road_z = tf.location.z - zoff
        z[i] = road_z + (zoff + h[i] / 2 if zoff > 0.3 else FACE_Z[k])
        yaw[i] = tf.rotation.yaw + 180.0
        try:
            road[i] = int(lm.road_id)
        except (TypeError, ValueError):
            road[i] = -1
    return SignTable(ids=ids, kind=kind, value=value, odr_type=odr_type, x=x, y=y, z=z,
                     yaw=wrap_deg(yaw), width=w, height=h, road_id=road)


def landmark_counts(cmap: "carla.Map") -> dict:
    """The map's landmarks as libcarla lists them (one per road reference, e.g. 94 in Town01):
    ``{"total": N, "by_type": {kind: count}, "unique_signs": M}`` for a run summary."""
    lms = cmap.get_all_landmarks()
    by: dict[str, int] = {}
    for lm in lms:
        k = classify(lm.type, bool(lm.is_dynamic))
        by[k] = by.get(k, 0) + 1
    return {"total": len(lms), "by_type": dict(sorted(by.items())), "unique_signs": len({str(l.id) for l in lms})}


def inject_text(text: str, placements: Iterable[SignPlacement], *, name: str = "map") -> tuple[str, list[str]]:
    """Inject signs into OpenDRIVE text; verify with libcarla that every new landmark is there.

    Returns (new_text, new_signal_ids). RunError-free: a map libcarla then rejects, or a
    landmark count that did not grow by the number injected, raises InputError.
    """
    placements = list(placements)
    tree = parse_xodr(text, source=name)
    before = len(map_from_text(name, text).get_all_landmarks())
    ids = inject_signs(tree, placements)
    out = to_text(tree)
    m = map_from_text(name, out)
    lms = m.get_all_landmarks()
    found = {str(l.id) for l in lms}
    missing = [i for i in ids if i not in found]
    if missing or len(lms) != before + len(ids):
        raise InputError(f"libcarla did not load every injected sign (missing {missing[:5]}, "
                         f"{len(lms)} landmarks, expected {before + len(ids)})", source=name)
    return out, ids


def inject_file(src: str | Path, out: str | Path, placements: Iterable[SignPlacement]) -> list[str]:
    """Inject signs into the map at ``src`` and write the result atomically to ``out``."""
    from carla_mr.io import atomic_write_text

    src = Path(src)
    text, ids = inject_text(_read_text(src), placements, name=src.stem)
    atomic_write_text(out, text)
    return ids


def signs_for_scenario(text: str, spec, seed: int, *, name: str = "map") -> tuple[str, list[str]]:
    """Apply a scenario's ``signs`` section (explicit + random) to OpenDRIVE text."""
    from carla_mr.world.opendrive import candidate_roads, random_placements

    if not spec.inject and not spec.random_count:
        return text, []
    tree = parse_xodr(text, source=name)
    rng = np.random.default_rng(seed)
    cands = candidate_roads(tree)
    placements: list[SignPlacement] = []
    for i, s in enumerate(spec.inject):
        if s.road_id is None:
            if not cands:
                raise InputError("the map has no non-junction road for signs", field=f"signs.inject.{i}")
            road = cands[int(rng.integers(len(cands)))]
        else:
            road = next((r for r in cands if r.id == str(s.road_id)), None)
            if road is None:
                raise InputError(f"road {s.road_id} is not a non-junction road of the map (at least 12 m long)",
                                 field=f"signs.inject.{i}.road_id")
        orientation = "+" if road.right else "-"
        pos = s.s if s.s is not None else max(1.0, road.length - 5.0)
        if pos > road.length:
            raise InputError(f"s={pos} is beyond road {road.id}'s length {road.length:.1f} m",
                             field=f"signs.inject.{i}.s")
        placements.append(SignPlacement(kind=s.kind, road_id=road.id, s=pos, orientation=orientation, value=s.value))
    if spec.random_count:
        placements += random_placements(tree, spec.random_count, rng)
    return inject_text(text, placements, name=name)
