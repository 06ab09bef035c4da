"""OpenDRIVE (.xodr) helpers: list roads and lanes, and inject static signs as ``<signal>``.

Only the parts of OpenDRIVE this project needs are read: each ``<road>``'s id, length,
junction id and the driving lanes of its first and last lane sections (widths at the
section start). Injected signs are ``<signal>`` elements on non-junction roads, always with a
``<validity fromLane=.. toLane=..>`` where fromLane <= toLane (libcarla rejects the reverse),
placed at the right-hand edge of the lanes they govern:

- orientation ``+`` governs traffic driving in +s (right lanes, negative ids), placed at
  ``t = -(width of the right lanes) - margin``;
- orientation ``-`` governs traffic driving in -s (left lanes, positive ids), placed at
  ``t = +(width of the left lanes) + margin``.

Distances are metres along (s) and across (t, left positive) the road reference line.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Iterable, Optional

import numpy as np

from carla_mr.errors import InputError

#: OpenDRIVE type code, default subtype, face width and height (metres), face-centre height
#: above the road (metres) for each static sign kind the project injects.
SIGN_KINDS: dict[str, dict] = {
    "stop": {"type": "206", "subtype": "-1", "width": 0.75, "height": 0.75, "z": 2.0},
    "yield": {"type": "205", "subtype": "-1", "width": 0.90, "height": 0.80, "z": 2.0},
    "speed_limit": {"type": "274", "subtype": None, "width": 0.60, "height": 0.60, "z": 2.0},
    "no_entry": {"type": "267", "subtype": "-1", "width": 0.60, "height": 0.60, "z": 2.0},
    "priority_road": {"type": "306", "subtype": "-1", "width": 0.60, "height": 0.60, "z": 2.0},
    "parking": {"type": "314", "subtype": "-1", "width": 0.60, "height": 0.60, "z": 2.0},
    "warning": {"type": "101", "subtype": "-1", "width": 0.90, "height": 0.80, "z": 2.0},
    "mandatory_arrow": {"type": "209", "subtype": "-1", "width": 0.60, "height": 0.60, "z": 2.0},
}
DRIVING_TYPES = {"driving"}


@dataclass
class RoadInfo:
    """One OpenDRIVE road: id, length (m), junction id (-1 = not in a junction) and the
    driving lanes at its start (``right``: ids < 0, ``left``: ids > 0) with their widths (m)."""

    id: str
    length: float
    junction: str
    right: dict[int, float] = field(default_factory=dict)
    left: dict[int, float] = field(default_factory=dict)
    right_end: dict[int, float] = field(default_factory=dict)
    left_end: dict[int, float] = field(default_factory=dict)
    element: Optional[ET.Element] = field(default=None, repr=False)

    @property
    def in_junction(self) -> bool:
        return self.junction not in ("-1", "", None)


def parse_xodr(text: str, *, source: str = "xodr") -> ET.ElementTree:
    """Parse OpenDRIVE text into an ElementTree, or raise InputError naming the source."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"not valid OpenDRIVE XML: {exc}", source=source) from exc
    if root.tag != "OpenDRIVE":
        raise InputError(f"the root element is <{root.tag}>, expected <OpenDRIVE>", source=source)
    return ET.ElementTree(root)


def _lane_widths(section: ET.Element, side: str) -> dict[int, float]:
    out: dict[int, float] = {}
    node = section.find(side)
    if node is None:
        return out
    for lane in node.findall("lane"):
        if lane.get("type", "driving") not in DRIVING_TYPES:
            continue
        w = lane.find("width")
        width = float(w.get("a", "3.5")) if w is not None else 3.5
        out[int(lane.get("id"))] = width if width > 0.5 else 3.5
    return out


def _all_lane_widths(section: ET.Element, side: str) -> float:
    """Total width of every lane on one side (driving, sidewalk, shoulder...) at the section start."""
    node = section.find(side)
    if node is None:
        return 0.0
    total = 0.0
    for lane in node.findall("lane"):
        w = lane.find("width")
        total += float(w.get("a", "0")) if w is not None else 0.0
    return total


def roads(tree: ET.ElementTree) -> list[RoadInfo]:
    """Every road of the map with its driving lanes at the start and at the end."""
    out = []
    for road in tree.getroot().findall("road"):
        info = RoadInfo(id=road.get("id"), length=float(road.get("length", "0")), junction=road.get("junction", "-1"),
                        element=road)
        sections = road.findall("lanes/laneSection")
        if sections:
            info.right = _lane_widths(sections[0], "right")
            info.left = _lane_widths(sections[0], "left")
            info.right_end = _lane_widths(sections[-1], "right")
            info.left_end = _lane_widths(sections[-1], "left")
        out.append(info)
    return out


@dataclass
class SignPlacement:
    """A sign to inject: kind, value (km/h for speed limits), road id, s (m), orientation."""

    kind: str
    road_id: str
    s: float
    orientation: str = "+"
    value: Optional[float] = None
    id: Optional[str] = None


def candidate_roads(tree: ET.ElementTree, min_length: float = 12.0) -> list[RoadInfo]:
    """Non-junction roads long enough for a sign, with at least one driving lane."""
    return [r for r in roads(tree) if not r.in_junction and r.length >= min_length and (r.right or r.left)]


def _signal_t(road: RoadInfo, orientation: str, s: float, margin: float = 0.6) -> tuple[float, int, int]:
    """Lateral offset (m) and validity lanes for a sign on ``road`` governing ``orientation``."""
    at_end = s > road.length / 2
    if orientation == "+":
        lanes = road.right_end if at_end and road.right_end else road.right
        if not lanes:
            raise InputError(f"road {road.id} has no driving lane in +s direction; use orientation '-'",
                             field="signs.inject")
        section = road.element.findall("lanes/laneSection")
        width = _all_lane_widths(section[-1] if at_end else section[0], "right") if section else sum(lanes.values())
        return -(max(width, sum(lanes.values())) + margin), min(lanes), max(lanes)
    lanes = road.left_end if at_end and road.left_end else road.left
    if not lanes:
        raise InputError(f"road {road.id} has no driving lane in -s direction; use orientation '+'",
                         field="signs.inject")
    section = road.element.findall("lanes/laneSection")
    width = _all_lane_widths(section[-1] if at_end else section[0], "left") if section else sum(lanes.values())
    return max(width, sum(lanes.values())) + margin, min(lanes), max(lanes)


def _existing_signal_ids(tree: ET.ElementTree) -> set[str]:
    return {s.get("id") for s in tree.getroot().iter("signal")}


def inject_signs(tree: ET.ElementTree, placements: Iterable[SignPlacement]) -> list[str]:
    """Add each placement as a ``<signal>`` (with ``<validity>``) to its road. Returns the ids.

    Raises InputError for an unknown road, a junction road, ``s`` outside the road, or a
    speed limit without a value.
    """
    by_id = {r.id: r for r in roads(tree)}
    used = _existing_signal_ids(tree)
    next_num = 1
    ids = []
    for p in placements:
        if p.kind not in SIGN_KINDS:
            raise InputError(f"unknown sign kind '{p.kind}'; expected one of {sorted(SIGN_KINDS)}",
                             field="signs.inject.kind")
        road = by_id.get(str(p.road_id))
        if road is None:
            raise InputError(f"road {p.road_id} is not in the map", field="signs.inject.road_id")
        if road.in_junction:
            raise InputError(f"road {p.road_id} lies in junction {road.junction}; signs go on non-junction roads",
                             field="signs.inject.road_id")
        if not (0.0 <= p.s <= road.length):
            raise InputError(f"s={p.s} is outside road {p.road_id} (length {road.length:.2f} m)",
                             field="signs.inject.s")
        if p.orientation not in ("+", "-"):
            raise InputError("orientation must be '+' or '-'", field="signs.inject.orientation")
        spec = SIGN_KINDS[p.kind]
        subtype = spec["subtype"]
        value = p.value
        if p.kind == "speed_limit":
            if value is None or value <= 0:
                raise InputError("a speed_limit sign needs a positive value in km/h", field="signs.inject.value")
            subtype = str(int(round(value)))
        t, lo, hi = _signal_t(road, p.orientation, p.s)
        sid = p.id
        if sid is None:
            while f"cmr{next_num}" in used:
                next_num += 1
            sid = f"cmr{next_num}"
        if sid in used:
            raise InputError(f"signal id '{sid}' is already used in the map", field="signs.inject.id")
        used.add(sid)
        signals = road.element.find("signals")
        if signals is None:
            signals = ET.Element("signals")
            # OpenDRIVE order: ... lanes, objects, signals, surface, railroad
            children = list(road.element)
            pos = len(children)
            for i, ch in enumerate(children):
                if ch.tag in ("surface", "railroad"):
                    pos = i
                    break
            road.element.insert(pos, signals)
        attrs = {
            "name": f"carla_mr_{p.kind}", "id": sid, "s": f"{p.s:.4f}", "t": f"{t:.4f}",
            # libcarla's landmark yaw is the road heading + hOffset (it ignores orientation); like
            # CARLA's towns, make it the governed traffic's heading: + pi for orientation '-'
            "zOffset": f"{spec['z'] - spec['height'] / 2:.4f}",
            "hOffset": "0.0" if p.orientation == "+" else f"{math.pi:.8f}", "roll": "0.0", "pitch": "0.0",
            "orientation": p.orientation, "dynamic": "no", "country": "OpenDRIVE", "type": spec["type"],
            "subtype": subtype, "value": f"{value if value is not None else -1:.4f}",
            "unit": "km/h" if p.kind == "speed_limit" else "", "text": "",
            "height": f"{spec['height']:.4f}", "width": f"{spec['width']:.4f}",
        }
        sig = ET.SubElement(signals, "signal", attrs)
        ET.SubElement(sig, "validity", {"fromLane": str(lo), "toLane": str(hi)})
        ids.append(sid)
    return ids


def random_placements(tree: ET.ElementTree, count: int, rng: np.random.Generator,
                      kinds: Optional[list[str]] = None, speed_values=(30, 50, 60, 80)) -> list[SignPlacement]:
    """``count`` random static signs on non-junction roads (kind, road, side and s by ``rng``)."""
    cands = candidate_roads(tree)
    if not cands:
        raise InputError("the map has no non-junction road long enough for a sign", field="signs.random_count")
    kinds = kinds or ["stop", "yield", "speed_limit", "no_entry", "priority_road", "parking", "warning",
                      "mandatory_arrow"]
    out = []
    for _ in range(count):
        road = cands[int(rng.integers(len(cands)))]
        sides = [o for o, lanes in (("+", road.right), ("-", road.left)) if lanes]
        o = sides[int(rng.integers(len(sides)))]
        s = float(rng.uniform(2.0, road.length - 2.0))
        kind = kinds[int(rng.integers(len(kinds)))]
        value = float(speed_values[int(rng.integers(len(speed_values)))]) if kind == "speed_limit" else None
        out.append(SignPlacement(kind=kind, road_id=road.id, s=s, orientation=o, value=value))
    return out


def to_text(tree: ET.ElementTree) -> str:
    """Serialise the tree back to OpenDRIVE text (UTF-8 declaration included)."""
    body = ET.tostring(tree.getroot(), encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
