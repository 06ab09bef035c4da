"""The dataset recorder: camera frames + exact sign labels, in COCO and YOLO, resumable.

Layout of a dataset directory (one sub-folder per camera slot ``cam0``, ``cam1``, ...)::

    manifest.json              format, seed, scenario, recorder config, classes, cameras, swaps
    images/cam0/000120.png     the frame (RGB; PNG or JPEG)
    labels/cam0/000120.txt     YOLO: "class cx cy w h" normalised to the image
    meta/cam0/000120.json      intrinsics, cam_to_world, extrinsics, ego pose, all labels (with COCO RLE masks)
    depth/cam0/000120.png      depth in centimetres along the camera axis, 16-bit (or .npy metres), OpenGL camera
    annotations.json           COCO (images, annotations, categories), rebuilt from meta/
    data.yaml, classes.txt     YOLO class names
    progress.json              frames recorded so far, last frame, complete flag

Every file is written atomically (temp + rename). A frame is committed when its meta file
exists and the image it names has the recorded size; a run stopped at any point (kill,
Ctrl-C, disk full) resumes with the same command: the world is replayed from the seed
without rendering up to the first uncommitted frame, and everything from there on is
written again. The world must be deterministic for a seed (both backends are).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from carla_mr.config.dataset import RecorderConfig
from carla_mr.errors import InputError, RunError
from carla_mr.io import atomic_write, atomic_write_json, atomic_write_text, fsync_dir, to_jsonable
from carla_mr.reporting import md_table
from carla_mr.stages import BaseStage, CameraFrames, ReportSection
from carla_mr.world.base import CameraFrame, FrameMissed, Snapshot, World
from carla_mr.world.render import carla_matrix
from carla_mr.world.sign_geometry import class_name

from carla_mr.dataset.diversity import LabelCounts, StationaryGate, why_no_labels
from carla_mr.dataset.formats import exported_box
from carla_mr.dataset.slots import CameraSlots
from carla_mr.dataset.textures import swaps_for

FORMAT = "carla_mr.dataset/1"
#: errno values that mean "the disk will not take more": stop cleanly, keep what is saved.
STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}


def dataset_classes(signs, kinds: Optional[list[str]] = None) -> list[str]:
    """Sorted label classes (``kind`` or ``kind_value``) of the world's signs, filtered by kind;
    with speed-limit signs also the generic ``speed_limit`` and every value class the
    validator reads, the labels a generated face may carry (docs/genai.md, "G")."""
    out = set()
    for i in range(len(signs)):
        k = str(signs.kind[i])
        if kinds is not None and k not in kinds:
            continue
        v = float(signs.value[i])
        out.add(class_name(k, v if np.isfinite(v) else None))
        if k == "speed_limit":  # what a generated face may be labelled (SignTexture.label_class)
            from carla_mr.config.vocab import SPEED_VALUES

            out.update(["speed_limit"] + [class_name(k, float(x)) for x in SPEED_VALUES])
    return sorted(out)


def _pixel_box(box) -> list[int]:
    """Integer pixel box [x0, y0, x1, y1] (x1/y1 exclusive) covering a float box."""
    x0, y0, x1, y1 = (float(b) for b in box)
    return [int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))]


def normalise_label(lab: dict) -> dict:
    """A CameraFrame label with every key the exports use, whatever the backend filled in:
    the contract keys (id, kind, value, box, visible, distance, source, ref) plus ``class``,
    ``visible_box`` (default: ``box``) and ``pixels`` (default: box area x visible)."""
    out = dict(lab)
    v = out.get("value")
    if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v)):
        v = None
    out["value"] = v
    out.setdefault("class", class_name(str(out["kind"]), v))
    box = _pixel_box(out["box"])
    out["box"] = box
    out["visible_box"] = _pixel_box(out.get("visible_box") or box)
    out.setdefault("pixels", int(round((box[2] - box[0]) * (box[3] - box[1]) * float(out.get("visible", 1.0)))))
    out.setdefault("source", "original")
    out.setdefault("ref", None)
    out["amodal_bbox"] = _pixel_box(out.get("amodal_bbox") or box)
    return out


def label_mask_rle(lab: dict, instance: Optional[np.ndarray], h: int, w: int) -> dict:
    """COCO RLE (``{"size": [h, w], "counts": str}``) of a label's visible pixels: where the
    frame's instance buffer holds the label's ``instance``, else its ``visible_box``."""
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8, order="F")
    x0, y0, x1, y1 = lab["visible_box"]
    if instance is not None and lab.get("instance"):
        a0, b0, a1, b1 = lab.get("amodal_bbox") or lab["box"]
        a0, b0, a1, b1 = max(0, int(a0)), max(0, int(b0)), min(w, int(a1)), min(h, int(b1))
        m[b0:b1, a0:a1] = instance[b0:b1, a0:a1] == int(lab["instance"])
    else:
        m[max(0, y0):y1, max(0, x0):x1] = 1
    rle = mask_utils.encode(m)
    return {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}


def depth_bytes(depth: np.ndarray, fmt: str) -> bytes:
    """A depth image (metres) as 16-bit PNG bytes (centimetres, clipped to 655.35 m; 0 = sky)
    or as .npy bytes (float32 metres)."""
    import io

    if fmt == "npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(depth, np.float32))
        return buf.getvalue()
    import cv2

    cm = np.clip(np.round(np.asarray(depth, np.float64) * 100.0), 0, 65535).astype(np.uint16)
    ok, enc = cv2.imencode(".png", cm, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - OpenCV failure
        raise RunError("could not encode a depth image")
    return enc.tobytes()


def _storage_error(exc: OSError, what: str, saved: int) -> RunError:
    return RunError(f"recording stopped while writing {what}: {exc.strerror or exc} (errno {exc.errno}); "
                    f"the {saved} frame(s) committed before are intact. Free space / fix permissions and run "
                    f"the same command again to resume.")


def _fingerprint(manifest) -> object:
    """The manifest without what may change between a recording and its resumption (its length)."""
    if not isinstance(manifest, dict):
        return manifest
    m = json.loads(json.dumps(manifest))
    m.get("recorder", {}).pop("max_frames", None)
    m.get("scenario", {}).pop("duration_s", None)
    if isinstance(m.get("scenario", {}).get("recorder"), dict):
        m["scenario"]["recorder"].pop("max_frames", None)
    return m


class Recorder:
    """Records the cameras of a world into ``root``. Use ``start(world)``, then
    ``on_snapshot(snapshot)`` for every tick (in order, from frame 0), then ``close()``.
    """

    def __init__(self, cfg: RecorderConfig, root: str | os.PathLike, *, seed: int, scenario: Any = None):
        self.cfg = cfg
        self.root = Path(root)
        self.seed = int(seed)
        self.scenario = scenario
        self.world: Optional[World] = None
        self.slots = [f"cam{i}" for i in range(cfg.cameras)]
        self.vehicle_of: dict[str, int] = {}
        self.classes: list[str] = []
        self.frames_recorded = 0
        self.frames_missed = 0  # camera images that did not arrive for their tick (skipped)
        self.frames_skipped = 0
        self.last_frame = -1
        self.resume_from = 0
        self.labels_exported = 0
        self._pending: list[Path] = []
        self._since_sync = 0
        self._closed = False
        self._started = False
        self._warmup = 0
        self.done = False
        self._gate = StationaryGate(cfg.skip_stationary_after_s, cfg.stationary_speed_mps)
        self._label_counts = LabelCounts()

    # -- setup ----------------------------------------------------------------------------
    def _tick_s(self) -> float:
        return float(self.world.tick_s)

    def manifest(self, swaps: Mapping[str, Any]) -> dict:
        sc = self.scenario
        return to_jsonable({
            "format": FORMAT,
            "seed": self.seed,
            "scenario": sc.model_dump(mode="json") if hasattr(sc, "model_dump") else sc,
            "recorder": self.cfg.model_dump(mode="json"),
            "classes": self.classes,
            "cameras": {s: self.cfg.camera.model_dump(mode="json") for s in self.slots},
            "tick_s": self._tick_s(),
            "swaps": {sid: {"source": t.source, "ref": t.ref} for sid, t in sorted(swaps.items())},
        })

    def start(self, world: World) -> None:
        self.world = world
        self._cams = CameraSlots(world, self.slots, self.cfg.camera)
        self.vehicle_of = self._cams.vehicle_of
        self._warmup = int(round(self.cfg.warmup_s / self._tick_s()))
        self.classes = dataset_classes(world.signs, self.cfg.kinds)
        swaps = swaps_for(self.cfg, world.signs, self.seed)
        if swaps:
            world.apply_sign_textures(swaps)
        manifest = self.manifest(swaps)
        mpath = self.root / "manifest.json"
        try:
            if mpath.is_file():
                try:
                    old = json.loads(mpath.read_text(encoding="utf-8"))
                except (ValueError, UnicodeDecodeError):
                    old = None
                new = json.loads(json.dumps(manifest))
                if _fingerprint(old) != _fingerprint(new):
                    raise InputError(f"{self.root} holds a recording made with another scenario, config or seed; "
                                     f"pick another --out (or the same settings to resume it)", field="--out")
                self.resume_from = self._first_uncommitted()
                self._remove_stale_temps()
                if old != new:  # only the length changed: the recording is being extended
                    atomic_write_json(mpath, manifest)
            else:
                self.root.mkdir(parents=True, exist_ok=True)
                atomic_write_json(mpath, manifest)
            names = "\n".join(self.classes) + "\n"
            atomic_write_text(self.root / "classes.txt", names)
            atomic_write_text(self.root / "data.yaml", "# YOLO dataset (carla_mr)\npath: .\ntrain: images\n"
                              "val: images\nnames:\n" + "".join(f"  {i}: {json.dumps(c)}\n"
                                                                 for i, c in enumerate(self.classes)))
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise _storage_error(exc, str(mpath), 0) from exc
            raise
        self._started = True

    # -- resume -----------------------------------------------------------------------------
    def _paths(self, slot: str, frame: int) -> tuple[Path, Path, Path]:
        ext = "jpg" if self.cfg.image_format == "jpg" else "png"
        stem = f"{frame:06d}"
        return (self.root / "images" / slot / f"{stem}.{ext}", self.root / "labels" / slot / f"{stem}.txt",
                self.root / "meta" / slot / f"{stem}.json")

    def _committed(self, frame: int) -> bool:
        for slot in self.slots:
            img, yolo, meta = self._paths(slot, frame)
            try:
                m = json.loads(meta.read_text(encoding="utf-8"))
                if img.stat().st_size != int(m["image_bytes"]) or not yolo.is_file():
                    return False
            except (OSError, ValueError, KeyError, TypeError):
                return False
        return True

    def _remove_stale_temps(self) -> None:
        """Delete temp files a killed run left behind (``.<name>.*.tmp``, never renamed)."""
        for p in self.root.rglob(".*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass

    def _recordable(self, frame: int) -> bool:
        if frame < self._warmup or (frame - self._warmup) % self.cfg.every_k:
            return False
        idx = (frame - self._warmup) // self.cfg.every_k
        return self.cfg.max_frames is None or idx < self.cfg.max_frames

    def _first_uncommitted(self) -> int:
        frame = self._warmup
        while self._committed(frame):
            frame += self.cfg.every_k
        return frame

    # -- the tick ---------------------------------------------------------------------------
    def on_snapshot(self, snap: Snapshot) -> dict[str, CameraFrame]:
        """Record this tick if it is due; returns the frames rendered (empty when not due)."""
        if not self._started:
            raise RunError("Recorder.on_snapshot() before start()")
        self._cams.update(snap)
        self._gate.update(snap, self.vehicle_of)
        f = int(snap.frame)
        if self.cfg.max_frames is not None and f >= self._warmup + (self.cfg.max_frames - 1) * self.cfg.every_k:
            self.done = True  # this is the last recordable tick (or past it)
        if not self._recordable(f):
            return {}
        if f < self.resume_from:
            self.frames_skipped += 1
            return {}
        frames = {}
        for slot in self.slots:
            if slot not in self.vehicle_of:
                continue
            if self._gate.skip(slot, snap.time):  # a near-duplicate of the frames before
                self._gate.count(slot)
                continue
            try:
                fr = self.world.read_camera(slot)
            except FrameMissed:  # e.g. a CARLA camera attached this tick delivers from the next one
                self.frames_missed += 1
                continue
            self._write(slot, fr)
            frames[slot] = fr
        if not frames:  # no vehicle to carry a camera at this tick
            return frames
        self.frames_recorded += 1
        self.last_frame = f
        self._since_sync += 1
        if self._since_sync >= self.cfg.durable_every:
            self._sync()
        return frames

    def _exported(self, lab: dict) -> tuple[bool, list[int]]:
        box = exported_box(lab, self.cfg.box)
        x0, y0, x1, y1 = box
        ok = (min(x1 - x0, y1 - y0) >= self.cfg.min_box_px and lab["visible"] >= self.cfg.min_visible
              and (self.cfg.kinds is None or lab["kind"] in self.cfg.kinds) and lab["class"] in self.classes)
        return ok, box

    def _write(self, slot: str, fr: CameraFrame) -> None:
        import cv2

        img_p, yolo_p, meta_p = self._paths(slot, fr.frame)
        h, w = fr.image.shape[:2]
        bgr = cv2.cvtColor(fr.image, cv2.COLOR_RGB2BGR)
        if self.cfg.image_format == "jpg":
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        else:
            ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, self.cfg.png_compression])
        if not ok:  # pragma: no cover - OpenCV failure
            raise RunError(f"could not encode frame {fr.frame}")
        data = buf.tobytes()
        labels, lines = [], []
        for lab in map(normalise_label, fr.labels):
            ok_lab, box = self._exported(lab)
            self._label_counts.add(lab, box, self.cfg, self.classes)
            labels.append(dict(lab, exported=ok_lab, mask=label_mask_rle(lab, fr.instance, h, w)))
            if ok_lab:
                x0, y0, x1, y1 = box
                cls = self.classes.index(lab["class"])
                lines.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                             f"{(y1 - y0) / h:.6f}\n")
        spec = self.cfg.camera
        meta = {
            "frame": int(fr.frame), "time": float(fr.time), "camera": slot, "vehicle_id": self.vehicle_of[slot],
            "image": str(img_p.relative_to(self.root)), "image_bytes": len(data), "width": w, "height": h,
            "intrinsics": fr.intrinsics, "cam_to_world": fr.cam_to_world,
            "extrinsics": {"x": spec.x, "y": spec.y, "z": spec.z, "pitch": spec.pitch, "yaw": spec.yaw,
                           "roll": spec.roll,
                           "cam_to_vehicle": carla_matrix(spec.x, spec.y, spec.z, spec.pitch, spec.yaw, spec.roll)},
            "ego": dict(zip(("x", "y", "z", "yaw"), fr.ego)),
            "labels": labels,
        }
        depth_p = None
        if fr.depth is not None and self.cfg.depth != "none":
            depth_p = self.root / "depth" / slot / f"{fr.frame:06d}.{'npy' if self.cfg.depth == 'npy' else 'png'}"
            dbytes = depth_bytes(fr.depth, self.cfg.depth)
            meta["depth"] = {"file": str(depth_p.relative_to(self.root)), "format": self.cfg.depth,
                             "metres_per_unit": 1.0 if self.cfg.depth == "npy" else 0.01}
        what = str(img_p)
        try:
            if depth_p is not None:
                what = str(depth_p)
                atomic_write(depth_p, lambda fh: fh.write(dbytes), fsync=False)
                self._pending.append(depth_p)
            what = str(img_p)
            atomic_write(img_p, lambda fh: fh.write(data), fsync=False)
            what = str(yolo_p)
            atomic_write(yolo_p, lambda fh: fh.write("".join(lines)), binary=False, fsync=False)
            what = str(meta_p)
            text = json.dumps(to_jsonable(meta)) + "\n"
            atomic_write(meta_p, lambda fh: fh.write(text), binary=False, fsync=False)
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise _storage_error(exc, what, self.frames_recorded + self.frames_skipped) from exc
            raise
        self._pending += [img_p, yolo_p, meta_p]
        self.labels_exported += len(lines)

    def _sync(self) -> None:
        """Make the files written since the last sync durable (fsync files, then folders)."""
        dirs = set()
        for p in self._pending:
            try:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                dirs.add(p.parent)
            except OSError:
                pass
        for d in dirs:
            fsync_dir(d)
        self._pending = []
        self._since_sync = 0

    # -- finish -------------------------------------------------------------------------------
    def close(self, *, complete: bool | None = None) -> None:
        """Sync, rebuild annotations.json from meta/ and write progress.json (idempotent)."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self._sync()
        try:
            from carla_mr.dataset.formats import build_coco

            atomic_write_json(self.root / "annotations.json", build_coco(self.root, self.classes), indent=None)
            atomic_write_json(self.root / "progress.json", {
                "frames": self.count_committed(), "last_frame": self.last_committed(),
                "complete": bool(self.done if complete is None else complete)})
        except OSError as exc:
            if exc.errno in STORAGE_ERRNOS:
                raise _storage_error(exc, "annotations.json", self.count_committed()) from exc
            raise

    def count_committed(self) -> int:
        return len(list((self.root / "meta" / self.slots[0]).glob("*.json"))) if (self.root / "meta").is_dir() else 0

    def last_committed(self) -> int:
        d = self.root / "meta" / self.slots[0]
        names = sorted(p.stem for p in d.glob("*.json")) if d.is_dir() else []
        return int(names[-1]) if names else -1

    def summary(self) -> dict[str, Any]:
        """Counters of the recording. ``complete``: every due tick of the recording's span was
        processed (``max_frames`` reached, or the run ran its whole duration); False when it
        was stopped (Ctrl-C, an error) and can be resumed."""
        out = {"dir": str(self.root), "frames_recorded": self.frames_recorded, "frames_resumed_over":
               self.frames_skipped, "resume_from_frame": self.resume_from, "labels_exported": self.labels_exported,
               "frames_missed": self.frames_missed, "classes": len(self.classes), "cameras": len(self.slots),
               "last_frame": self.last_frame, "complete": self.done}
        out.update(self._diversity_summary())
        return out

    def _diversity_summary(self) -> dict[str, Any]:
        """Frames skipped as stationary, label filter counts, and why no label was exported (if so)."""
        out: dict[str, Any] = {"frames_skipped_stationary": int(sum(self._gate.skipped.values())),
                               "skip_stationary_after_s": self.cfg.skip_stationary_after_s,
                               "labels_in_view": self._label_counts.seen,
                               "labels_filtered": dict(self._label_counts.rejected)}
        if self.labels_exported == 0 and self.world is not None:
            why = why_no_labels(self.world.signs, self.cfg, self.classes, self._label_counts,
                                self.frames_recorded + self.frames_skipped)
            if why:
                out["no_labels_because"] = why
        return out


class RecorderStage(BaseStage):
    """The recorder as a stage: records ``ctx.run_dir / subdir`` (``subdir=""``: the run
    directory itself).

    Publishes the frames it renders as ``ctx.board.camera_frames`` so the perception stage
    does not render them again. With ``stop_when_done`` (a recording on its own) it asks the
    runner to stop once ``max_frames`` are recorded. ``on_frame(1)`` is called after each
    recorded tick (progress bars). The recording is marked complete when the run completed.
    """

    name = "recorder"

    def __init__(self, cfg: RecorderConfig, *, subdir: str = "dataset", stop_when_done: bool = False,
                 on_frame: Optional[Callable[[int], None]] = None):
        self.cfg = cfg
        self.subdir = subdir
        self.stop_when_done = stop_when_done
        self.on_frame = on_frame
        self.recorder: Optional[Recorder] = None
        self._ctx = None

    def start(self, ctx) -> None:
        self._ctx = ctx
        self.recorder = Recorder(self.cfg, Path(ctx.run_dir) / self.subdir, seed=ctx.seed, scenario=ctx.scenario)
        self.recorder.start(ctx.world)

    def on_tick(self, snapshot: Snapshot, ctx) -> None:
        frames = self.recorder.on_snapshot(snapshot)
        if frames:
            ctx.board.camera_frames = CameraFrames(frame=int(snapshot.frame), frames=frames)
            if self.on_frame is not None:
                self.on_frame(1)
        if self.stop_when_done and self.recorder.done:
            ctx.request_stop(f"recorded max_frames={self.cfg.max_frames}")

    def close(self) -> None:
        if self.recorder is not None:
            completed = bool(self._ctx is not None and self._ctx.completed)
            self.recorder.done = self.recorder.done or completed  # max_frames reached, or the whole run
            self.recorder.close(complete=self.recorder.done)

    def summary(self) -> dict[str, Any]:
        return self.recorder.summary() if self.recorder is not None else {}

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """The recording's counters from the run summary."""
        rec = (summary.get("stages") or {}).get("recorder")
        if not rec:
            return None
        rows = [(k, v) for k, v in rec.items() if not isinstance(v, (dict, list))]
        return ReportSection("Dataset", md_table(rows, ("metric", "value")) + "\n")


def record(scenario, out: str | os.PathLike, *, seed: Optional[int] = None, cfg: Optional[RecorderConfig] = None,
           ticks: Optional[int] = None, world=None, on_frame=None, world_factory=None) -> dict[str, Any]:
    """Record ``scenario`` into ``out`` (resuming what is there). Returns the summary.

    The recorder runs as the only stage of a :class:`~carla_mr.runner.Runner` (the one loop).
    ``world`` (constructed, not reset) or ``world_factory(scenario, seed)`` default to the
    scenario's backend; ``ticks`` to what ``max_frames`` needs when set, else the scenario's
    duration; ``on_frame(n)`` is called after each recorded tick (progress bars).
    """
    from carla_mr.runner import Runner

    cfg = cfg or scenario.recorder
    seed = int(scenario.seed if seed is None else seed)
    if ticks is None:
        if cfg.max_frames is not None:  # as many ticks as the frames need, whatever the duration
            warm = int(round(cfg.warmup_s / float(scenario.tick_s)))
            ticks = warm + (cfg.max_frames - 1) * cfg.every_k + 1
        else:
            ticks = scenario.ticks
    stage = RecorderStage(cfg, subdir="", stop_when_done=True, on_frame=on_frame)
    Runner(scenario, out, [stage], seed, progress=False, world=world, world_factory=world_factory, ticks=int(ticks),
           run_files=False).run()
    return stage.summary()
