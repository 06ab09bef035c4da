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
from carla_mr.config.vocab import SPEED_VALUES
from carla_mr.genai.scores import read_matches
from carla_mr.reporting import md_table, plot_png, read_jsonl
from carla_mr.stages import BaseStage, GenerationScores, ReportSection, RunContext
from carla_mr.world.base import SignTexture, Snapshot

TEXTURE_PX = 128  # generated images are upscaled to this many pixels for the sign face
#: A generated speed-limit face is labelled with the value the validator read only when it read
#: it with at least this probability; else the generic ``speed_limit`` class.
VALUE_LABEL_MIN = 0.9


#: Share of the simulated time the tick thread may let wall time reach while it waits for the
#: worker (``genai.use_real_time_lead``): 0.85 keeps a 120 s run's start-up, close and report
#: (5-10 s here) inside 1x real time.
LEAD_SHARE = 0.85


class GenaiStage(BaseStage):
    name = "genai"

    def __init__(self, config: GenaiConfig, n_simulators: int = 1):
        """``n_simulators``: the market's simulators K (the length of the published scores)."""
        self.config = config
        self.n_simulators = max(1, int(n_simulators))
        self._closed = False
        self._seen_rounds: set[int] = set()
        self._queue: list[dict] = []
        self._pending: list = []  # (job, Future) in submission order
        self._pool = None
        self._jobs = 0
        self._skipped = 0
        self._clock0: tuple[float, float] | None = None  # (simulated s, wall s) at the first tick
        self._lead_wait = 0.0  # wall s the tick thread waited for the worker within the run's lead
        K = self.n_simulators
        self._images = np.zeros(K, np.int64)
        self._recognised = np.zeros(K, np.int64)
        # speed-limit images whose prompt named a value, and those the validator read as that value
        self._value_images = np.zeros(K, np.int64)
        self._value_read = np.zeros(K, np.int64)
        self._window: dict[int, list] = {k: [] for k in range(K)}  # recent (image, kind) per simulator
        self._theta_detail: dict[int, dict] = {}
        self._swapped: set[str] = set()
        self._wall = 0.0
        self._theta_wall = 0.0
        self._tick_wall = 0.0
        self._slot = 0.0
        self._per_round: list[dict] = []

    def sim_settings(self, k: int) -> dict:
        """Generation settings of market simulator ``k`` (1..K-1): entry (k-1) mod len of
        ``genai.simulators``, falling back to the section's steps/guidance/checkpoint."""
        c = self.config
        sims = c.simulators
        s = sims[(int(k) - 1) % len(sims)] if sims else None
        return {"steps": (s.steps if s and s.steps else c.steps),
                "guidance": (s.guidance if s and s.guidance is not None else c.guidance),
                "checkpoint": (s.checkpoint if s and s.checkpoint else c.checkpoint),
                "seed_offset": (s.seed_offset if s else 0)}

    def start(self, ctx: RunContext) -> None:
        from carla_mr.genai.api import load_default_generator, load_default_validator

        self.models: dict = {}
        for k in range(1, max(2, self.n_simulators)):
            ck = self.sim_settings(k)["checkpoint"]
            if ck not in self.models:
                self.models[ck] = load_default_generator(ck)
        self.validator = load_default_validator(self.config.validator)
        self.upsampler = None
        if self.config.upsample:
            from carla_mr.genai.api import load_default_upsampler

            # the upsampler reads prompts with the text encoder it was trained with: the
            # committed base model's for the committed upsampler (loaded already when a simulator
            # uses the base; load_default_upsampler loads it otherwise)
            self.upsampler = load_default_upsampler(self.config.upsampler, text_model=self.models.get(None))
        self.ranker = None
        if self.config.value_candidates > 1:
            from carla_mr.genai.ranker import load_ranker

            self.ranker = load_ranker(self.config.ranker)
        self.seed = int(ctx.seed)
        self._ctx = ctx  # close() applies the worker's last jobs while the world is still open
        self.dir = Path(ctx.run_dir) / "genai"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest = self.dir / "manifest.jsonl"
        self.manifest.write_text("")
        signs = ctx.world.signs
        self.sign_ok = np.array([k not in ("traffic_light", "other") and k in self.config.preferences.signs
                                 for k in signs.kind.astype(str)], dtype=bool)
        self.theta = np.full(self.n_simulators, np.nan if self.config.theta_value is None
                             else float(self.config.theta_value))
        if self.config.worker:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genai")
        if self.config.theta_value is not None:
            ctx.board.generation_scores = GenerationScores(G=np.full(self.n_simulators, np.nan), theta=self.theta,
                                                           images=np.zeros(self.n_simulators, np.int64))

    def _colour(self, vehicle_id: int) -> str:
        colours = self.config.preferences.colours
        h = zlib.crc32(f"{self.seed}:{vehicle_id}".encode())
        return colours[h % len(colours)]

    # ---------------------------------------------------------------- per tick
    def on_tick(self, snapshot: Snapshot, ctx: RunContext) -> None:
        t0 = time.perf_counter()
        if self._clock0 is None:
            self._clock0 = (float(snapshot.time), t0)
        try:
            self._collect(ctx, snapshot.time, block=False)
            rnd = ctx.board.market_round
            if rnd is not None and rnd.round_id not in self._seen_rounds:
                self._seen_rounds.add(rnd.round_id)
                windows = [w for w in rnd.windows() if w["vehicle_id"] is not None and w["duration_s"] > 0]
                for w in windows[: self.config.jobs_per_round]:
                    self._queue.append({**w, "round_id": rnd.round_id, "due": rnd.time + w["start_s"]})
            due = [j for j in self._queue if j["due"] <= snapshot.time + 1e-9]
            if due:
                self._queue = [j for j in self._queue if j["due"] > snapshot.time + 1e-9]
                for job in due:
                    self._start_job(job, snapshot, ctx)
        finally:
            self._tick_wall += time.perf_counter() - t0

    def _start_job(self, job: dict, snap: Snapshot, ctx: RunContext) -> None:
        """Pick the signs near the job's AV and build its prompts (tick thread); generate and
        score in the worker thread (or here with ``genai.worker: false``)."""
        from carla_mr.genai.prompts import prompt_for

        signs = ctx.world.signs
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
        job = dict(job)
        job["kinds"] = [str(signs.kind[p]) for p in picks]
        job["sign_ids"] = [str(signs.ids[p]) for p in picks]
        job["values"] = [_speed_value(k, signs.value[p]) for k, p in zip(job["kinds"], picks)]
        job["prompts"] = [prompt_for(k, colour, token=self.config.token, value=v)
                          for k, v in zip(job["kinds"], job["values"])]
        k = int(job["sim_index"])
        st = self.sim_settings(k)
        job["settings"] = st
        job["seed"] = int(zlib.crc32(f"{self.seed + st['seed_offset']}:{job['round_id']}:{job['vehicle_id']}:"
                                     f"{job['task']}".encode()))
        window = list(self._window.get(k, []))
        if self._pool is not None:
            if self._backlog() >= self.config.max_backlog and not self._wait_within_lead(snap.time):
                self._skipped += 1  # the worker is behind: this window's GPU time goes unused
                return
            self._pending.append((job, self._pool.submit(self._work, job, window)))
        else:
            self._apply(job, self._work(job, window), ctx)

    def _backlog(self) -> int:
        return sum(not f.done() for _, f in self._pending)

    def _wait_within_lead(self, sim_time: float) -> bool:
        """With ``use_real_time_lead``: wait for the worker's oldest job for at most the run's
        lead over real time, ``LEAD_SHARE`` x simulated seconds elapsed minus wall seconds
        elapsed since the first tick (the rest is kept for the run's start-up, close and
        report). True when the backlog has room afterwards."""
        if not self.config.use_real_time_lead or self._clock0 is None:
            return False
        sim0, wall0 = self._clock0
        now = time.perf_counter()
        lead = LEAD_SHARE * (float(sim_time) - sim0) - (now - wall0)
        if lead <= 0:
            return False
        from concurrent.futures import FIRST_COMPLETED, wait

        wait([f for _, f in self._pending if not f.done()], timeout=lead, return_when=FIRST_COMPLETED)
        self._lead_wait += time.perf_counter() - now
        return self._backlog() < self.config.max_backlog

    def _work(self, job: dict, window: list) -> dict:
        """Generate, score and measure theta for one job (worker thread; touches no world state)."""
        import torch

        from carla_mr.genai.api import score, upsample
        from carla_mr.genai.ranker import best_of_k

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # idle OpenMP threads would spin against the tick loop's own work
        try:
            st = job["settings"]
            t0 = time.perf_counter()
            # best of up to value_candidates samples per speed value (carla_mr.genai.ranker), then
            # the upsampler: scored, measured and swapped at the swap resolution
            drawn = best_of_k(self.models[st["checkpoint"]], job["prompts"], job["values"], seed=job["seed"],
                              k=self.config.value_candidates, confidence=self.config.value_confidence,
                              ranker=self.ranker, steps=st["steps"], guidance=st["guidance"],
                              sampler=self.config.sampler)
            images = drawn.images
            if self.upsampler is not None:
                images = upsample(self.upsampler, images, job["prompts"], seed=job["seed"],
                                  steps=self.config.upsample_steps)
            verdict = score(self.validator, images, job["kinds"])
            wall = time.perf_counter() - t0
            theta, theta_wall = None, 0.0
            tc = self.config.measure_theta
            if tc.enabled and self.config.theta_value is None:
                from carla_mr.genai.theta import theta_of

                t1 = time.perf_counter()
                recent = (window + list(zip(images, job["kinds"])))[-tc.window:]
                theta = theta_of(np.stack([x for x, _ in recent]), [kk for _, kk in recent], steps=tc.steps,
                                 seed=self.seed, eval_per_class=tc.eval_per_class)
                theta_wall = time.perf_counter() - t1
        finally:
            torch.set_num_threads(threads)
        return {"images": images, "verdict": verdict, "wall": wall, "theta": theta, "theta_wall": theta_wall,
                "drawn": drawn.drawn.tolist()}

    def _collect(self, ctx: RunContext, now: float, *, block: bool) -> None:
        """Apply finished worker jobs, in submission order (all of them when ``block``)."""
        while self._pending and (block or self._pending[0][1].done()):
            job, fut = self._pending.pop(0)
            self._apply(job, fut.result(), ctx, now)

    def wait(self, ctx: RunContext) -> None:
        """Block until every submitted worker job is applied (tests; the end of a run)."""
        self._collect(ctx, float("nan"), block=True)

    def _label_class(self, kind: str, read: str, recognised: bool, top: float = 1.0) -> str | None:
        """The dataset label of a generated face: the value class the validator read
        (``speed_limit_30``) when it read one of the prompted kind with probability >=
        :data:`VALUE_LABEL_MIN`, else the generic kind (garbled digits are not a value)."""
        if kind == "speed_limit":
            sure = recognised and read.startswith("speed_limit_") and top >= VALUE_LABEL_MIN
            return read if sure else "speed_limit"
        return None

    def _apply(self, job: dict, res: dict, ctx: RunContext, now: float | None = None) -> None:
        """Write images + manifest, swap recognised faces, publish G and theta (tick thread)."""
        import cv2

        from carla_mr.io import atomic_write_png

        images, verdict, k = res["images"], res["verdict"], int(job["sim_index"])
        self._grow(k + 1)
        self._jobs += 1
        self._wall += res["wall"]
        self._theta_wall += res["theta_wall"]
        self._slot += float(job["duration_s"])
        if res["theta"] is not None and np.isfinite(res["theta"]["theta"]):
            self.theta[k] = res["theta"]["theta"]
            self._theta_detail[k] = {x: res["theta"][x] for x in ("theta", "err_before", "err_after", "loss_before", "loss_after", "n")}
        textures = {}
        rdir = self.dir / f"round-{int(job['round_id']):06d}"
        lines = []
        for b, sid in enumerate(job["sign_ids"]):
            name = f"job{self._jobs:05d}-{b}-sign-{sid}.png"
            ref = f"genai/{rdir.name}/{name}"
            atomic_write_png(rdir / name, images[b])
            recognised = bool(verdict["recognised"][b])
            self._images[k] += 1
            self._recognised[k] += recognised
            value = job["values"][b]
            if value is not None:
                self._value_images[k] += 1
                self._value_read[k] += read_matches(verdict["predicted"][b], f"speed_limit_{value}")
            self._window[k] = (self._window.get(k, []) + [(images[b], job["kinds"][b])])[-self.config.measure_theta.window:]
            swap = recognised or not self.config.swap_only_recognised
            label = self._label_class(job["kinds"][b], verdict["predicted"][b], recognised,
                                      float(verdict.get("top_confidence", [1.0] * len(images))[b]))
            if swap:
                big = images[b] if images.shape[1] == TEXTURE_PX else \
                    cv2.resize(images[b], (TEXTURE_PX, TEXTURE_PX), interpolation=cv2.INTER_CUBIC)
                textures[sid] = SignTexture(source="generated", ref=ref, image=np.ascontiguousarray(big),
                                            label_class=label)
            lines.append({"round_id": job["round_id"], "sim_id": job["sim_id"], "sim_index": k,
                          "vehicle_id": job["vehicle_id"], "task": job["task"], "slot_s": job["duration_s"],
                          "wall_s": res["wall"] / len(job["sign_ids"]), "sign_id": sid, "class": job["kinds"][b],
                          "prompt": job["prompts"][b], "value": job["values"][b], "seed": job["seed"] + b,
                          "steps": job["settings"]["steps"],
                          "guidance": job["settings"]["guidance"],
                          "candidates": int(res["drawn"][b]),
                          "model": str(job["settings"]["checkpoint"] or "carla_mr default base model"),
                          "upsampled": self.upsampler is not None, "px": int(images.shape[1]),
                          "predicted": verdict["predicted"][b], "label_class": label,
                          "confidence": float(verdict["confidence"][b]), "recognised": recognised,
                          "swapped": swap, "image": ref, "applied_at_s": now,
                          "theta": float(self.theta[k]) if np.isfinite(self.theta[k]) else None})
        if textures:
            ctx.world.apply_sign_textures(textures)
            self._swapped.update(textures)
        with open(self.manifest, "a", encoding="utf-8") as fh:
            for line in lines:
                fh.write(json.dumps(line) + "\n")
        self._publish(ctx, int(job["round_id"]), job, verdict, res)

    def _grow(self, n: int) -> None:
        """Room for simulator indices below ``n`` (a window may name more simulators than the
        stage was built for)."""
        if n <= self.n_simulators:
            return
        extra = n - self.n_simulators
        self._images = np.concatenate([self._images, np.zeros(extra, np.int64)])
        self._recognised = np.concatenate([self._recognised, np.zeros(extra, np.int64)])
        self._value_images = np.concatenate([self._value_images, np.zeros(extra, np.int64)])
        self._value_read = np.concatenate([self._value_read, np.zeros(extra, np.int64)])
        self.theta = np.concatenate([self.theta, np.full(extra, np.nan if self.config.theta_value is None
                                                          else float(self.config.theta_value))])
        self.n_simulators = n

    def _publish(self, ctx: RunContext, round_id: int, job: dict, verdict: dict, res: dict) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            g = np.where(self._images > 0, self._recognised / np.maximum(self._images, 1), np.nan)
        g[0] = np.nan  # the driving simulator does not generate
        ctx.board.generation_scores = GenerationScores(G=g, theta=self.theta.copy(), images=self._images.copy(),
                                                       round_id=round_id)
        k = int(job["sim_index"])
        self._per_round.append({"round_id": round_id, "sim_index": k, "G_job": float(verdict["G"]),
                                "G_running": float(g[k]), "theta": float(self.theta[k]),
                                "wall_s": round(res["wall"], 4), "theta_wall_s": round(res["theta_wall"], 4)})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            ctx = getattr(self, "_ctx", None)
            # jobs not started yet are dropped; the running one finishes and is applied
            self._pending = [(j, f) for j, f in self._pending if not f.cancel()]
            if ctx is not None:
                self._collect(ctx, float("nan"), block=True)
            self._pool.shutdown(wait=True)
            self._pool = None
        self._pending = []
        self.models = {}
        self.validator = None
        self._ctx = None

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

        # each generating simulator's measured theta after its job (manifests before 2026-12-07: none)
        th = np.array([np.nan if x.get("theta") is None else float(x["theta"]) for x in lines])
        th_round = np.array([np.nanmean(th[rid == r]) if np.isfinite(th[rid == r]).any() else np.nan for r in rounds])

        def draw(ax):
            ax.plot(rounds, g, marker="o", label="G per round")
            ax.plot(rounds, np.cumsum([rec[rid == r].sum() for r in rounds]) / np.cumsum(
                [(rid == r).sum() for r in rounds]), label="running G")
            if np.isfinite(th_round).any():
                ok = np.isfinite(th_round)
                ax.plot(rounds[ok], th_round[ok], marker="s", linestyle=":",
                        label="theta of the generating simulator (lower is better)")
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("market round")
            ax.set_ylabel("G, theta")
            ax.set_title("Generated signs: validator-recognised share G, measured theta")
            ax.legend()

        png = plot_png(figs / "genai_G.png", draw)
        by_class: dict[str, list[float]] = {}
        for x, r in zip(lines, rec):
            by_class.setdefault(x["class"], []).append(r)
        rows = [(k, len(v), float(np.mean(v))) for k, v in sorted(by_class.items())]
        swapped = sum(bool(x.get("swapped")) for x in lines)
        stats = {"images": len(lines), "G": float(rec.mean()), "swapped": swapped}
        text = (f"{len(lines)} images in {rounds.size} rounds, G = {rec.mean():.3f}, "
                f"{swapped} swapped onto in-world signs.\n\n" + md_table(rows, ("class", "images", "G")))
        valued = [x for x in lines if x.get("value") is not None]
        if valued:
            from carla_mr.genai.scores import wilson_interval

            ok = sum(read_matches(x["predicted"], f"speed_limit_{x['value']}") for x in valued)
            lo, hi = wilson_interval(ok, len(valued))
            stats["speed_value_accuracy"] = ok / len(valued)
            text += (f"\n\nSpeed values: {ok} of {len(valued)} speed-limit images whose prompt named a value "
                     f"were read as that value ({ok / len(valued):.2f}, 95% CI {lo:.2f}-{hi:.2f}).")
        text += f"\n\n![G](report/{png})\n"
        return ReportSection("Generated signs", text, stats)

    def summary(self) -> dict[str, Any]:
        from carla_mr.genai.scores import wilson_interval

        n, r = int(self._images.sum()), int(self._recognised.sum())
        G: Optional[float] = r / n if n else None
        per_sim = {}
        for k in range(1, self.n_simulators):
            nk, rk = int(self._images[k]), int(self._recognised[k])
            lo, hi = wilson_interval(rk, nk)
            per_sim[str(k)] = {"images": nk, "G": rk / nk if nk else None, "G_low": lo if nk else None,
                               "G_high": hi if nk else None, "value_images": int(self._value_images[k]),
                               "value_read": int(self._value_read[k]), **self.sim_settings(k),
                               "theta": float(self.theta[k]) if np.isfinite(self.theta[k]) else None,
                               "theta_detail": self._theta_detail.get(k)}
        nv, rv = int(self._value_images.sum()), int(self._value_read.sum())
        vlo, vhi = wilson_interval(rv, nv)
        # the speed-value target of docs/genai.md: share of value-prompted speed-limit images the
        # validator reads as the prompted value (G counts any value as a speed limit)
        values = {"images": nv, "read_as_prompted": rv, "accuracy": rv / nv if nv else None,
                  "accuracy_low": vlo if nv else None, "accuracy_high": vhi if nv else None,
                  "value_candidates": int(self.config.value_candidates)}
        return {"jobs": self._jobs, "images": n, "recognised": r, "G": G, "speed_values": values,
                "signs_swapped": len(self._swapped), "pending_jobs": len(self._queue) + len(self._pending),
                "skipped_jobs": self._skipped, "lead_wait_s": self._lead_wait,
                "worker": bool(self.config.worker), "per_simulator": per_sim,
                "generation_wall_s": self._wall, "theta_wall_s": self._theta_wall,
                "tick_thread_wall_s": self._tick_wall, "scheduled_gpu_s": self._slot,
                "per_job": self._per_round[-50:]}


def _speed_value(kind: str, value: float) -> int | None:
    """The km/h a speed-limit prompt carries: the in-world sign's own value when the generator
    knows it (SPEED_VALUES), else None (the generic "speed limit" prompt)."""
    if kind != "speed_limit" or not np.isfinite(value) or int(round(value)) not in SPEED_VALUES:
        return None
    return int(round(value))
