"""The twin as a run stage: predict every AV online, write the predictions, publish accuracy.

Every ``stride`` world ticks (stride = tick rate / the predictor's ``sample_hz``) the stage:

1. pushes the positions of the predicted vehicles (AVs by default) into a :class:`TrackBuffer`;
2. scores the predictions made ``future`` samples ago against what happened (vehicles that
   left or lost their serving history in between are counted as ``lost``, not scored) and
   folds each final error into the per-(AV, RSU) rolling accuracy R (see
   :mod:`carla_mr.twin.accuracy` for the definition);
3. predicts the next ``future`` samples for every vehicle with ``past`` samples of history --
   with ``spread`` (default) the batch is split into ``stride`` chunks predicted on the
   stride's successive ticks (each from the same sample), so no tick carries the whole batch;
4. publishes ``ctx.board.twin_accuracy``: a :class:`~carla_mr.stages.TwinAccuracy`
   (per-AV R in [0, 1] keyed by vehicle id, at the RSU serving it), the market's R_acc.

Gating (a trained model only): constant velocity predicts beside the model, both are scored,
and per vehicle the one with the lower rolling ADE serves (:mod:`carla_mr.twin.gating`). R
comes from the served predictions only; ``served_by`` says which predictor served each.

Files (written atomically when the stage closes):

- ``RUN_DIR/predictions.parquet``: frame, time (when the prediction was made), id, rsu (the RSU
  that made it), step (1..F), target_frame, target_time, x, y (metres, CARLA frame; the served
  prediction), served_by ("model" or the baseline's name). Join it with
  ``trajectories.parquet`` on (frame = target_frame, id).
- ``RUN_DIR/twin_eval.parquet``: one row per scored prediction: frame (when scored), id, rsu,
  ade, fde (m, of the served prediction), hit, r (R of that (AV, RSU) after the update),
  served_by, ade_model and ade_baseline (m; NaN without gating).
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.config.twin import TwinConfig
from carla_mr.errors import InputError
from carla_mr.io import ParquetSink
from carla_mr.reporting import md_table, plot_png
from carla_mr.stages import BaseStage, ReportSection, TwinAccuracy
from carla_mr.twin.accuracy import RollingAccuracy
from carla_mr.twin.buffers import TrackBuffer
from carla_mr.twin.gating import RollingGate
from carla_mr.twin.predictors import BASELINES, ConstantVelocity, Predictor, load_predictor

def resolve_model(model: str, scenario_path: str | os.PathLike | None = None) -> str:
    """A baseline name as is; a relative model path against the scenario's folder, then the cwd."""
    if model in BASELINES:
        return model
    p = Path(model).expanduser()
    cands = [p] if p.is_absolute() else ([Path(scenario_path).resolve().parent / p] if scenario_path else []) + [p]
    for c in cands:
        if (c / "config.json").is_file():
            return str(c)
    raise InputError(f"model '{model}' not found (looked in {', '.join(map(str, cands))}); give a directory saved "
                     f"by 'carla-mr twin train' or one of {BASELINES}", field="twin.model")


def stride_for(sample_hz: float, tick_s: float) -> int:
    """World ticks per twin sample; the sample rate must divide the tick rate."""
    s = 1.0 / (sample_hz * tick_s)
    k = int(round(s))
    if k < 1 or abs(s - k) > 1e-6 * max(1.0, s):
        raise InputError(f"sample rate {sample_hz:g} Hz does not divide the tick rate {1 / tick_s:g} Hz; pick a "
                         f"rate whose period is a whole number of ticks", field="twin.sample_hz")
    return k


@dataclass
class _Pending:
    k: int
    frame: int
    ids: np.ndarray
    rsu: np.ndarray
    pred: np.ndarray  # (M, F, 2) the served prediction
    served_model: np.ndarray  # (M,) bool
    alt: Optional[np.ndarray] = None  # (M, F, 2 ) the prediction not served (gating only)


#: predictions.parquet: one row per (prediction, future step); x, y metres (CARLA frame).
PREDICTION_COLUMNS = (("frame", "int64"), ("time", "float64"), ("id", "int64"), ("rsu", "int32"),
                      ("step", "int16"), ("target_frame", "int64"), ("target_time", "float64"),
                      ("x", "float64"), ("y", "float64"), ("served_by", "string"))
#: twin_eval.parquet: one row per scored prediction; ade, fde metres; r the rolling accuracy after it.
EVAL_COLUMNS = (("frame", "int64"), ("id", "int64"), ("rsu", "int32"), ("ade", "float64"),
                ("fde", "float64"), ("hit", "bool_"), ("r", "float64"), ("served_by", "string"),
                ("ade_model", "float64"), ("ade_baseline", "float64"))
BASELINE = "constant_velocity"


class TwinStage(BaseStage):
    """The ``twin`` stage (see the module docstring). ``predictor`` overrides ``config.model``."""

    name = "twin"

    def __init__(self, config: TwinConfig | None = None, *, predictor: Predictor | None = None):
        self.config = config or TwinConfig(enabled=True)
        self.predictor = predictor
        self.baseline: Predictor | None = None  # set when a trained model is gated against constant velocity
        self.gate: RollingGate | None = None
        self.stride = 1
        self.buffer: TrackBuffer | None = None
        self.accuracy: RollingAccuracy | None = None
        self.latest: TwinAccuracy | None = None
        self._pending: deque[_Pending] = deque()
        self._todo = None  # (k, frame, time, ids, rsu, past, chunks) of the last sample, while predicting
        self._ticks = 0
        self._tick_s = 0.05
        self._sinks: list[ParquetSink] = []
        self._pred_sink = self._eval_sink = None
        self._closed = False
        self._stats = {"samples": 0, "predictions": 0, "scored": 0, "lost": 0, "ade_sum": 0.0, "fde_sum": 0.0,
                       "misses": 0, "served_model": 0, "served_baseline": 0}
        self._step_ms: list[float] = []
        self._map_name: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, ctx) -> None:
        cfg = self.config
        self._tick_s = float(ctx.world.tick_s)
        if self.predictor is None:
            src = getattr(ctx.scenario, "source_path", None)
            self.predictor = load_predictor(resolve_model(cfg.model, src), past=cfg.past, future=cfg.future,
                                            sample_hz=cfg.sample_hz)
        p = self.predictor
        if hasattr(p, "threads"):
            p.threads = cfg.threads
        if getattr(p, "map_inputs", False) and getattr(p, "map", None) is None:
            p.map = _world_map_features(ctx.world)
        self._map_name = getattr(getattr(p, "map", None), "name", None)
        self.stride = stride_for(p.sample_hz, self._tick_s)
        if getattr(p, "kind", None) not in BASELINES:
            self.baseline = ConstantVelocity(p.past, p.future, p.sample_hz)
            self.gate = RollingGate(cfg.accuracy_window)
        self.buffer = TrackBuffer(capacity=p.past + p.future)
        self.accuracy = RollingAccuracy(cfg.accuracy_window, cfg.hit_radius_m, cfg.prior)
        if cfg.write_predictions:
            run_dir = Path(ctx.run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._pred_sink = ParquetSink(run_dir / "predictions.parquet", PREDICTION_COLUMNS)
            self._eval_sink = ParquetSink(run_dir / "twin_eval.parquet", EVAL_COLUMNS)
            self._sinks = [self._pred_sink, self._eval_sink]
        ctx.board.twin_accuracy = self._publish(-1, 0.0, np.zeros(0, np.int64), np.zeros(0, np.int32))

    def on_tick(self, snapshot, ctx) -> None:
        self._ticks += 1
        phase = (self._ticks - 1) % self.stride
        t0 = time.perf_counter()
        if phase == 0:
            self._sample(snapshot, ctx)
        if self._todo is not None:
            self._predict_chunk(phase)
        self._step_ms.append((time.perf_counter() - t0) * 1e3)

    def _sample(self, snapshot, ctx) -> None:
        snap = snapshot.select(snapshot.av_mask) if self.config.vehicles == "av" else snapshot
        p = self.predictor
        buf = self.buffer
        buf.push(snap.ids, snap.x, snap.y, float(snap.time))
        k = buf.k - 1
        self._stats["samples"] += 1
        self._score(k, snap.frame)
        ids, past = buf.last(p.past)
        # the serving RSU of each buffered vehicle (buffer ids are sorted; the snapshot's are not)
        order = np.argsort(snap.ids, kind="stable")
        all_ids = buf.ids
        all_rsu = (np.asarray(snap.rsu, np.int32)[order][np.searchsorted(snap.ids[order], all_ids)]
                   if all_ids.size else np.zeros(0, np.int32))
        rsu = all_rsu[np.searchsorted(all_ids, ids)] if ids.size else np.zeros(0, np.int32)
        n_chunks = self.stride if self.config.spread else 1
        self._todo = (k, int(snap.frame), float(snap.time), ids, rsu, past, np.array_split(np.arange(ids.size),
                                                                                           n_chunks))
        ctx.board.twin_accuracy = self._publish(int(snap.frame), float(snap.time), all_ids, all_rsu)

    def _predict_chunk(self, phase: int) -> None:
        k, frame, t, ids, rsu, past, chunks = self._todo
        if phase >= len(chunks):
            return
        sel = chunks[phase]
        if phase == len(chunks) - 1:
            self._todo = None
        if sel.size == 0:
            return
        pred = np.asarray(self.predictor.predict(past[sel]), np.float64)
        use = np.ones(sel.size, bool)
        alt = None
        if self.gate is not None:
            base = self.baseline.predict(past[sel])
            use = self.gate.use_model(ids[sel])
            served = np.where(use[:, None, None], pred, base)
            alt = np.where(use[:, None, None], base, pred)
            pred = served
        self._pending.append(_Pending(k, frame, ids[sel], rsu[sel], pred, use, alt))
        self._stats["predictions"] += int(sel.size)
        self._stats["served_model"] += int(use.sum()) if self.gate is not None else 0
        self._stats["served_baseline"] += int((~use).sum()) if self.gate is not None else 0
        if self._pred_sink is not None:
            self._write_predictions(frame, t, ids[sel], rsu[sel], pred, self._names(use))

    def _score(self, k: int, frame: int) -> None:
        """Score the predictions made F samples ago (all chunks of that sample at once)."""
        f = self.predictor.future
        items = []
        while self._pending and self._pending[0].k <= k - f:
            item = self._pending.popleft()
            if item.k == k - f:
                items.append(item)
        if not items:
            return
        item = _merge(items)
        mask, hist = self.buffer.get(item.ids, f + 1)
        self._stats["lost"] += int((~mask).sum())
        if not mask.any():
            return
        err = np.linalg.norm(item.pred[mask] - hist[:, 1:], axis=-1)
        ade, fde = err.mean(1), err[:, -1]
        ids, rsu = item.ids[mask], item.rsu[mask]
        use = item.served_model[mask]
        ade_m = ade_b = np.full(ids.size, np.nan)
        if item.alt is not None:
            ade_alt = np.linalg.norm(item.alt[mask] - hist[:, 1:], axis=-1).mean(1)
            ade_m, ade_b = np.where(use, ade, ade_alt), np.where(use, ade_alt, ade)
            self.gate.update(ids, ade_m, ade_b)
        self.accuracy.update(ids, rsu, fde)
        hit = fde <= self.accuracy.hit_radius_m
        s = self._stats
        s["scored"] += int(ids.size)
        s["ade_sum"] += float(ade.sum())
        s["fde_sum"] += float(fde.sum())
        s["misses"] += int((~hit).sum())
        if self._eval_sink is not None:
            r, _ = self.accuracy.lookup(ids, rsu)
            self._eval_sink.add({"frame": np.full(ids.size, frame, np.int64), "id": ids, "rsu": rsu,
                                 "ade": ade, "fde": fde, "hit": hit, "r": r, "served_by": self._names(use),
                                 "ade_model": ade_m, "ade_baseline": ade_b})

    def _names(self, use_model: np.ndarray) -> np.ndarray:
        """Per prediction, the name of the predictor that served it."""
        if self.gate is None:
            return np.full(use_model.size, getattr(self.predictor, "kind", "model"), object)
        return np.where(use_model, "model", BASELINE).astype(object)

    def _write_predictions(self, frame: int, t: float, ids, rsu, pred, served_by) -> None:
        m, f = pred.shape[:2]
        step = np.tile(np.arange(1, f + 1, dtype=np.int16), m)
        self._pred_sink.add({
            "frame": np.full(m * f, frame, np.int64), "time": np.full(m * f, t, np.float64),
            "id": np.repeat(ids, f), "rsu": np.repeat(rsu, f), "step": step,
            "target_frame": frame + step.astype(np.int64) * self.stride,
            "target_time": t + step * (self.stride * self._tick_s),
            "x": pred[..., 0].reshape(-1), "y": pred[..., 1].reshape(-1), "served_by": np.repeat(served_by, f)})

    def _publish(self, frame: int, t: float, ids: np.ndarray, rsu: np.ndarray) -> TwinAccuracy:
        r, n = self.accuracy.lookup(ids, rsu)
        served = None if self.gate is None else self._names(self.gate.use_model(ids)).astype(str)
        self.latest = TwinAccuracy(frame, t, ids.copy(), rsu.astype(np.int32), r, n, self.accuracy.prior,
                                   self.accuracy.hit_radius_m, self.accuracy.window, served)
        return self.latest

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for s in self._sinks:
            s.close()

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """This stage's part of report.md (see :class:`~carla_mr.stages.BaseStage`)."""
        path = run_dir / "twin_eval.parquet"
        if not path.is_file():
            return None
        import pyarrow.parquet as pq

        tab = pq.read_table(path)
        frame = tab.column("frame").to_numpy()
        ade = tab.column("ade").to_numpy()
        fde = tab.column("fde").to_numpy()
        if frame.size == 0:
            return ReportSection("Digital twin", "No prediction was scored (runs shorter than past + future "
                                                 "steps).\n", {})
        bins = np.unique(frame)
        if bins.size > 60:
            edges = np.linspace(frame.min(), frame.max() + 1, 61)
            idx = np.digitize(frame, edges) - 1
            xs = 0.5 * (edges[:-1] + edges[1:])
        else:
            idx = np.searchsorted(bins, frame)
            xs = bins.astype(float)
        cnt = np.bincount(idx, minlength=len(xs))
        keep = cnt > 0
        a = np.bincount(idx, weights=ade, minlength=len(xs))[keep] / cnt[keep]
        f = np.bincount(idx, weights=fde, minlength=len(xs))[keep] / cnt[keep]

        def draw(ax):
            ax.plot(xs[keep], a, label="ADE")
            ax.plot(xs[keep], f, label="FDE")
            ax.set_xlabel("frame")
            ax.set_ylabel("error (m)")
            ax.set_title("Online prediction error over time")
            ax.legend()

        png = plot_png(figs / "twin_error.png", draw)
        stats = {"scored": int(frame.size), "ade_m": float(ade.mean()), "fde_m": float(fde.mean()),
                 "miss_rate": float((fde > 2.0).mean()), "r_mean": float(tab.column("r").to_numpy().mean())}
        text = (md_table([(stats["scored"], stats["ade_m"], stats["fde_m"], stats["miss_rate"], stats["r_mean"])],
                         ("scored predictions", "ADE (m)", "FDE (m)", "miss rate (FDE > 2 m)",
                          "mean R after each score"))
                + "\n\n" + _served_text(tab, stats) + f"![twin](report/{png})\n")
        return ReportSection("Digital twin", text, stats)

    def summary(self) -> dict[str, Any]:
        """Counts, online errors, the share served by each predictor, the step time."""
        s = self._stats
        p = self.predictor
        ms = np.asarray(self._step_ms) if self._step_ms else np.zeros(1)
        out: dict[str, Any] = {
            "model": getattr(p, "kind", None), "model_source": self.config.model,
            "past": getattr(p, "past", None), "future": getattr(p, "future", None),
            "sample_hz": getattr(p, "sample_hz", None), "stride_ticks": self.stride, "vehicles": self.config.vehicles,
            "map_inputs": bool(getattr(p, "map_inputs", False)), "map": getattr(self, "_map_name", None),
            "samples": s["samples"], "predictions": s["predictions"], "scored": s["scored"],
            "lost_before_truth": s["lost"],
            "online": {"ade_m": s["ade_sum"] / s["scored"] if s["scored"] else None,
                       "fde_m": s["fde_sum"] / s["scored"] if s["scored"] else None,
                       "miss_rate": s["misses"] / s["scored"] if s["scored"] else None},
            "step_ms": {"mean": float(ms.mean()), "p95": float(np.percentile(ms, 95)), "max": float(ms.max())},
            "files": [str(x.path.name) for x in self._sinks],
        }
        if self.gate is not None:
            n = max(s["predictions"], 1)
            out["served_share"] = {"model": s["served_model"] / n, BASELINE: s["served_baseline"] / n}
        if self.latest is not None:
            out["accuracy_per_rsu"] = self.latest.per_rsu()
        return out


def _served_text(tab, stats: dict) -> str:
    """The share of scored predictions served by each predictor, and each one's online ADE."""
    if "served_by" not in tab.column_names:
        return ""
    served = np.asarray(tab.column("served_by").to_numpy(zero_copy_only=False)).astype(str)
    ade = tab.column("ade").to_numpy()
    rows = []
    for name in np.unique(served):
        m = served == name
        stats[f"served_share_{name}"] = float(m.mean())
        rows.append((name, int(m.sum()), float(m.mean()), float(ade[m].mean())))
    text = md_table(rows, ("served by", "scored predictions", "share", "ADE of the served (m)")) + "\n\n"
    am = tab.column("ade_model").to_numpy()
    ab = tab.column("ade_baseline").to_numpy()
    if np.isfinite(am).any():
        stats["ade_model_m"] = float(np.nanmean(am))
        stats["ade_baseline_m"] = float(np.nanmean(ab))
        text += (f"Gating: had every prediction come from the model, online ADE {stats['ade_model_m']:.3f} m; "
                 f"from constant velocity, {stats['ade_baseline_m']:.3f} m; served: {stats['ade_m']:.3f} m. "
                 f"R (the market's R_acc) counts the served predictions only.\n\n")
    return text


def _world_map_features(world):
    """The MapFeatures of the world's map (built once, look-ahead warmed), or None (the model then
    gets its map-less inputs): the world's ``carla.Map``, else one parsed from its ``xodr_path``."""
    import logging

    from carla_mr.twin.map_features import MapFeatures

    cmap = world.map  # declared on World (None until the world knows its map)
    info = world.map_info()
    name = Path(info.get("xodr_path")).stem if info.get("xodr_path") else str(getattr(cmap, "name", "map"))
    try:
        if cmap is None and info.get("xodr_path"):
            from carla_mr.world.maps import load_map

            cmap = load_map(info["xodr_path"])
        if cmap is None:
            logging.getLogger(__name__).warning("twin: the world has no map; the model serves without map inputs")
            return None
        return MapFeatures(cmap, name=name).warm()
    except (InputError, AttributeError, RuntimeError, TypeError) as exc:
        logging.getLogger(__name__).warning("twin: no map inputs (%s); the model serves without them", exc)
        return None


def _merge(items: list) -> "_Pending":
    """One pending batch from the chunks of one sample (disjoint vehicles)."""
    if len(items) == 1:
        return items[0]
    alt = None if items[0].alt is None else np.concatenate([i.alt for i in items])
    return _Pending(items[0].k, items[0].frame, np.concatenate([i.ids for i in items]),
                    np.concatenate([i.rsu for i in items]), np.concatenate([i.pred for i in items]),
                    np.concatenate([i.served_model for i in items]), alt)
