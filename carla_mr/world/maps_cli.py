"""``carla-mr maps``: build the project's maps, list maps, list a map's landmarks, inject signs."""

from __future__ import annotations

import os
from pathlib import Path

import click

from carla_mr.cli_common import emit, guarded, json_option, log, seed_option
from carla_mr.errors import InputError


@click.group(name="maps")
def maps_group():
    """OpenDRIVE maps: build the project's own, list them, list landmarks, inject signs."""


@maps_group.command("build")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), default=Path("maps"),
              show_default=True, help="Folder the .xodr files are written to.")
@click.option("--only", "only", multiple=True, help="Build only this map (repeatable).")
@seed_option
@json_option
@guarded
def build_cmd(out: Path, only: tuple[str, ...], seed, as_json: bool):
    """Build the project's maps (town grid, arterial) with netconvert and inject static signs.

    The maps are deterministic; --seed is accepted for the CLI convention and unused.
    """
    from carla_mr.world.maps import PROJECT_MAPS, build_project_map

    names = list(only) or list(PROJECT_MAPS)
    unknown = [n for n in names if n not in PROJECT_MAPS]
    if unknown:
        raise InputError(f"unknown map(s) {unknown}; expected some of {sorted(PROJECT_MAPS)}", field="--only")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} is not a folder", field="--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {out}: {exc.strerror or exc}; pick another --out", field="--out") from exc
    results = []
    for n in names:
        log(f"building {n} ...")
        info = build_project_map(n, out)
        os.chmod(info["path"], 0o644)
        results.append(info)
    rows = [(r["name"], r["path"], r["landmarks"]["total"], r["traffic_lights"],
             ", ".join(f"{k}={v}" for k, v in r["landmarks"]["by_type"].items())) for r in results]
    emit({"maps": results}, as_json=as_json, rows=rows,
         columns=("map", "path", "landmarks", "signalised junctions", "by type"))


@maps_group.command("list")
@json_option
@guarded
def list_cmd(as_json: bool):
    """List the .xodr maps found where scenarios look for them (and the project's buildable maps)."""
    from carla_mr.config import map_search_dirs
    from carla_mr.world.maps import PROJECT_MAPS

    seen, found = set(), []
    for d in map_search_dirs(None):
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.xodr")):
            rp = p.resolve()
            if rp in seen:
                continue
            seen.add(rp)
            found.append({"name": p.stem, "path": str(rp), "size_kb": round(rp.stat().st_size / 1024, 1),
                          "project_map": p.stem in PROJECT_MAPS})
    missing = [n for n in PROJECT_MAPS if n not in {f["name"] for f in found}]
    if missing and not as_json:
        log(f"not built yet: {', '.join(missing)} (run 'carla-mr maps build')")
    emit({"maps": found, "not_built": missing}, as_json=as_json,
         rows=[(f["name"], f["path"], f["size_kb"]) for f in found], columns=("map", "path", "KiB"))


def _resolve(map_arg: str) -> Path:
    from carla_mr.config import resolve_map

    return resolve_map(map_arg, None)


@maps_group.command("landmarks")
@click.argument("map_name", metavar="MAP")
@click.option("--all", "show_all", is_flag=True, help="List every sign (id, kind, value, pose), not just counts.")
@json_option
@guarded
def landmarks_cmd(map_name: str, show_all: bool, as_json: bool):
    """A map's landmarks by type (MAP: a path or a bare name like Town01 or mr_town)."""
    from carla_mr.world.maps import landmark_counts, landmarks_to_signs, load_map

    path = _resolve(map_name)
    cmap = load_map(path)
    counts = landmark_counts(cmap)
    signs = landmarks_to_signs(cmap)
    result = {"map": str(path), **counts}
    if show_all or as_json:
        result["signs"] = [
            {"id": str(signs.ids[i]), "kind": str(signs.kind[i]), "odr_type": str(signs.odr_type[i]),
             "value": None if signs.value[i] != signs.value[i] else float(signs.value[i]),
             "x": float(signs.x[i]), "y": float(signs.y[i]), "z": float(signs.z[i]), "yaw": float(signs.yaw[i]),
             "width": float(signs.width[i]), "height": float(signs.height[i]), "road_id": int(signs.road_id[i])}
            for i in range(len(signs))
        ]
    if as_json:
        emit(result, as_json=True)
        return
    if show_all:
        emit(result, as_json=False, rows=[(s["id"], s["kind"], s["odr_type"], s["value"], f"{s['x']:.1f}",
                                           f"{s['y']:.1f}", f"{s['yaw']:.0f}", s["road_id"]) for s in result["signs"]],
             columns=("id", "kind", "type", "value", "x", "y", "yaw", "road"))
    rows = [(k, v) for k, v in counts["by_type"].items()] + [("total", counts["total"]),
                                                             ("unique signs", counts["unique_signs"])]
    emit(result, as_json=False, rows=rows, columns=("type", "count"), title=str(path.name))


def _parse_sign(text: str):
    """``kind:road_id:s[:value][:orientation]`` -> SignPlacement."""
    from carla_mr.world.opendrive import SignPlacement

    parts = text.split(":")
    if len(parts) < 3:
        raise InputError(f"'{text}' must look like kind:road_id:s[:value][:+|-] (e.g. speed_limit:12:30:50)",
                         field="--sign")
    kind, road, s = parts[:3]
    value = None
    orientation = None
    for extra in parts[3:]:
        if extra in ("+", "-"):
            orientation = extra
        elif extra:
            try:
                value = float(extra)
            except ValueError as exc:
                raise InputError(f"'{extra}' in '{text}' is neither a number nor +/-", field="--sign") from exc
    try:
        s_val = float(s)
    except ValueError as exc:
        raise InputError(f"s '{s}' in '{text}' is not a number (metres along the road)", field="--sign") from exc
    return SignPlacement(kind=kind, road_id=road, s=s_val, orientation=orientation or "", value=value)


@maps_group.command("inject")
@click.argument("map_name", metavar="MAP")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The .xodr file to write.")
@click.option("--sign", "signs", multiple=True, help="kind:road_id:s[:value][:+|-], repeatable.")
@click.option("--random", "random_count", type=click.IntRange(0, 10000), default=0,
              help="Also inject this many random static signs on non-junction roads.")
@seed_option
@json_option
@guarded
def inject_cmd(map_name: str, out: Path, signs: tuple[str, ...], random_count: int, seed, as_json: bool):
    """Inject static signs (OpenDRIVE <signal> with <validity>) into any map; verified with libcarla."""
    import numpy as np

    from carla_mr.world.maps import inject_text, landmark_counts, map_from_text
    from carla_mr.world.opendrive import parse_xodr, random_placements, roads

    path = _resolve(map_name)
    if out.resolve() == path.resolve():
        raise InputError("--out must differ from the input map", field="--out")
    text = path.read_text(encoding="utf-8")
    tree = parse_xodr(text, source=str(path))
    by_id = {r.id: r for r in roads(tree)}
    placements = []
    for s in signs:
        p = _parse_sign(s)
        if not p.orientation:
            r = by_id.get(str(p.road_id))
            p.orientation = "+" if r is None or r.right else "-"
        placements.append(p)
    if random_count:
        placements += random_placements(tree, random_count, np.random.default_rng(0 if seed is None else seed))
    if not placements:
        raise InputError("nothing to inject: give --sign kind:road_id:s[:value] and/or --random N", field="--sign")
    new_text, ids = inject_text(text, placements, name=path.stem)
    _write_map(out, new_text)
    counts = landmark_counts(map_from_text(out.stem, new_text))
    emit({"map": str(path), "out": str(out), "injected": len(ids), "ids": ids, "landmarks": counts},
         as_json=as_json, rows=[("input", str(path)), ("output", str(out)), ("injected", len(ids)),
                                ("landmarks", counts["total"])])


def _write_map(out: Path, text: str) -> None:
    """Write the injected map atomically; a folder that does not take it is an InputError on --out."""
    from carla_mr.io import atomic_write_text

    if out.exists() and out.is_dir():
        raise InputError(f"{out} is a folder; give the .xodr file to write", field="--out")
    try:
        atomic_write_text(out, text)
        os.chmod(out, 0o644)
    except OSError as exc:
        raise InputError(f"cannot write {out}: {exc.strerror or exc} (is {out.parent} a writable folder?); "
                         f"pick another --out", field="--out") from exc
