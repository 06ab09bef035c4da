"""Perception in the loop: a model under test on the crops of visible signs, scored by
texture source (original vs generated), distance band and visibility band.

An answer is correct when it equals the sign's class (``speed_limit_30``) or its kind
(``speed_limit``), so kind-level classifiers (the genai validator) and value-level ones are
both scored fairly; on a label without value (a generated face whose value the validator could
not read: the generic ``speed_limit``) any value of that kind is correct
(:func:`~carla_mr.world.sign_geometry.class_matches`). Traffic lights are skipped unless
``include_traffic_lights``.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from carla_mr.config.dataset import PerceptionConfig
from carla_mr.dataset.detection_eval import band as _band
from carla_mr.dataset.models import load_model
from carla_mr.errors import InputError
from carla_mr.io import atomic_write, atomic_write_json, atomic_write_text
from carla_mr.reporting import fmt, md_table, plot_png
from carla_mr.stages import BaseStage, ReportSection
from carla_mr.world.base import FrameMissed
from carla_mr.world.sign_geometry import class_matches


def crop(image: np.ndarray, box, margin: float) -> np.ndarray:
    """The box [x0, y0, x1, y1] grown by ``margin`` of its size on each side, clipped to the image."""
    x0, y0, x1, y1 = box
    mx, my = (x1 - x0) * margin, (y1 - y0) * margin
    h, w = image.shape[:2]
    a, b = max(0, int(math.floor(x0 - mx))), max(0, int(math.floor(y0 - my)))
    c, d = min(w, int(math.ceil(x1 + mx))), min(h, int(math.ceil(y1 + my)))
    return np.ascontiguousarray(image[b:d, a:c])




class Evaluator:
    """Accumulates per-crop results; ``report()`` aggregates them."""

    def __init__(self, cfg: PerceptionConfig, model):
        self.cfg = cfg
        self.model = model
        self.records: list[dict] = []

    def eligible(self, lab: dict) -> bool:
        x0, y0, x1, y1 = lab["box"]
        return (min(x1 - x0, y1 - y0) >= self.cfg.min_box_px and lab["visible"] >= self.cfg.min_visible
                and (self.cfg.include_traffic_lights or lab["kind"] != "traffic_light"))

    def add_frame(self, image: np.ndarray, labels: Iterable[dict], *, frame: int, camera: str) -> int:
        from carla_mr.dataset.recorder import normalise_label

        labs = [lab for lab in map(normalise_label, labels) if self.eligible(lab)]
        if not labs:
            return 0
        crops = [crop(image, lab["box"], self.cfg.crop_margin) for lab in labs]
        preds = self.model.predict(crops)
        for lab, pred in zip(labs, preds):
            x0, y0, x1, y1 = lab["box"]
            self.records.append({
                "frame": int(frame), "camera": camera, "sign_id": lab["id"], "kind": lab["kind"],
                "class": lab["class"], "source": lab["source"], "ref": lab["ref"],
                "distance": float(lab["distance"]), "visible": float(lab["visible"]),
                "box_px": int(min(x1 - x0, y1 - y0)), "pred": str(pred),
                "correct": bool(class_matches(str(pred), lab["class"]) or pred == lab["kind"]),
            })
        return len(labs)

    def report(self) -> dict[str, Any]:
        recs = self.records
        groups: dict[str, dict[str, list[bool]]] = {"source": {}, "distance": {}, "visibility": {}, "kind": {},
                                                     "source x distance": {}}
        for r in recs:
            d = _band(r["distance"], self.cfg.distance_bands_m, " m")
            v = _band(r["visible"], self.cfg.visibility_bands, "") if r["visible"] < 1.0 else "1 (unoccluded)"
            for g, key in (("source", r["source"]), ("distance", d), ("visibility", v), ("kind", r["kind"]),
                           ("source x distance", f"{r['source']} / {d}")):
                groups[g].setdefault(key, []).append(r["correct"])
        table = []
        for g, bins in groups.items():
            order = sorted(bins, key=lambda k: _sort_key(k))
            for b in order:
                xs = bins[b]
                table.append({"group": g, "bin": b, "n": len(xs), "accuracy": float(np.mean(xs))})
        n = len(recs)
        return {"model": getattr(self.model, "name", type(self.model).__name__),
                "overall": {"n": n, "accuracy": float(np.mean([r["correct"] for r in recs])) if n else float("nan")},
                "table": table, "config": self.cfg.model_dump(mode="json")}


def _sort_key(k: str):
    import re

    m = re.match(r"^(\D*?)(>=)?([\d.]+)", k.split(" / ")[-1])
    return (k.split(" / ")[0] if " / " in k else "", float(m.group(3)) if m else math.inf, k)


def write_report(report: dict, out: str | Path, *, plots: bool = True, records: Optional[list[dict]] = None
                 ) -> dict[str, str]:
    """report.json, table.csv, crops.csv (per-crop results) and accuracy PNG plots."""
    out = Path(out)
    recs = records if records is not None else report.get("records")
    report = {k: v for k, v in report.items() if k != "records"}
    files = {"report": str(atomic_write_json(out / "report.json", report))}
    lines = ["group,bin,n,accuracy"] + [f"{r['group']},{r['bin']},{r['n']},{r['accuracy']:.6f}" for r in report["table"]]
    files["table"] = str(atomic_write_text(out / "table.csv", "\n".join(lines) + "\n"))
    if recs:
        keys = list(recs[0])
        body = [",".join(keys)] + [",".join(json.dumps(r[k]) if isinstance(r[k], str) or r[k] is None else str(r[k])
                                            for k in keys) for r in recs]
        files["crops"] = str(atomic_write_text(out / "crops.csv", "\n".join(body) + "\n"))
    if plots and report["table"]:
        files["plot"] = str(_plot(report, out / "accuracy.png"))
    return files


def _plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = ["source", "distance", "visibility", "kind"]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6))
    for ax, g in zip(axes, groups):
        rows = [r for r in report["table"] if r["group"] == g]
        ax.bar(range(len(rows)), [r["accuracy"] for r in rows], color="#4477aa")
        ax.set_xticks(range(len(rows)), [f"{r['bin']}\n(n={r['n']})" for r in rows], rotation=30, ha="right",
                      fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"accuracy by {g}")
    fig.suptitle(f"model under test: {report['model']}")
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def _summary_lines(per: Mapping[str, Any]) -> str:
    """95% intervals by source and the template baseline on the same crops (from the run summary)."""
    ci, base = per.get("accuracy_ci95_by_source") or {}, per.get("baseline_template_accuracy_by_source") or {}
    out = ""
    if ci:
        out += "\n95% Wilson intervals by source: " + "; ".join(
            f"{k} [{fmt(v[0])}, {fmt(v[1])}] (n={(per.get('n_by_source') or {}).get(k)})" for k, v in ci.items()) + ".\n"
    if base:
        out += ("\nBaseline (template matcher on the same crops): "
                + "; ".join(f"{k} {fmt(v)}" for k, v in base.items()) + ".\n")
    return out


def _detection_section(run_dir: Path) -> str:
    """The detection table of report.md (empty when no detector was under test)."""
    path = run_dir / "perception" / "detection.json"
    if not path.is_file():
        return ""
    from carla_mr.dataset.detection_eval import detection_rows

    rep = json.loads(path.read_text(encoding="utf-8"))
    o = rep.get("overall") or {}
    return (f"\nDetector {rep.get('detector')} on {rep.get('images')} frames (COCOeval, bbox): mAP "
            f"{fmt(o.get('mAP'))}, AP50 {fmt(o.get('AP50'))}, recall@0.5 {fmt(o.get('recall50'))}, "
            f"{fmt(rep.get('false_positives_per_image'))} false positives per frame.\n\n"
            + md_table(detection_rows(rep), ("group", "bin", "signs", "mAP", "AP50", "recall@0.5")) + "\n")


# -- sources ---------------------------------------------------------------------------------

def evaluate_dataset(root: str | Path, *, model: str | None = None, checkpoint: str | None = None,
                     cfg: Optional[PerceptionConfig] = None, detector: str | None = None,
                     detector_checkpoint: str | None = None) -> dict:
    """Evaluate on a recorded dataset folder (its meta/ records and images): the crop model,
    and the detector when one is named (the report's ``detection``)."""
    from carla_mr.dataset.detection_eval import make_detection_evaluator, weather_name

    import cv2

    from carla_mr.dataset.formats import iter_meta

    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise InputError(f"{root} is not a recorded dataset (no manifest.json); record one with "
                         f"'carla-mr dataset record'", field="SOURCE")
    manifest = json.loads((root / "manifest.json").read_text())
    if cfg is None:
        sc = manifest.get("scenario") or {}
        cfg = PerceptionConfig.model_validate((sc.get("perception") or {}))
    upd = {k: v for k, v in {"model": model, "checkpoint": checkpoint, "detector": detector,
                             "detector_checkpoint": detector_checkpoint}.items() if v is not None}
    cfg = cfg.model_copy(update=upd)
    det = make_detection_evaluator(cfg)
    scenario_weather = weather_name(SimpleNamespace(**(manifest.get("scenario") or {})))
    ev = Evaluator(cfg, load_model(cfg.model, cfg.checkpoint, classes=_model_classes(manifest.get("classes"))))
    for rec in iter_meta(root):
        img = cv2.imread(str(root / rec["image"]), cv2.IMREAD_COLOR)
        if img is None:
            raise InputError(f"cannot read {root / rec['image']}", field="SOURCE")
        ev.add_frame(img[:, :, ::-1], rec["labels"], frame=rec["frame"], camera=rec["camera"])
        if det is not None:
            w = weather_name(None, rec) if rec.get("weather") else scenario_weather
            det.add_frame(img[:, :, ::-1], rec["labels"], frame=rec["frame"], camera=rec["camera"], weather=w)
    rep = ev.report()
    if det is not None:
        rep["detection"] = det.report()
    rep["source"] = str(root)
    rep["records"] = ev.records
    return rep


def _model_classes(classes):
    from carla_mr.dataset.models import DEFAULT_CLASSES

    if not classes:
        return DEFAULT_CLASSES
    out = [c for c in classes if c != "traffic_light"]
    return out or DEFAULT_CLASSES


class PerceptionStage(BaseStage):
    """The runner's perception stage: scores the model under test on every k-th tick.

    Uses the recorder's frames for the tick when ``ctx.board.camera_frames`` has them,
    else renders its own camera ``perception`` on the lowest-id AV. Writes
    ``run_dir/perception/{report.json, table.csv, crops.csv, accuracy.png}`` on close.
    """

    name = "perception"

    def __init__(self, cfg: PerceptionConfig, *, camera=None, subdir: Optional[str] = "perception"):
        """``subdir``: where the report files go under the run directory (None: write none)."""
        self.cfg = cfg
        self.camera = cfg.camera or camera
        self.subdir = subdir
        self.evaluator: Optional[Evaluator] = None
        self._slots = None
        self._out: Optional[Path] = None
        self._closed = False
        self.frames_missed = 0
        self.files: dict[str, str] = {}
        self.detection = None  # a DetectionEvaluator when cfg.detector names a detector
        self.baseline: Optional[Evaluator] = None  # the template matcher on the same crops
        self._weather = "default"

    def start(self, ctx) -> None:
        from carla_mr.dataset.recorder import dataset_classes
        from carla_mr.dataset.slots import CameraSlots
        from carla_mr.config.camera import CameraSpec

        classes = _model_classes(dataset_classes(ctx.world.signs))
        self.evaluator = Evaluator(self.cfg, load_model(self.cfg.model, self.cfg.checkpoint, classes=classes))
        self.baseline = None if self.cfg.model == "template" else Evaluator(self.cfg, load_model("template",
                                                                                                 classes=classes))
        self._start_detection(ctx)
        cam = self.camera
        if cam is None:
            rec = getattr(ctx.scenario, "recorder", None)
            cam = rec.camera if rec is not None else CameraSpec()
        self._slots = CameraSlots(ctx.world, ["perception"], cam)
        self._world = ctx.world
        self._out = Path(ctx.run_dir) / self.subdir if self.subdir is not None else None

    def on_tick(self, snapshot, ctx) -> None:
        if int(snapshot.frame) % self.cfg.every_k:
            return
        shared = ctx.board.camera_frames
        if shared is not None and shared.frame == int(snapshot.frame) and shared.frames:
            frames = shared.frames
        else:
            self._slots.update(snapshot)
            if "perception" not in self._slots.vehicle_of:
                return
            try:
                frames = {"perception": self._world.read_camera("perception")}
            except FrameMissed:  # a camera (re)attached this tick on CARLA delivers from the next one
                self.frames_missed += 1
                return
        for name, fr in frames.items():
            self.evaluator.add_frame(fr.image, fr.labels, frame=fr.frame, camera=name)
            if self.baseline is not None:
                self.baseline.add_frame(fr.image, fr.labels, frame=fr.frame, camera=name)
            if self.detection is not None:
                self.detection.add_frame(fr.image, fr.labels, frame=fr.frame, camera=name, weather=self._weather)

    def _start_detection(self, ctx) -> None:
        from carla_mr.dataset.detection_eval import make_detection_evaluator, weather_name

        self.detection = make_detection_evaluator(self.cfg)
        self._weather = weather_name(ctx.scenario)

    def close(self) -> None:
        if self._closed or self.evaluator is None or self._out is None:
            self._closed = True
            return
        self._closed = True
        self.files = write_report(self.evaluator.report(), self._out, records=self.evaluator.records)
        if self.detection is not None:
            from carla_mr.dataset.detection_eval import write_detection_report

            self.files.update(write_detection_report(self.detection.report(), self._out))

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """This stage's part of report.md (see :class:`~carla_mr.stages.BaseStage`)."""
        path = run_dir / "perception" / "report.json"
        if not path.is_file():
            return None
        rep = json.loads(path.read_text(encoding="utf-8"))
        table = rep.get("table", [])
        src = [r for r in table if r.get("group") == "source"]

        def draw(ax):
            ax.bar([r["bin"] for r in src], [r["accuracy"] for r in src], color=["tab:blue", "tab:orange"][: len(src)])
            ax.set_ylim(0, 1.05)
            ax.set_ylabel("accuracy")
            ax.set_title(f"Model under test ({rep.get('model')}) by texture source")

        png = plot_png(figs / "perception_by_source.png", draw) if src else None
        rows = [(r["group"], r["bin"], r["n"], r["accuracy"]) for r in table]
        overall = rep.get("overall", {})
        text = (f"Model {rep.get('model')}: accuracy {fmt(overall.get('accuracy'))} "
                f"on {overall.get('n')} crops.\n\n" + md_table(rows, ("group", "bin", "crops", "accuracy"))
                + (f"\n\n![perception](report/{png})\n" if png else "\n"))
        text += _summary_lines((summary.get("stages") or {}).get("perception") or {})
        text += _detection_section(run_dir)
        return ReportSection("Perception in the loop", text,
                             {"n": overall.get("n"), "accuracy": overall.get("accuracy"),
                              "accuracy_by_source": {r["bin"]: r["accuracy"] for r in src}})

    def summary(self) -> dict[str, Any]:
        if self.evaluator is None:
            return {}
        rep = self.evaluator.report()
        by_source = {r["bin"]: r["accuracy"] for r in rep["table"] if r["group"] == "source"}
        out = {"model": rep["model"], "n": rep["overall"]["n"], "accuracy": rep["overall"]["accuracy"],
               "accuracy_by_source": by_source, "frames_missed": self.frames_missed, "files": self.files}
        out.update(_crop_extras(rep))
        if self.baseline is not None:
            base = self.baseline.report()
            out["baseline_template_accuracy_by_source"] = {r["bin"]: r["accuracy"] for r in base["table"]
                                                           if r["group"] == "source"}
        if self.detection is not None:
            from carla_mr.dataset.detection_eval import detection_summary

            out["detection"] = detection_summary(self.detection.report())
        return out


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def _crop_extras(rep: dict) -> dict[str, Any]:
    """Crop accuracy by distance and visibility band, and per source its n and 95% interval."""
    t = rep["table"]
    out: dict[str, Any] = {f"accuracy_by_{g}": {r["bin"]: r["accuracy"] for r in t if r["group"] == g}
                           for g in ("distance", "visibility")}
    out["n_by_source"] = {r["bin"]: r["n"] for r in t if r["group"] == "source"}
    out["accuracy_ci95_by_source"] = {r["bin"]: list(wilson(int(round(r["accuracy"] * r["n"])), r["n"]))
                                      for r in t if r["group"] == "source"}
    return out


def evaluate_scenario(scenario, *, seed: int, model: str | None = None, checkpoint: str | None = None,
                      ticks: Optional[int] = None, world=None, detector: str | None = None,
                      detector_checkpoint: str | None = None) -> dict:
    """Run ``scenario``'s world with the perception stage alone (swaps from the recorder section),
    through a :class:`~carla_mr.runner.Runner`; returns the perception report."""
    from carla_mr.dataset.textures import RecorderSwapsStage
    from carla_mr.runner import Runner

    cfg = scenario.perception
    upd = {k: v for k, v in {"model": model, "checkpoint": checkpoint, "detector": detector,
                             "detector_checkpoint": detector_checkpoint}.items() if v is not None}
    stage = PerceptionStage(cfg.model_copy(update=upd), subdir=None)
    Runner(scenario, Path("."), [RecorderSwapsStage(scenario.recorder), stage], seed, progress=False, world=world,
           ticks=ticks, run_files=False).run()
    rep = stage.evaluator.report()
    rep["source"] = f"scenario:{scenario.name}"
    rep["records"] = stage.evaluator.records
    if stage.detection is not None:
        rep["detection"] = stage.detection.report()
    return rep
