"""Export formats built from a dataset's per-frame ``meta/`` records: COCO and YOLO.

COCO: one image per (frame, camera), in (frame, camera) order, ids from 1; one category
per class (``kind`` or ``kind_value``), ids from 1 in ``classes.txt`` order; annotations
carry the exported label's ``bbox`` [x, y, w, h] (pixels, x1/y1 exclusive; by default the
box of the visible pixels), ``area`` (the sign's visible pixel count), ``segmentation`` (COCO
RLE of the visible pixels), ``amodal_bbox`` [x, y, w, h] (the whole projected face) and the
extra keys ``sign_id``, ``visible``, ``distance``, ``source``, ``ref``, ``value`` and, for
traffic lights, ``state`` (red / yellow / green / unknown). YOLO lines are written per frame by the recorder:
``class cx cy w h`` normalised to the image size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator


def iter_meta(root: str | Path) -> Iterator[dict]:
    """Every committed frame record of a dataset, in (frame, camera) order."""
    root = Path(root)
    items = []
    meta = root / "meta"
    if not meta.is_dir():
        return iter(())
    for slot_dir in sorted(p for p in meta.iterdir() if p.is_dir()):
        for p in slot_dir.glob("*.json"):
            items.append((int(p.stem), slot_dir.name, p))
    items.sort()
    return (json.loads(p.read_text(encoding="utf-8")) for _, _, p in items)


def exported_box(lab: dict, box_mode: str) -> list[int]:
    return lab["box"] if box_mode == "full" else lab["visible_box"]


def build_coco(root: str | Path, classes: list[str], box_mode: str | None = None) -> dict[str, Any]:
    root = Path(root)
    if box_mode is None:
        try:
            box_mode = json.loads((root / "manifest.json").read_text())["recorder"]["box"]
        except (OSError, ValueError, KeyError):
            box_mode = "full"
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    images, anns = [], []
    for rec in iter_meta(root):
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rec["image"], "width": rec["width"], "height": rec["height"],
                       "frame": rec["frame"], "camera": rec["camera"], "time": rec["time"]})
        for lab in rec["labels"]:
            if not lab.get("exported"):
                continue
            x0, y0, x1, y1 = exported_box(lab, box_mode)
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[lab["class"]],
                   "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(lab["pixels"]), "iscrowd": 0,
                   "sign_id": lab["id"], "visible": lab["visible"], "distance": lab["distance"],
                   "source": lab["source"], "ref": lab["ref"], "value": lab["value"]}
            a = lab.get("amodal_bbox") or lab["box"]
            ann["amodal_bbox"] = [a[0], a[1], a[2] - a[0], a[3] - a[1]]
            if lab.get("mask"):
                ann["segmentation"] = lab["mask"]
            if "state" in lab:
                ann["state"] = lab["state"]
            anns.append(ann)
    cats = [{"id": cat_id[c], "name": c, "supercategory": c.rsplit("_", 1)[0] if c[-1:].isdigit() else c}
            for c in classes]
    return {"info": {"description": "carla_mr sign dataset", "version": "1"}, "licenses": [],
            "images": images, "annotations": anns, "categories": cats}
