"""Sharded dataset recording: one world per shard, each on its own Ray actor or one after another.

:func:`record_shards` records ``worlds`` shards of a dataset, shard ``i`` into
``OUT/shard{i:03d}`` with seed ``seed + i`` (see :func:`shard_plan`), each on its own Ray
actor (one process per world: libsumo runs one simulation per process) or one after another
here, then merges them: ``OUT/manifest.json`` (format :data:`SHARDED_FORMAT`) and
``OUT/annotations.json`` (COCO with re-numbered image and annotation ids). Results never
depend on where the shards ran.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from carla_mr.errors import InputError, RunError
from carla_mr.dataset.recorder import record
from carla_mr.scale import ray_get, ray_session

SHARDED_FORMAT = "carla_mr.dataset.sharded/1"
SEED_RULE = "shard i records with seed + i"


@dataclass(frozen=True)
class Shard:
    """One world's share of a sharded recording."""

    index: int
    dir: str  # relative to the dataset root: shard000, shard001, ...
    seed: int
    scenario: Any  # the Scenario this world runs (seed, CARLA server, absolute paths)
    carla: Optional[str] = None  # HOST:PORT of its CARLA server (backend carla)


def _absolute(path: Optional[str], base: Optional[str] = None) -> Optional[str]:
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute():
        for root in ([Path(base).resolve().parent] if base else []) + [Path.cwd()]:
            if (root / p).exists():
                return str((root / p).resolve())
        return str(p.resolve())
    return str(p)


def shard_plan(scenario, *, worlds: int, seed: Optional[int] = None,
               carla_hosts: Optional[list[tuple[str, int]]] = None, cfg=None) -> list[Shard]:
    """The shards of a recording: shard ``i`` runs ``scenario`` with seed ``seed + i`` (``seed``
    defaults to the scenario's) into ``shard{i:03d}``; with ``carla_hosts`` (backend carla) it
    talks to server ``i`` with traffic-manager port ``carla.tm_port + i`` (actors may share a
    node). File paths are made absolute so a worker in any directory finds them. The same
    plan serves the local and the Ray run, so both give the same files."""
    if not isinstance(worlds, int) or worlds < 1:
        raise InputError(f"must be a positive integer, got {worlds!r}", field="--worlds")
    hosts = list(carla_hosts or [])
    if hosts:
        if scenario.backend != "carla":
            raise InputError("CARLA servers need the carla backend; add --set backend=carla (and a CARLA town "
                             "as map)", field="--carla-hosts")
        if len(hosts) != worlds:
            raise InputError(f"gives {len(hosts)} server(s) for {worlds} world(s); give one HOST:PORT per world "
                             f"(or leave --worlds out)", field="--carla-hosts")
    base = int(scenario.seed if seed is None else seed)
    cfg = cfg or scenario.recorder
    cfg = cfg.model_copy(update={"texture_dir": _absolute(cfg.texture_dir, scenario.source_path),
                                 "genai_model": _absolute(cfg.genai_model, scenario.source_path)})
    upd: dict[str, Any] = {"recorder": cfg}
    if scenario.backend == "embedded":
        upd["map"] = str(scenario.resolved_map_path().resolve())
    shards = []
    for i in range(worlds):
        s = base + i
        u = dict(upd, seed=s)
        carla = None
        if hosts:
            h, p = hosts[i]
            u["carla"] = scenario.carla.model_copy(update={"host": h, "port": p,
                                                           "tm_port": min(65535, scenario.carla.tm_port + i)})
            carla = f"{h}:{p}"
        shards.append(Shard(i, f"shard{i:03d}", s, scenario.model_copy(update=u), carla))
    return shards


class WorldShardActor:
    """The Ray actor of one world: its own process, so its own libsumo / CARLA client."""

    def record(self, shard: Shard, out: str, ticks: Optional[int], world_factory=None) -> dict:
        return _record_shard(shard, out, ticks, world_factory)


def _record_shard(shard: Shard, out, ticks: Optional[int], world_factory) -> dict:
    world = world_factory(shard) if world_factory is not None else None
    return {**record(shard.scenario, out, seed=shard.seed, cfg=shard.scenario.recorder, ticks=ticks, world=world),
            "pid": os.getpid()}


def _check_root(out: Path, shards: list[Shard]) -> None:
    mpath = out / "manifest.json"
    if not mpath.is_file():
        return
    try:
        old = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = None
    if not isinstance(old, dict) or old.get("format") != SHARDED_FORMAT:
        raise InputError(f"{out} holds a single-world recording (or another file named manifest.json); "
                         f"pick another --out for a sharded one", field="--out")
    if old.get("worlds") != len(shards) or old.get("seed") != shards[0].seed:
        raise InputError(f"{out} holds a sharded recording with {old.get('worlds')} world(s) and seed "
                         f"{old.get('seed')}; pick another --out (or the same settings to resume it)",
                         field="--out")


def record_shards(scenario, out: str | os.PathLike, *, worlds: int, seed: Optional[int] = None, cfg=None,
                  ticks: Optional[int] = None, address: Optional[str] = None,
                  carla_hosts: Optional[list[tuple[str, int]]] = None, num_cpus: Optional[int] = None,
                  on_shard: Optional[Callable[[int, dict], None]] = None,
                  world_factory: Optional[Callable[[Shard], Any]] = None) -> dict[str, Any]:
    """Record ``worlds`` shards of ``scenario`` into ``out`` and merge them (:func:`merge_shards`).

    With ``address`` (see :func:`ray_session`) every shard runs on its own Ray actor (1 CPU),
    in parallel; without it, or without Ray, one after another in this process. Each shard is
    exactly ``record(shard.scenario, out/shard.dir, seed=shard.seed, ticks=ticks)``, so a run
    resumes shard by shard. ``on_shard(index, summary)`` is called as each shard finishes.
    ``world_factory(shard) -> World`` replaces ``make_world`` (it runs where the shard runs, so
    on Ray it must be importable there); the default builds the scenario's backend.
    Returns the merged manifest plus ``"summaries"`` (the shards' recorder summaries, each with
    the ``pid`` of the process that recorded it).
    """
    shards = shard_plan(scenario, worlds=worlds, seed=seed, carla_hosts=carla_hosts, cfg=cfg)
    out = Path(out).resolve()
    _check_root(out, shards)
    out.mkdir(parents=True, exist_ok=True)
    summaries: dict[int, dict] = {}
    with ray_session(address, num_cpus=num_cpus) as ray:
        if ray is None:
            for sh in shards:
                summaries[sh.index] = _record_shard(sh, out / sh.dir, ticks, world_factory)
                if on_shard is not None:
                    on_shard(sh.index, summaries[sh.index])
        else:
            actor_cls = ray.remote(num_cpus=1, max_restarts=0)(WorldShardActor)
            actors = [actor_cls.remote() for _ in shards]
            try:
                pending = {a.record.remote(sh, str(out / sh.dir), ticks, world_factory): sh.index
                           for a, sh in zip(actors, shards)}
                while pending:
                    done, _ = ray.wait(list(pending), num_returns=1)
                    i = pending.pop(done[0])
                    summaries[i] = ray_get(ray, done[0])
                    if on_shard is not None:
                        on_shard(i, summaries[i])
            finally:
                for a in actors:  # end the world processes (and their simulations) now
                    ray.kill(a)
    merged = merge_shards(out, shards)
    return {**merged, "summaries": [summaries[i] for i in range(len(shards))]}


def merge_shards(out: str | os.PathLike, shards: list[Shard]) -> dict[str, Any]:
    """Write ``out/manifest.json`` and ``out/annotations.json`` from the shards' own files.

    COCO: images in shard order (each shard's own (frame, camera) order), ids re-numbered
    from 1, ``file_name`` prefixed with the shard folder, plus ``shard`` and ``seed`` keys;
    annotations re-numbered from 1 and pointed at the new image ids; categories are the union
    of the shards' classes (sorted, ids from 1), re-mapped by name. When every shard has the
    same classes, ``classes.txt`` and a ``data.yaml`` listing every shard's images are written
    too (the shards' YOLO files then share the class indices).
    """
    from carla_mr.io import atomic_write_json, atomic_write_text

    out = Path(out)
    cocos, manifests = [], []
    for sh in shards:
        d = out / sh.dir
        try:
            manifests.append(json.loads((d / "manifest.json").read_text(encoding="utf-8")))
            cocos.append(json.loads((d / "annotations.json").read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise RunError(f"shard {sh.index} ({d}) has no readable manifest/annotations: {exc}") from exc
    classes = sorted({c for m in manifests for c in m["classes"]})
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    images, anns, rows = [], [], []
    for sh, coco, man in zip(shards, cocos, manifests):
        old_cat = {c["id"]: c["name"] for c in coco["categories"]}
        new_img = {}
        for img in coco["images"]:
            new_img[img["id"]] = len(images) + 1
            images.append({**img, "id": len(images) + 1, "file_name": f"{sh.dir}/{img['file_name']}",
                           "shard": sh.index, "seed": sh.seed})
        n_ann = 0
        for a in coco["annotations"]:
            anns.append({**a, "id": len(anns) + 1, "image_id": new_img[a["image_id"]],
                         "category_id": cat_id[old_cat[a["category_id"]]]})
            n_ann += 1
        try:
            prog = json.loads((out / sh.dir / "progress.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            prog = {}
        rows.append({"index": sh.index, "dir": sh.dir, "seed": sh.seed, "carla": sh.carla,
                     "images": len(coco["images"]), "annotations": n_ann,
                     "frames": prog.get("frames"), "complete": bool(prog.get("complete", False))})
    cats = [{"id": cat_id[c], "name": c, "supercategory": c.rsplit("_", 1)[0] if c[-1:].isdigit() else c}
            for c in classes]
    coco = {"info": {"description": "carla_mr sign dataset (merged shards)", "version": "1", "shards": len(shards)},
            "licenses": [], "images": images, "annotations": anns, "categories": cats}
    same_classes = all(m["classes"] == classes for m in manifests)
    sc = shards[0].scenario
    manifest = {"format": SHARDED_FORMAT, "worlds": len(shards), "seed": shards[0].seed, "seed_rule": SEED_RULE,
                "backend": sc.backend, "map": manifests[0]["scenario"].get("map"), "classes": classes,
                "yolo": "shared classes.txt" if same_classes else "per shard (classes differ)",
                "images": len(images), "annotations": len(anns), "complete": all(r["complete"] for r in rows),
                "shards": rows, "files": {"coco": "annotations.json"}}
    atomic_write_json(out / "annotations.json", coco, indent=None)
    if same_classes:
        atomic_write_text(out / "classes.txt", "\n".join(classes) + "\n")
        atomic_write_text(out / "data.yaml", "# YOLO dataset (carla_mr, merged shards)\npath: .\ntrain:\n"
                          + "".join(f"  - {sh.dir}/images\n" for sh in shards) + "val:\n"
                          + "".join(f"  - {sh.dir}/images\n" for sh in shards) + "names:\n"
                          + "".join(f"  {i}: {json.dumps(c)}\n" for i, c in enumerate(classes)))
        manifest["files"].update(classes="classes.txt", yolo="data.yaml")
    else:  # never leave the shared YOLO files of an earlier merge behind
        for name in ("classes.txt", "data.yaml"):
            (out / name).unlink(missing_ok=True)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest
