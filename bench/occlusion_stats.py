"""How often exported sign labels are partly occluded in a plain recording (issue 17's target).

Records ``--seconds`` of a scenario on a CARLA town with the defaults (camera on the first AV
at CARLA's default mount, the scenario's default traffic) through the real recorder, then
reads the dataset back: exported labels, the share with ``visible < 0.99``, labels without a
mask, and the box check (each exported COCO box is the bbox of its decoded mask).

Run: ``python bench/occlusion_stats.py --map maps/Town01.xodr --seconds 20 --out /tmp/occ``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def stats(root: Path) -> dict:
    import numpy as np
    from pycocotools import mask as mask_utils

    coco = json.loads((root / "annotations.json").read_text())
    anns = coco["annotations"]
    vis = np.array([a["visible"] for a in anns]) if anns else np.zeros(0)
    no_mask = sum(1 for a in anns if not a.get("segmentation"))
    box_off = 0
    for a in anns:
        m = mask_utils.decode({"size": a["segmentation"]["size"], "counts": a["segmentation"]["counts"].encode()})
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        box = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1 - int(cols[0]), int(rows[-1]) + 1 - int(rows[0])]
        box_off += box != a["bbox"]
    big = vis[np.array([min(a["bbox"][2:]) >= 16 for a in anns], bool)] if anns else vis
    return {"images": len(coco["images"]), "labels_exported": len(anns),
            "occluded_share": float((vis < 0.99).mean()) if len(vis) else 0.0,
            "occluded": int((vis < 0.99).sum()), "occluded_share_16px": float((big < 0.99).mean()) if len(big) else 0.0,
            "labels_16px": int(len(big)), "labels_without_mask": no_mask, "boxes_not_on_mask": box_off,
            "by_state": {s: sum(1 for a in anns if a.get("state") == s) for s in ("red", "yellow", "green", "unknown")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--map", default=str(REPO / "maps" / "Town01.xodr"))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weather", default="clear")
    ap.add_argument("--cameras", type=int, default=1, help="AVs carrying a camera (default traffic has 10 AVs)")
    ap.add_argument("--out", default="/tmp/occlusion_stats")
    a = ap.parse_args()
    from carla_mr.config import scenario_from_dict
    from carla_mr.dataset.recorder import record

    out = Path(a.out)
    shutil.rmtree(out, ignore_errors=True)
    sc = scenario_from_dict({"map": a.map, "seed": a.seed, "duration_s": a.seconds,
                             "recorder": {"enabled": True, "cameras": a.cameras,
                                                                 "camera": {"weather": a.weather}}})
    t0 = time.perf_counter()
    summary = record(sc, out, seed=a.seed)
    res = {"map": Path(a.map).stem, "seconds": a.seconds, "seed": a.seed, "weather": a.weather, "cameras": a.cameras,
           "frames": summary["frames_recorded"], "wall_s": round(time.perf_counter() - t0, 1), **stats(out)}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
