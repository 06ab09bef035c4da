"""Full-frame detection scored with pycocotools' COCOeval, by texture source, distance band,
visibility band and weather.

Ground truth: every sign label of the frame. Labels the evaluation does not ask for (box side
below ``perception.min_box_px``, less visible than ``min_visible``, traffic lights unless
``include_traffic_lights``) are *ignored* regions (COCO ``iscrowd``): a detection on them is
neither a hit nor a false positive. For a group bin (say generated textures) the ground truth
outside the bin is ignored the same way, and frames are restricted to the bin for weather; a
detection that matches no sign counts as a false positive in every bin.

Categories: a ground-truth class the detector names (``speed_limit_30``), else its kind when the
detector names kinds (``speed_limit``), so kind-level and value-level detectors are both
scored fairly. A label without a value (``speed_limit``: a generated face whose value the
validator could not read) under a detector that names values only is an ignored region in
every value category of its kind: no value is right or wrong on a face that shows none.

Measures per bin: COCO mAP@[.50:.95], AP@.50, recall at IoU 0.5 (up to 100 detections an
image, averaged over categories with ground truth) and the count of ground truth.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Iterable, Optional

import numpy as np

from carla_mr.config.dataset import PerceptionConfig
from carla_mr.dataset.detectors import Detections


def band(x: float, edges: list[float], unit: str) -> str:
    """The name of the band of ``x`` between increasing ``edges`` (``"10-20 m"``, ``">=80 m"``)."""
    lo = 0.0
    for e in edges:
        if x < e:
            return f"{lo:g}-{e:g}{unit}"
        lo = e
    return f">={lo:g}{unit}"


_band = band


class DetectionEvaluator:
    """Runs ``detector`` on full frames and keeps what COCOeval needs; ``report()`` scores it."""

    def __init__(self, cfg: PerceptionConfig, detector, *, min_score_fp: float = 0.5):
        self.cfg = cfg
        self.detector = detector
        self.min_score_fp = float(min_score_fp)
        self.images: list[dict] = []
        self.gts: list[dict] = []
        self.dets: list[dict] = []
        self.det_classes: set[str] = set(getattr(detector, "classes", None) or [])

    def wanted(self, lab: dict) -> bool:
        x0, y0, x1, y1 = lab["box"]
        return (min(x1 - x0, y1 - y0) >= self.cfg.min_box_px and lab["visible"] >= self.cfg.min_visible
                and (self.cfg.include_traffic_lights or lab["kind"] != "traffic_light"))

    def add_frame(self, image: np.ndarray, labels: Iterable[dict], *, frame: int, camera: str,
                  weather: str = "clear") -> int:
        """Detect on ``image`` (RGB uint8) and keep its ground truth; returns the wanted labels."""
        from carla_mr.dataset.recorder import normalise_label

        det: Detections = self.detector.detect([image])[0]
        return self.add_detections(det, labels=list(map(normalise_label, labels)), frame=frame, camera=camera,
                                   weather=weather, size=image.shape[:2])

    def add_detections(self, det: Detections, *, labels: list[dict], frame: int, camera: str, weather: str,
                       size: tuple[int, int]) -> int:
        img_id = len(self.images) + 1
        self.images.append({"id": img_id, "frame": int(frame), "camera": camera, "weather": str(weather),
                            "height": int(size[0]), "width": int(size[1])})
        n = 0
        for lab in labels:
            x0, y0, x1, y1 = (float(v) for v in lab["box"])
            ok = self.wanted(lab)
            n += ok
            self.gts.append({"image_id": img_id, "bbox": [x0, y0, x1 - x0, y1 - y0], "class": lab["class"],
                             "kind": lab["kind"], "wanted": bool(ok), "source": lab["source"],
                             "distance": float(lab["distance"]), "visible": float(lab["visible"])})
        for b, c, s in zip(det.boxes, det.classes, det.scores):
            self.det_classes.add(c)
            self.dets.append({"image_id": img_id, "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]),
                                                           float(b[3] - b[1])], "class": c, "score": float(s)})
        return n

    # -- scoring ------------------------------------------------------------------------------
    def _category(self, gt: dict) -> str:
        if gt["class"] in self.det_classes or gt["kind"] not in self.det_classes:
            return gt["class"]
        return gt["kind"]

    def _value_classes(self, kind: str) -> list[str]:
        """The detector's value-level classes of ``kind`` (``speed_limit_30``...)."""
        return sorted(c for c in self.det_classes if c.startswith(kind + "_"))

    def _ignore_unknown_values(self, gts: list[dict]) -> list[dict]:
        """A label without a value, under a detector that names only values of its kind, becomes
        an ignored (crowd) region in each of those value categories."""
        out = []
        for g in gts:
            values = self._value_classes(g["kind"]) if g["class"] == g["kind"] not in self.det_classes else []
            if values:
                out.extend(dict(g, wanted=False, **{"class": c}) for c in values)
            else:
                out.append(g)
        return out

    def _bins(self) -> dict[str, dict[str, Any]]:
        """{group: {bin: predicate(gt) or ('weather', name)}}."""
        c = self.cfg
        groups: dict[str, dict[str, Any]] = {"overall": {"all": lambda g: True}, "source": {}, "distance": {},
                                             "visibility": {}, "weather": {}}
        for g in self._ignore_unknown_values(self.gts):
            if not g["wanted"]:
                continue
            groups["source"].setdefault(g["source"], lambda x, s=g["source"]: x["source"] == s)
            d = _band(g["distance"], c.distance_bands_m, " m")
            groups["distance"].setdefault(d, lambda x, d=d: _band(x["distance"], c.distance_bands_m, " m") == d)
            v = _vis_bin(g["visible"], c.visibility_bands)
            groups["visibility"].setdefault(v, lambda x, v=v: _vis_bin(x["visible"], c.visibility_bands) == v)
        for im in self.images:
            groups["weather"].setdefault(im["weather"], ("weather", im["weather"]))
        return groups

    def report(self) -> dict[str, Any]:
        cats = sorted({self._category(g) for g in self.gts} | self.det_classes)
        rows = []
        for group, bins in self._bins().items():
            for name, pred in sorted(bins.items(), key=lambda kv: _order(kv[0])):
                rows.append({"group": group, "bin": name, **self._score(cats, pred)})
        overall = rows[0] if rows else {}
        return {"detector": getattr(self.detector, "name", type(self.detector).__name__),
                "images": len(self.images), "detections": len(self.dets), "overall": overall, "table": rows,
                "false_positives_per_image": self._fp_per_image(),
                "fp_score_threshold": self.min_score_fp}

    def _score(self, cats: list[str], pred) -> dict[str, Any]:
        if isinstance(pred, tuple):  # a weather bin: its frames, all their ground truth
            img_ids = [im["id"] for im in self.images if im["weather"] == pred[1]]
            keep = set(img_ids)
            gts = [dict(g, wanted=g["wanted"] and g["image_id"] in keep) for g in self.gts]
        else:
            img_ids = [im["id"] for im in self.images]
            gts = [dict(g, wanted=g["wanted"] and pred(g)) for g in self.gts]
        gts = self._ignore_unknown_values(gts)
        n_gt = sum(g["wanted"] for g in gts)
        if n_gt == 0:
            return {"n_gt": 0, "mAP": float("nan"), "AP50": float("nan"), "recall50": float("nan")}
        return {"n_gt": n_gt, **coco_scores(self.images, gts, self.dets, cats, img_ids, self._category)}

    def _fp_per_image(self) -> float:
        """Detections (score >= min_score_fp) overlapping no sign (any class) by IoU >= 0.5, per image."""
        if not self.images:
            return float("nan")
        by_img: dict[int, list] = {}
        for g in self.gts:
            by_img.setdefault(g["image_id"], []).append(g["bbox"])
        fp = 0
        for d in self.dets:
            if d["score"] < self.min_score_fp:
                continue
            if not any(_iou(d["bbox"], b) >= 0.5 for b in by_img.get(d["image_id"], [])):
                fp += 1
        return fp / len(self.images)


def _vis_bin(v: float, edges: list[float]) -> str:
    return _band(v, edges, "") if v < 0.99 else ">=0.99 (unoccluded)"


def _order(name: str):
    import re

    m = re.match(r"^[>=]*([\d.]+)", name)
    return (0, float(m.group(1)), name) if m else (1, 0.0, name)


def _iou(a, b) -> float:
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def coco_scores(images, gts, dets, cats, img_ids, category_of) -> dict[str, float]:
    """COCOeval (bbox) on the wanted ground truth (the rest ignored as crowd regions)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cid = {c: i + 1 for i, c in enumerate(cats)}
    anns = []
    for i, g in enumerate(gts):
        x, y, w, h = g["bbox"]
        anns.append({"id": i + 1, "image_id": g["image_id"], "category_id": cid[category_of(g)], "bbox": [x, y, w, h],
                     "area": float(w * h), "iscrowd": 0 if g["wanted"] else 1})
    gt_json = {"images": [{"id": im["id"], "width": im["width"], "height": im["height"]} for im in images],
               "annotations": anns, "categories": [{"id": v, "name": k} for k, v in cid.items()]}
    keep = set(img_ids)
    res = [{"image_id": d["image_id"], "category_id": cid[d["class"]], "bbox": d["bbox"], "score": d["score"]}
           for d in dets if d["image_id"] in keep]
    if not res:
        return {"mAP": 0.0, "AP50": 0.0, "recall50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints; stdout belongs to --json
        coco_gt = COCO()
        coco_gt.dataset = gt_json
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.imgIds = sorted(keep)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    rec = ev.eval["recall"][0, :, 0, -1]  # IoU 0.5, every category, area all, 100 detections
    rec = rec[rec > -1]
    return {"mAP": _clean(ev.stats[0]), "AP50": _clean(ev.stats[1]),
            "recall50": float(rec.mean()) if rec.size else float("nan")}


def _clean(x) -> float:
    x = float(x)
    return x if x >= 0 else float("nan")  # COCOeval writes -1 where nothing was there to score


# -- glue for the perception stage and `dataset eval` --------------------------------------------

def make_detection_evaluator(cfg: PerceptionConfig) -> Optional[DetectionEvaluator]:
    """The detector under test named by ``cfg.detector`` (None when it names none)."""
    if not cfg.detector:
        return None
    from carla_mr.dataset.detectors import load_detector
    from carla_mr.errors import require

    require("pycocotools.cocoeval", extra="dataset", feature="Scoring a detector (COCOeval)")
    return DetectionEvaluator(cfg, load_detector(cfg.detector, cfg.detector_checkpoint,
                                                 min_score=cfg.detector_min_score))


def weather_name(scenario: Any = None, meta: Optional[dict] = None) -> str:
    """The weather preset of a frame (its meta's ``weather``) or scenario (``weather`` /
    ``weather.preset`` / ``camera.weather``); ``"default"`` where none is set."""
    for src in (meta or {}).get("weather"), getattr(scenario, "weather", None):
        if isinstance(src, str) and src:
            return src
        for key in ("preset", "name"):
            val = src.get(key) if isinstance(src, dict) else getattr(src, key, None)
            if isinstance(val, str) and val:
                return val
    return "default"


def detection_rows(rep: dict) -> list[tuple]:
    """(group, bin, n_gt, mAP, AP50, recall50) rows of a detection report."""
    return [(r["group"], r["bin"], r["n_gt"], r["mAP"], r["AP50"], r["recall50"]) for r in rep.get("table", [])]


def write_detection_report(rep: dict, out) -> dict[str, str]:
    """detection.json and detection.csv in ``out``."""
    from pathlib import Path

    from carla_mr.io import atomic_write_json, atomic_write_text

    out = Path(out)
    lines = ["group,bin,n_gt,mAP,AP50,recall50"] + [",".join(str(v) for v in r) for r in detection_rows(rep)]
    return {"detection": str(atomic_write_json(out / "detection.json", rep)),
            "detection_table": str(atomic_write_text(out / "detection.csv", "\n".join(lines) + "\n"))}


def detection_summary(rep: dict) -> dict[str, Any]:
    """The headline numbers of a detection report (the run summary's ``perception.detection``)."""
    by = {g: {r["bin"]: r["mAP"] for r in rep["table"] if r["group"] == g} for g in ("source", "weather")}
    o = rep.get("overall") or {}
    return {"detector": rep["detector"], "images": rep["images"], "n_gt": o.get("n_gt"), "mAP": o.get("mAP"),
            "AP50": o.get("AP50"), "recall50": o.get("recall50"), "mAP_by_source": by["source"],
            "recall50_by_source": {r["bin"]: r["recall50"] for r in rep["table"] if r["group"] == "source"},
            "false_positives_per_image": rep["false_positives_per_image"]}
