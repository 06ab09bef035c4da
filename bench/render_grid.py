"""The frame grid of docs/dataset.md: OpenGL camera frames from CARLA's Town01 and Town02 under
each weather preset (default traffic, signs injected at random, seed 0).

For each (town, weather) tile the world runs ``--ticks`` ticks; the frame with the most
sign labels among the AV cameras (checked every 20 ticks) is kept, with its label boxes drawn
(green: visible >= 0.99, orange: partly occluded).

Run: ``python bench/render_grid.py --out docs/img/dataset_grid.jpg``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TILES = (("Town01", "clear"), ("Town02", "clear"), ("Town01", "overcast"), ("Town02", "dusk"),
         ("Town01", "fog"), ("Town02", "night"))


def best_frame(town: str, weather: str, ticks: int, seed: int):
    from carla_mr.config import scenario_from_dict
    from carla_mr.config.camera import CameraSpec
    from carla_mr.world.embedded import EmbeddedWorld

    sc = scenario_from_dict({"map": str(REPO / "maps" / f"{town}.xodr"), "seed": seed,
                             "signs": {"random_count": 40}})
    best, score = None, -1
    with EmbeddedWorld(sc, seed=seed) as w:
        snap = w.reset()
        avs = sorted(int(v) for v in snap.ids[snap.av_mask])
        for j, av in enumerate(avs):
            w.attach_camera(f"c{j}", CameraSpec(weather=weather), av)
        for t in range(ticks):
            snap = w.tick()
            if t % 20 != 19:
                continue
            for j in range(len(avs)):
                fr = w.read_camera(f"c{j}")
                big = [lab for lab in fr.labels if min(lab["box"][2] - lab["box"][0], lab["box"][3] - lab["box"][1]) >= 10]
                s = len(big) + 3 * len({lab["kind"] for lab in big})
                if s > score:
                    best, score = fr, s
    return best


def tile(fr, town: str, weather: str):
    import cv2

    img = fr.image[:, :, ::-1].copy()
    for lab in fr.labels:
        x0, y0, x1, y1 = lab["visible_box"]
        col = (60, 200, 60) if lab["visible"] >= 0.99 else (0, 140, 255)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), col, 1)
    cv2.putText(img, f"{town} {weather}", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
    return img


def main() -> None:
    import cv2
    import numpy as np

    ap = argparse.ArgumentParser()
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "docs" / "img" / "dataset_grid.jpg"))
    a = ap.parse_args()
    tiles = [tile(best_frame(t, w, a.ticks, a.seed), t, w) for t, w in TILES]
    rows = [np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)]
    grid = cv2.resize(np.vstack(rows), None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    cv2.imwrite(a.out, grid, [cv2.IMWRITE_JPEG_QUALITY, 85])
    print(a.out)


if __name__ == "__main__":
    main()
