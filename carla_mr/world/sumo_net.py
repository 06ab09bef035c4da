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
            os.replace(tmp, net_path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return SumoNet(path=net_path, net_offset=read_net_offset(net_path), key=key)
