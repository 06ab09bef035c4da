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
from typing import TYPE_CHECKING, Iterable

import numpy as np

from carla_mr.errors import InputError
from carla_mr.world.base import SignTable
from carla_mr.world.coords import wrap_deg
from carla_mr.world.opendrive import SignPlacement, inject_signs, parse_xodr, to_text
from carla_mr.world.sign_geometry import kind_geometry

if TYPE_CHECKING:  # pragma: no cover
    import carla

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
        dw, dh, dz = kind_geometry(k)  # defaults when the map gives none
        w[i] = float(lm.width) if lm.width and lm.width > 0.05 else dw
        h[i] = float(lm.height) if lm.height and lm.height > 0.05 else dh
        # zOffset is the height of the face's lower edge above the road (OpenDRIVE); CARLA's
        # towns carry negative offsets for their props, so fall back to the kind's default.
        zoff = float(lm.z_offset)
        road_z = tf.location.z - zoff
        z[i] = road_z + (zoff + h[i] / 2 if zoff > 0.3 else dz)
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

    Returns (new_text, new_signal_ids). A bad placement, a result libcarla rejects, or a
    landmark count that did not grow by exactly the number injected raises InputError.
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
        # default: 5 m before the end the governed traffic drives towards (s=length for '+', 0 for '-')
        default_s = max(1.0, road.length - 5.0) if orientation == "+" else min(5.0, road.length - 1.0)
        pos = s.s if s.s is not None else default_s
        if pos > road.length:
            raise InputError(f"s={pos} is beyond road {road.id}'s length {road.length:.1f} m",
                             field=f"signs.inject.{i}.s")
        placements.append(SignPlacement(kind=s.kind, road_id=road.id, s=pos, orientation=orientation, value=s.value))
    if spec.random_count:
        placements += random_placements(tree, spec.random_count, rng)
    return inject_text(text, placements, name=name)


# -- the project's own maps ---------------------------------------------------------------------
#
# Built from plain SUMO node/edge descriptions with netconvert, exported to OpenDRIVE with
# ``--opendrive-output`` (traffic lights become dynamic <signal>s), then static signs are
# injected: stop signs on minor approaches to unsignalised junctions, yield signs on others,
# speed limits near the start of roads. Everything is deterministic (no randomness).

GEO_REFERENCE = "+proj=tmerc +lat_0=0 +lon_0=0 +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs"


def _town_layout(n: int = 5, spacing: float = 120.0) -> dict:
    """An n x n town grid: one lane each way at 50 km/h, traffic lights at the inner
    junctions, priority junctions on the border with stop/yield signs on the side streets."""
    nodes, edges = [], []
    tls, minor_stop, minor_yield = set(), set(), set()
    for i in range(n):
        for j in range(n):
            nid = f"n{i}_{j}"
            inner = 0 < i < n - 1 and 0 < j < n - 1
            nodes.append({"id": nid, "x": i * spacing, "y": j * spacing,
                          "type": "traffic_light" if inner else "priority"})
            if inner:
                tls.add(nid)
    for i in range(n):
        for j in range(n):
            for di, dj in ((1, 0), (0, 1)):
                a, b = (i, j), (i + di, j + dj)
                if b[0] >= n or b[1] >= n:
                    continue
                border_road = (dj == 0 and j in (0, n - 1)) or (di == 0 and i in (0, n - 1))
                for u, v in ((a, b), (b, a)):
                    edges.append({"id": f"e{u[0]}_{u[1]}to{v[0]}_{v[1]}", "from": f"n{u[0]}_{u[1]}",
                                  "to": f"n{v[0]}_{v[1]}", "numLanes": 1, "speed": 13.89,
                                  "priority": 3 if border_road else 2})
    # side streets entering a border T-junction: alternate stop and yield
    for e in edges:
        to = e["to"]
        i, j = (int(t) for t in to[1:].split("_"))
        on_border = i in (0, n - 1) or j in (0, n - 1)
        corner = i in (0, n - 1) and j in (0, n - 1)
        if on_border and not corner and e["priority"] == 2:
            (minor_stop if (i + j) % 2 == 0 else minor_yield).add(e["id"])
    return {"nodes": nodes, "edges": edges, "tls": tls, "stop": minor_stop, "yield": minor_yield}


def _arterial_layout(columns: int = 7, spacing: float = 200.0, offset: float = 150.0) -> dict:
    """A 2+2-lane arterial (60 km/h) with signalised junctions every ``spacing`` m, cross
    streets to parallel local streets (1 lane, 40 km/h), stop signs where cross streets meet
    the local streets (yield at every other one)."""
    nodes, edges = [], []
    tls, minor_stop, minor_yield = set(), set(), set()
    rows = {0: -offset, 1: 0.0, 2: offset}
    for c in range(columns):
        for r, y in rows.items():
            nid = f"a{c}_{r}"
            nodes.append({"id": nid, "x": c * spacing, "y": y, "type": "traffic_light" if r == 1 else "priority"})
            if r == 1:
                tls.add(nid)

    def both(u, v, lanes, speed, prio):
        for a, b in ((u, v), (v, u)):
            edges.append({"id": f"{a}to{b}", "from": a, "to": b, "numLanes": lanes, "speed": speed,
                          "priority": prio})

    for c in range(columns - 1):
        both(f"a{c}_1", f"a{c + 1}_1", 2, 16.67, 5)
        both(f"a{c}_0", f"a{c + 1}_0", 1, 11.11, 3)
        both(f"a{c}_2", f"a{c + 1}_2", 1, 11.11, 3)
    for c in range(columns):
        both(f"a{c}_1", f"a{c}_0", 1, 11.11, 2)
        both(f"a{c}_1", f"a{c}_2", 1, 11.11, 2)
    for e in edges:
        if e["priority"] == 2 and e["to"].endswith(("_0", "_2")):
            c = int(e["to"][1:].split("_")[0])
            if 0 < c < columns - 1:
                (minor_stop if c % 2 else minor_yield).add(e["id"])
    return {"nodes": nodes, "edges": edges, "tls": tls, "stop": minor_stop, "yield": minor_yield}


PROJECT_MAPS = {
    "mr_town": {"layout": _town_layout, "speed_kmh": 50, "doc": "5x5 town grid, 120 m blocks, 9 signalised junctions"},
    "mr_arterial": {"layout": _arterial_layout, "speed_kmh": 60,
                    "doc": "1.2 km 2+2-lane arterial, 7 signalised junctions, local streets"},
}


def _xml_nodes_edges(layout: dict) -> tuple[str, str]:
    from xml.sax.saxutils import quoteattr

    def row(tag, d):
        return f"  <{tag} " + " ".join(f"{k}={quoteattr(str(v))}" for k, v in d.items()) + "/>"

    nod = "<nodes>\n" + "\n".join(row("node", n) for n in layout["nodes"]) + "\n</nodes>\n"
    edg = "<edges>\n" + "\n".join(row("edge", e) for e in layout["edges"]) + "\n</edges>\n"
    return nod, edg


def _layout_placements(root, tree, layout: dict) -> list[SignPlacement]:
    """The signs of a project layout on the netconvert-made OpenDRIVE: a stop or yield sign 3 m
    before the end of every road whose SUMO edge the layout marks so, and a speed-limit sign
    (the edge's speed in km/h, rounded to 10) 6 m after the start of every road of 20 m or more.
    Roads are matched to SUMO edges through their junctions (junction name = SUMO node id)."""
    junction_name = {j.get("id"): j.get("name") for j in root.findall("junction")}
    by_nodes = {(e["from"], e["to"]): e["id"] for e in layout["edges"]}
    placements: list[SignPlacement] = []
    from carla_mr.world.opendrive import roads

    for r in roads(tree):
        if r.in_junction:
            continue
        link = r.element.find("link")
        pre = link.find("predecessor") if link is not None else None
        suc = link.find("successor") if link is not None else None
        if pre is None or suc is None:
            continue
        a = junction_name.get(pre.get("elementId"))
        b = junction_name.get(suc.get("elementId"))
        eid = by_nodes.get((a, b))
        if eid is None:
            continue
        lanes = r.right if r.right else r.left
        o = "+" if r.right else "-"
        if not lanes or r.length < 20:
            continue
        end_s = r.length - 3.0 if o == "+" else 3.0
        start_s = 6.0 if o == "+" else r.length - 6.0
        if eid in layout["stop"]:
            placements.append(SignPlacement("stop", r.id, end_s, o))
        elif eid in layout["yield"]:
            placements.append(SignPlacement("yield", r.id, end_s, o))
        edge = next(e for e in layout["edges"] if e["id"] == eid)
        kmh = float(round(edge["speed"] * 3.6 / 10.0) * 10)
        placements.append(SignPlacement("speed_limit", r.id, start_s, o, value=kmh))
    return placements


def build_project_map(name: str, out_dir: str | Path) -> dict:
    """Build one of :data:`PROJECT_MAPS` into ``out_dir/<name>.xodr``; returns its landmark counts.

    netconvert (nodes/edges -> SUMO net -> OpenDRIVE), then signs injected and the result
    verified by re-loading with libcarla.
    """
    import subprocess
    import tempfile
    import xml.etree.ElementTree as ET

    from carla_mr.io import atomic_write_text
    from carla_mr.world.sumo_net import sumo_binary

    if name not in PROJECT_MAPS:
        raise InputError(f"unknown project map '{name}'; expected one of {sorted(PROJECT_MAPS)}", field="name")
    spec = PROJECT_MAPS[name]
    layout = spec["layout"]()
    nod, edg = _xml_nodes_edges(layout)
    with tempfile.TemporaryDirectory(prefix="carla_mr_map_") as tmp:
        t = Path(tmp)
        (t / "m.nod.xml").write_text(nod)
        (t / "m.edg.xml").write_text(edg)
        cmd = [sumo_binary("netconvert"), "-n", str(t / "m.nod.xml"), "-e", str(t / "m.edg.xml"),
               "-o", str(t / "m.net.xml"), "--opendrive-output", str(t / "m.xodr"), "--no-turnarounds", "true",
               "--offset.disable-normalization", "true", "--junctions.corner-detail", "5",
               "--default.junctions.radius", "8", "--no-warnings", "true"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            from carla_mr.errors import RunError

            raise RunError(f"netconvert failed for {name}: {proc.stderr.strip()[-500:]}")
        text = (t / "m.xodr").read_text(encoding="utf-8")
    tree = parse_xodr(text, source=name)
    root = tree.getroot()
    header = root.find("header")
    if header is not None:
        header.set("name", name)
        from carla_mr.world.sumo_net import sumo_version

        header.set("vendor", f"carla_mr ({sumo_version()})")
        header.set("date", "")
        if header.find("geoReference") is None:
            ET.SubElement(header, "geoReference").text = GEO_REFERENCE
    placements = _layout_placements(root, tree, layout)
    base_text = to_text(tree)
    out_text, ids = inject_text(base_text, placements, name=name)
    out = Path(out_dir) / f"{name}.xodr"
    atomic_write_text(out, out_text)
    counts = landmark_counts(map_from_text(name, out_text))
    return {"name": name, "path": str(out), "injected": len(ids), "landmarks": counts,
            "traffic_lights": len(layout["tls"]), "doc": spec["doc"]}
