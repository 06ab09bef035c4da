"""SUMO networks from OpenDRIVE: ``netconvert`` with a content-hash cache, and the netOffset.

The net for an .xodr is built once and cached under ``$CARLA_MR_CACHE/nets`` (default
``~/.cache/carla_mr/nets``) keyed by the SHA-256 of the xodr text, the netconvert options and
the SUMO version, so an edited map is rebuilt and an unchanged one is reused.

Coordinates: netconvert shifts the map by the net's ``netOffset`` (``sumo_xy = odr_xy +
net_offset``); :mod:`carla_mr.world.coords` maps SUMO -> CARLA with ``x - ox, -(y - oy)``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from carla_mr.errors import InputError, RunError

#: netconvert options for an OpenDRIVE import. Internal shapes follow the xodr's junction
#: roads (so SUMO's junction paths match CARLA's waypoints); no U-turn connections (CARLA
#: maps have no U-turn lanes); normalisation off keeps SUMO's frame equal to the xodr's.
NETCONVERT_OPTIONS = (
    "--opendrive.internal-shapes", "true",
    "--no-turnarounds", "true",
    "--offset.disable-normalization", "true",
    "--junctions.corner-detail", "5",
    "--no-warnings", "true",
)
#: Bumped when the post-processing of a net changes (part of the cache key).
NET_RECIPE = "stop-signs-v1"


def cache_dir() -> Path:
    """The cache root: ``$CARLA_MR_CACHE`` or ``~/.cache/carla_mr``."""
    root = os.environ.get("CARLA_MR_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "carla_mr"


def sumo_binary(name: str) -> str:
    """Path of a SUMO tool (netconvert, netgenerate) from PATH or the eclipse-sumo wheel."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import sumo  # eclipse-sumo wheel

        cand = Path(sumo.SUMO_HOME) / "bin" / name
        if cand.is_file():
            return str(cand)
    except ImportError:
        pass
    raise RunError(f"'{name}' not found: install SUMO (pip install eclipse-sumo) or put it on PATH")


def sumo_version() -> str:
    try:
        out = subprocess.run([sumo_binary("netconvert"), "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class SumoNet:
    """A SUMO net built from an .xodr: its path, netOffset (m) and the cache key."""

    path: Path
    net_offset: tuple[float, float]
    key: str


def read_net_offset(net_path: str | Path) -> tuple[float, float]:
    """The ``<location netOffset="x,y">`` of a SUMO net (metres); (0, 0) if absent."""
    for _, elem in ET.iterparse(str(net_path), events=("start",)):
        if elem.tag == "location":
            ox, oy = (float(v) for v in elem.get("netOffset", "0,0").split(","))
            return ox, oy
        if elem.tag == "edge":
            break
    return 0.0, 0.0


_VERSION: Optional[str] = None


def build_net(xodr: str | Path, *, cache: Optional[Path] = None, extra_options: tuple[str, ...] = ()) -> SumoNet:
    """The SUMO net for an .xodr file, from the cache or built by netconvert.

    Raises InputError when netconvert rejects the map (its message is included).
    """
    global _VERSION
    xodr = Path(xodr)
    if not xodr.is_file():
        raise InputError("map file not found", source=str(xodr))
    if _VERSION is None:
        _VERSION = sumo_version()
    opts = NETCONVERT_OPTIONS + tuple(extra_options)
    h = hashlib.sha256()
    h.update(xodr.read_bytes())
    h.update("\0".join(opts).encode())
    h.update(_VERSION.encode())
    h.update(NET_RECIPE.encode())
    key = h.hexdigest()[:24]
    root = (cache or cache_dir()) / "nets"
    root.mkdir(parents=True, exist_ok=True)
    net_path = root / f"{xodr.stem}-{key}.net.xml"
    if not net_path.is_file():
        fd, tmp = tempfile.mkstemp(prefix=f".{net_path.name}.", suffix=".net.xml", dir=root)
        os.close(fd)
        cmd = [sumo_binary("netconvert"), "--opendrive-files", str(xodr), "-o", tmp, *opts]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0 or not Path(tmp).stat().st_size:
                msg = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
                raise InputError("netconvert could not build a SUMO net: " + " | ".join(msg), source=str(xodr))
            stop_nodes = stop_controlled_nodes(xodr.read_text(encoding="utf-8"), tmp)
            if stop_nodes:
                _patch_node_types(tmp, stop_nodes)
            os.replace(tmp, net_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return SumoNet(path=net_path, net_offset=read_net_offset(net_path), key=key)


# -- stop signs -> SUMO junction types ------------------------------------------------------
#
# netconvert imports traffic lights from OpenDRIVE but not static stop signs. A stop sign
# (type 206) governs the junction its lanes drive into: that junction becomes
# ``priority_stop`` (minor links must stop, then yield) or ``allway_stop`` when every
# approach has one. Junction shapes and lane geometry are unchanged by the patch.

STOP_TYPE = "206"


def _stop_signs(xodr_text: str) -> list[tuple[str, bool]]:
    """(road id, governs +s traffic) for every static stop sign of the map."""
    import xml.etree.ElementTree as ET

    out = []
    root = ET.fromstring(xodr_text)
    for road in root.findall("road"):
        for sig in road.iter("signal"):
            if sig.get("type") != STOP_TYPE or sig.get("dynamic", "no") == "yes":
                continue
            v = sig.find("validity")
            if v is not None:
                forward = int(v.get("fromLane", "-1")) < 0
            else:
                forward = sig.get("orientation", "+") != "-"
            out.append((road.get("id"), forward))
    return out


def _net_graph(net_path: str | Path) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """Non-internal edges {id: (from, to)} and junction types {id: type} of a SUMO net."""
    edges: dict[str, tuple[str, str]] = {}
    nodes: dict[str, str] = {}
    for _, el in ET.iterparse(str(net_path)):
        if el.tag == "edge" and el.get("function") != "internal" and el.get("from"):
            edges[el.get("id")] = (el.get("from"), el.get("to"))
        elif el.tag == "junction" and el.get("type") != "internal":
            nodes[el.get("id")] = el.get("type")
        el.clear()
    return edges, nodes


def stop_controlled_nodes(xodr_text: str, net_path: str | Path) -> dict[str, str]:
    """{SUMO junction id: "priority_stop" | "allway_stop"} for the map's stop signs.

    netconvert names the edges of OpenDRIVE road R ``-R`` (lanes driving +s) and ``R``
    (driving -s), with ``.<s>`` suffixes when a road has several lane sections; the governed
    edge is the last of its chain, and its end node the controlled junction. Signalised
    junctions keep their lights.
    """
    import re

    signs = _stop_signs(xodr_text)
    if not signs:
        return {}
    edges, nodes = _net_graph(net_path)
    by_road: dict[tuple[str, bool], list[str]] = {}
    pat = re.compile(r"^(-?)([^.]+)(\.[0-9.]+)?$")
    for eid in edges:
        m = pat.match(eid)
        if m:
            by_road.setdefault((m.group(2), m.group(1) == "-"), []).append(eid)
    stopped: dict[str, set[str]] = {}
    for road, forward in signs:
        chain = by_road.get((road, forward), [])
        starts = {edges[e][0] for e in chain}
        last = [e for e in chain if edges[e][1] not in starts] or chain
        for e in last:
            node = edges[e][1]
            if nodes.get(node, "").startswith("traffic_light") or node not in nodes:
                continue
            stopped.setdefault(node, set()).add(e)
    out = {}
    for node, stop_edges in stopped.items():
        incoming = {e for e, (_, to) in edges.items() if to == node}
        out[node] = "allway_stop" if incoming <= stop_edges else "priority_stop"
    return out


def _patch_node_types(net_path: str, node_types: dict[str, str]) -> None:
    """Rewrite ``net_path`` in place with netconvert, changing the given junctions' types."""
    from xml.sax.saxutils import quoteattr

    root = Path(net_path).parent
    fd, patch = tempfile.mkstemp(prefix=".stops.", suffix=".nod.xml", dir=root)
    fd2, out = tempfile.mkstemp(prefix=".patched.", suffix=".net.xml", dir=root)
    os.close(fd2)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("<nodes>\n")
            for nid, typ in sorted(node_types.items()):
                fh.write(f"  <node id={quoteattr(nid)} type={quoteattr(typ)}/>\n")
            fh.write("</nodes>\n")
        keep = ("--offset.disable-normalization", "true", "--no-turnarounds", "true", "--no-warnings", "true")
        cmd = [sumo_binary("netconvert"), "-s", str(net_path), "-n", patch, "-o", out, *keep]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            raise RunError("netconvert could not apply the map's stop signs: "
                           + " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:]))
        os.replace(out, net_path)
    finally:
        for p in (patch, out):
            if os.path.exists(p):
                os.unlink(p)
