"""GenaiStage: the market's GPU-time schedule drives sign generation, scored and swapped in.

For every published market round (``ctx.board.market_round``, a
:class:`~carla_mr.stages.MarketRound` from :class:`~carla_mr.market.stage.MarketStage`) each
served window is a generation job: the
window's simulator generates, for the window's AV, the signs nearest that AV (traffic lights
excluded, within ``genai.swap_radius_m``), each as ``"a {sign} sign on a {colour} background"``
with the AV's preferred background colour (its preference cache, drawn once per AV from
``genai.preferences`` with the run's seed). A job starts when the simulation clock reaches its
slot (round time + ``start_s``) and its wall time is recorded beside the slot's length.

Every image is scored by the validator (recognised as the prompted class or not); the running
share recognised is the generative score G, published as ``ctx.board.generation_scores`` (a
:class:`~carla_mr.stages.GenerationScores`, one entry per market simulator) with theta
(``genai.theta_value``, else unmeasured: the market's default) for the next market round. Recognised
images (all, with ``swap_only_recognised: false``) are swapped onto their signs with
``world.apply_sign_textures``. Images and a manifest (prompt, seed, model, class, verdict,
confidence, sign, vehicle, round, simulator, slot) go to ``RUN_DIR/genai/``.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.config.genai import GenaiConfig
from carla_mr.reporting import md_table, plot_png, read_jsonl
from carla_mr.stages import BaseStage, GenerationScores, ReportSection, RunContext
from carla_mr.world.base import SignTexture, Snapshot

TEXTURE_PX = 128  # generated images are upscaled to this many pixels for the sign face


class GenaiStage(BaseStage):
    name = "genai"

    def __init__(self, config: GenaiConfig, n_simulators: int = 1):
        """``n_simulators``: the market's simulators K (the length of the published scores)."""
        self.config = config
        self.n_simulators = max(1, int(n_simulators))
        self._closed = False
        self._seen_rounds: set[int] = set()
        self._queue: list[dict] = []
        self._jobs = 0
        self._images = 0
        self._recognised = 0
        self._swapped: set[str] = set()
        self._wall = 0.0
        self._slot = 0.0
        self._per_round: list[dict] = []

    def start(self, ctx: RunContext) -> None:
        from carla_mr.genai.api import load_default_generator, load_default_validator

        self.model = load_default_generator(self.config.checkpoint)
        self.validator = load_default_validator(self.config.validator)
        self.model_name = str(self.config.checkpoint or "carla_mr default base model")
        self.seed = int(ctx.seed)
        self.dir = Path(ctx.run_dir) / "genai"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.dir / "manifest.jsonl"
        self.manifest.write_text("")
        signs = ctx.world.signs
        self.sign_ok = np.array([k not in ("traffic_light", "other") and k in self.config.preferences.signs
                                 for k in signs.kind.astype(str)], dtype=bool)
        self.theta = np.full(self.n_simulators, np.nan if self.config.theta_value is None
                             else float(self.config.theta_value))
        if self.config.theta_value is not None:
            ctx.board.generation_scores = GenerationScores(G=np.full(self.n_simulators, np.nan), theta=self.theta,
                                                           images=np.zeros(self.n_simulators, np.int64))

    def _colour(self, vehicle_id: int) -> str:
        colours = self.config.preferences.colours
        h = zlib.crc32(f"{self.seed}:{vehicle_id}".encode())
        return colours[h % len(colours)]

    # ---------------------------------------------------------------- per tick
    def on_tick(self, snapshot: Snapshot, ctx: RunContext) -> None:
        rnd = ctx.board.market_round
        if rnd is not None and rnd.round_id not in self._seen_rounds:
            self._seen_rounds.add(rnd.round_id)
            windows = [w for w in rnd.windows() if w["vehicle_id"] is not None and w["duration_s"] > 0]
            for w in windows[: self.config.jobs_per_round]:
                self._queue.append({**w, "round_id": rnd.round_id, "due": rnd.time + w["start_s"]})
        due = [j for j in self._queue if j["due"] <= snapshot.time + 1e-9]
        if not due:
            return
        self._queue = [j for j in self._queue if j["due"] > snapshot.time + 1e-9]
        for job in due:
            self._run_job(job, snapshot, ctx)

    def _run_job(self, job: dict, snap: Snapshot, ctx: RunContext) -> None:
        from carla_mr.genai.api import generate, score
        from carla_mr.genai.prompts import prompt_for

        world = ctx.world
        signs = world.signs
        where = np.flatnonzero(snap.ids == job["vehicle_id"])
        if where.size == 0 or not self.sign_ok.any():
            return
        i = where[0]
        dist = np.hypot(signs.x - snap.x[i], signs.y - snap.y[i])
        dist = np.where(self.sign_ok & (dist <= self.config.swap_radius_m), dist, np.inf)
        picks = np.argsort(dist, kind="stable")[: self.config.signs_per_job]
        picks = picks[np.isfinite(dist[picks])]
        if picks.size == 0:
            return
        colour = self._colour(int(job["vehicle_id"]))
        kinds = [str(signs.kind[p]) for p in picks]
        prompts = [prompt_for(k, colour, token=self.config.token) for k in kinds]
        seed = int(zlib.crc32(f"{self.seed}:{job['round_id']}:{job['vehicle_id']}:{job['task']}".encode()))
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # idle OpenMP threads would spin against libsumo in the same tick loop
        t0 = time.perf_counter()
        try:
            images = generate(self.model, prompts, seed=seed, steps=self.config.steps,
                              guidance=self.config.guidance, sampler=self.config.sampler)
            verdict = score(self.validator, images, kinds)
        finally:
            torch.set_num_threads(threads)
        wall = time.perf_counter() - t0
        self._jobs += 1
        self._wall += wall
        self._slot += float(job["duration_s"])
        import cv2

        from carla_mr.io import atomic_write_bytes

        textures = {}
        rdir = self.dir / f"round-{int(job['round_id']):06d}"
        lines = []
        for b, p in enumerate(picks):
            sid = str(signs.ids[p])
            name = f"job{self._jobs:05d}-{b}-sign-{sid}.png"
            ref = f"genai/{rdir.name}/{name}"
            ok, png = cv2.imencode(".png", cv2.cvtColor(images[b], cv2.COLOR_RGB2BGR))
            if ok:
                atomic_write_bytes(rdir / name, png.tobytes())
            recognised = bool(verdict["recognised"][b])
            self._images += 1
            self._recognised += recognised
            swap = recognised or not self.config.swap_only_recognised
            if swap:
                big = cv2.resize(images[b], (TEXTURE_PX, TEXTURE_PX), interpolation=cv2.INTER_CUBIC)
                textures[sid] = SignTexture(source="generated", ref=ref, image=np.ascontiguousarray(big))
            lines.append({"round_id": job["round_id"], "sim_id": job["sim_id"], "vehicle_id": job["vehicle_id"],
                          "task": job["task"], "slot_s": job["duration_s"], "wall_s": wall / len(picks),
                          "sign_id": sid, "class": kinds[b], "prompt": prompts[b], "seed": seed + b,
                          "model": self.model_name, "predicted": verdict["predicted"][b],
                          "confidence": float(verdict["confidence"][b]), "recognised": recognised,
                          "swapped": swap, "image": ref})
        if textures:
            world.apply_sign_textures(textures)
            self._swapped.update(textures)
        with open(self.manifest, "a", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line) + "\n")
        G = self._recognised / self._images if self._images else None
        # one running G for every traffic simulator (index 0, the driving simulator, does not generate)
        g = np.full(self.n_simulators, np.nan)
        g[1:] = G
        images = np.zeros(self.n_simulators, np.int64)
        images[1:] = self._images
        ctx.board.generation_scores = GenerationScores(G=g, theta=self.theta, images=images,
                                                       round_id=int(job["round_id"]))
        self._per_round.append({"round_id": job["round_id"], "G_job": float(verdict["G"]), "G_running": G,
                                "time": snap.time})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.model = None
        self.validator = None

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """This stage's part of report.md (see :class:`~carla_mr.stages.BaseStage`)."""
        lines = read_jsonl(run_dir / "genai" / "manifest.jsonl")
        if not lines:
            return None
        rid = np.array([x["round_id"] for x in lines])
        rec = np.array([bool(x["recognised"]) for x in lines], dtype=float)
        rounds = np.unique(rid)
        g = np.array([rec[rid == r].mean() for r in rounds])

        def draw(ax):
            ax.plot(rounds, g, marker="o", label="G per round")
            ax.plot(rounds, np.cumsum([rec[rid == r].sum() for r in rounds]) / np.cumsum(
                [(rid == r).sum() for r in rounds]), label="running G")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("market round")
            ax.set_ylabel("generative score G")
            ax.set_title("Validator-recognised share of generated signs")
            ax.legend()

        png = plot_png(figs / "genai_G.png", draw)
        by_class: dict[str, list[float]] = {}
        for x, r in zip(lines, rec):
            by_class.setdefault(x["class"], []).append(r)
        rows = [(k, len(v), float(np.mean(v))) for k, v in sorted(by_class.items())]
        swapped = sum(bool(x.get("swapped")) for x in lines)
        stats = {"images": len(lines), "G": float(rec.mean()), "swapped": swapped}
        text = (f"{len(lines)} images in {rounds.size} rounds, G = {rec.mean():.3f}, "
                f"{swapped} swapped onto in-world signs.\n\n" + md_table(rows, ("class", "images", "G"))
                + f"\n\n![G](report/{png})\n")
        return ReportSection("Generated signs", text, stats)

    def summary(self) -> dict[str, Any]:
        G: Optional[float] = self._recognised / self._images if self._images else None
        return {"jobs": self._jobs, "images": self._images, "recognised": self._recognised, "G": G,
                "signs_swapped": len(self._swapped), "pending_jobs": len(self._queue),
                "generation_wall_s": self._wall, "scheduled_gpu_s": self._slot,
                "per_job": self._per_round[-50:]}
