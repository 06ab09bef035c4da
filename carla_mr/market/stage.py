"""MarketStage: the world's AVs and the simulators bid for the RSU's GPU time every round.

Every ``round_period_ticks`` ticks the stage turns the latest Snapshot into one auction round
and runs it over ZeroMQ (CURVE on loopback) through :class:`~carla_mr.market.session.MarketSession`:

- Bidders. The session has ``vehicles.avs`` AV *slots* (``av-000`` ...), each with its own
  CURVE key. At each round the AVs that an RSU serves (``snapshot.rsu >= 0``) take the slots in
  ascending vehicle-id order; empty slots stay silent (absent). Simulator ``sim-000`` is the
  driving simulator (standing contract), the others are traffic simulators.
- Public data (known to the RSU). Channel gain from the distance to the serving RSU,
  ``g = clip(1 - dist / range, 0.01, 1)``; transmit powers and noise drawn once per AV slot as in
  the market model; R_acc from the twin's rolling accuracy when the twin runs
  (``ctx.board.twin_accuracy``), else ``market.r_acc``; G and theta per simulator from the
  genai stage's latest scores (``ctx.board.generation_scores``, written after the jobs of the
  previous round), else the model's U[0.4, 0.6] and 0.53 where a simulator has none.
- Bids. An AV's value for its DT slot grows with its speed: ``v = 0.2 + 0.8 clip(speed / 15 m/s,
  0, 1)``, bid truthfully; the DT tasks (size MB, Gcycles/MB, deadline s) are drawn from the
  market model. Each simulator's value per second is the truthful ``v m`` of the model, with
  match qualities ``h = C u`` fixed per (AV slot, simulator) for the run (the preference cache).
- Output. ``ctx.board.market_round`` holds the latest round (a
  :class:`~carla_mr.stages.MarketRound`: winner vehicle id, schedule with vehicle ids) for the
  genai stage; ``RUN_DIR/market/rounds.jsonl`` one line per round with the
  outcome, its latency, and the same bids cleared by PViSA, EPViSA and MTEPViSA with the pure
  functions (the report's surplus-by-mechanism plot).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.config.market import MarketConfig
from carla_mr.reporting import md_table, plot_png, read_jsonl
from carla_mr.stages import BaseStage, MarketRound, ReportSection, RunContext
from carla_mr.world.base import Snapshot

SPEED_REF_MPS = 15.0


class MarketStage(BaseStage):
    name = "market"

    def __init__(self, config: MarketConfig, n_av_slots: int):
        self.config = config
        self.n_slots = max(1, int(n_av_slots))
        self.session = None
        self.rounds = 0
        self._tick = 0
        self._closed = False
        self._log: Optional[Path] = None
        self._latencies: list[float] = []
        self._totals: dict[str, list[float]] = {"pvisa": [], "epvisa": [], "mtepvisa": []}
        self._winners = 0

    # ---------------------------------------------------------------- lifecycle
    def start(self, ctx: RunContext) -> None:
        from carla_mr.market.clearing import model_params
        from carla_mr.market.session import MarketSession

        cfg = self.config
        self.slot_ids = [f"av-{k:03d}" for k in range(self.n_slots)]
        self.session = MarketSession(cfg, ctx.run_dir, seed=ctx.seed, av_ids=self.slot_ids,
                                     n_tasks=cfg.tasks_per_av)
        self.params = model_params(self.n_slots, cfg.num_simulators, cfg.tasks_per_av,
                                   {"model": {} if cfg.generative_ai else {"genai": False}})
        from carla_mr.market.model import sample_market

        mp = self.params
        # link, simulator and preference data drawn once per AV slot for the run, by the model itself
        m = sample_market(mp, np.random.SeedSequence(int(ctx.seed), spawn_key=(0x6D6B74,)))
        self.p_av, self.p_rsu, self.s2_rsu, self.s2_av = m.p_av, m.p_rsu, m.s2_rsu, m.s2_av
        self.s_sim, self.e_sim, self.C, self.h = m.public.s_sim, m.public.e_sim, m.C, m.h
        self.rng = np.random.default_rng(np.random.SeedSequence(int(ctx.seed), spawn_key=(0x6D6B74, 1)))
        self._log = Path(ctx.run_dir) / "market" / "rounds.jsonl"
        self._log.parent.mkdir(parents=True, exist_ok=True)
        self._log.write_text("")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.session is not None:
            self.session.close()

    # ---------------------------------------------------------------- per tick
    def on_tick(self, snapshot: Snapshot, ctx: RunContext) -> None:
        self._tick += 1
        if (self._tick - 1) % self.config.round_period_ticks != 0:
            return
        served = snapshot.av_mask & (snapshot.rsu >= 0)
        ids = snapshot.ids[served]
        order = np.argsort(ids, kind="stable")[: self.n_slots]
        rows = np.flatnonzero(served)[order]
        if rows.size == 0:
            return
        self._round(snapshot, rows, ctx)

    def _round(self, snap: Snapshot, rows: np.ndarray, ctx: RunContext) -> None:
        from carla_mr.market.clearing import _public_market, _rows, make_public_from_channel
        from carla_mr.market.mechanisms import clear

        cfg, mp, I, n = self.config, self.params, self.n_slots, rows.size
        N, K1 = cfg.tasks_per_av, cfg.num_simulators
        rsus = ctx.world.rsus
        j = snap.rsu[rows]
        dist = np.hypot(snap.x[rows] - rsus.x[j], snap.y[rows] - rsus.y[j])
        g = np.full(I, 0.5)
        g[:n] = np.clip(1.0 - dist / rsus.range_m[j], 0.01, 1.0)
        bw_up = np.full(I, mp.bandwidth_up_mhz)
        bw_dn = np.full(I, mp.bandwidth_down_mhz)
        bw_up[:n] = rsus.bandwidth_up_hz[j] / 1e6  # the serving RSU's bandwidth, MHz
        bw_dn[:n] = rsus.bandwidth_down_hz[j] / 1e6
        v = np.full(I, np.nan)
        v[:n] = 0.2 + 0.8 * np.clip(snap.speed[rows] / SPEED_REF_MPS, 0.0, 1.0)
        vehicle_ids = snap.ids[rows]
        r_acc = np.full(I, float(mp.r_acc))
        acc = ctx.board.twin_accuracy
        if acc is not None:
            r_acc[:n] = np.clip(acc.get(vehicle_ids, default=float(mp.r_acc)), 0.0, 1.0)
        G, theta = self._scores(ctx.board.generation_scores, I, K1)
        s_dt = self.rng.uniform(0.0, mp.s_dt_max_mb, (I, N))
        e_dt = self.rng.uniform(0.0, mp.e_dt_max, (I, N))
        d = self.rng.uniform(mp.d_lo_s, mp.d_hi_s, (I, N))
        public = make_public_from_channel(
            g=g, p_av_mw=self.p_av, p_rsu_mw=self.p_rsu, s2_rsu=self.s2_rsu, s2_av=self.s2_av,
            s_sim=self.s_sim, e_sim=self.e_sim, C=self.C, G=G, theta=theta, r_acc=r_acc,
            gamma=mp.gamma, beta0=mp.beta0, genai=mp.genai, size_unit=mp.size_unit,
            bandwidth_up_mhz=bw_up, bandwidth_down_mhz=bw_dn)
        # the present AVs' public market, built once: their truthful simulator values, and the
        # same bids cleared by every mechanism below (absent slots bid nothing)
        pm_n = _public_market(_rows(public, np.arange(n)), s_dt[:n], e_dt[:n], d[:n])
        U = np.zeros((I, N, K1))
        U[:n] = np.nan_to_num(v[:n, None, None] * pm_n.F * self.h[:n, None, :])
        res = self.session.run_round(public=public, v=v, U=U, s_dt=s_dt, e_dt=e_dt, d=d,
                                     deadline_s=cfg.round_deadline_s)
        self.rounds += 1
        self._latencies.append(res.latency_s)

        # the same bids through the pure functions, one per mechanism (present slots only)
        by_mech = {}
        for mech in ("pvisa", "epvisa", "mtepvisa"):
            o = clear(pm_n, v[:n], U[:n], mechanism=mech, scoring=cfg.scoring, r_acc=r_acc[:n])
            by_mech[mech] = {"total": float(o.total), "S_DT": float(o.S_DT), "S_T": float(o.S_T),
                             "S_D": float(o.S_D), "revenue": float(o.revenue),
                             "winner_vehicle_id": int(vehicle_ids[o.winner]) if o.winner >= 0 else None}
            self._totals[mech].append(float(o.total))

        slot_to_vehicle = {self.slot_ids[k]: int(vehicle_ids[k]) for k in range(n)}
        winner_slot = res.outcome.get("winner_id")
        winner_vehicle = slot_to_vehicle.get(winner_slot) if winner_slot else None
        self._winners += winner_vehicle is not None
        sched = res.schedule.arrays()
        windows = [{"sim_id": str(sched["sim_id"][w]), "sim_index": int(sched["sim_index"][w]),
                    "vehicle_id": slot_to_vehicle.get(str(sched["av_id"][w])), "task": int(sched["task"][w]),
                    "start_s": float(sched["start_s"][w]), "duration_s": float(sched["duration_s"][w]),
                    "payment_micro": int(sched["payment_micro"][w])} for w in range(len(res.schedule))]
        rnd = MarketRound.from_windows(
            windows=windows, round_id=int(res.round_id), frame=int(snap.frame), time=float(snap.time), participants=n,
            winner_vehicle_id=winner_vehicle, payment_micro=res.outcome.get("payment_micro"),
            mechanism=cfg.mechanism, latency_s=float(res.latency_s), chain_hash=str(res.chain_hash))
        ctx.board.market_round = rnd
        info = {**rnd.to_record(), "r_acc_mean": float(np.mean(r_acc[:n])), "G_mean": float(np.mean(G[:n, 1:])),
                "theta": theta, "by_mechanism": by_mech}
        with open(self._log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(info) + "\n")

    def _scores(self, scores, I: int, K1: int) -> tuple[np.ndarray, float]:
        """G (I, K1) and theta for this round: each simulator's measured G (the driving simulator,
        index 0, does not generate here), the model's prior U[g_lo, g_hi] for the others; theta the
        mean measured theta, else the model's."""
        mp = self.params
        G = np.empty((I, K1))
        measured = np.zeros(K1, dtype=bool)
        if scores is not None:
            measured[1:] = np.isfinite(scores.G[1:K1])
            G[:, measured] = scores.G[:K1][measured]
        G[:, ~measured] = self.rng.uniform(mp.g_lo, mp.g_hi, (I, int((~measured).sum())))
        theta = float(mp.theta)
        if scores is not None and np.isfinite(scores.theta[:K1]).any():
            theta = float(np.nanmean(scores.theta[:K1]))
        return G, theta

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """This stage's part of report.md (see :class:`~carla_mr.stages.BaseStage`)."""
        rounds = read_jsonl(run_dir / "market" / "rounds.jsonl")
        if not rounds:
            return None
        t = np.array([r["time"] for r in rounds])
        mechs = ["pvisa", "epvisa", "mtepvisa"]
        tot = {m: np.array([r["by_mechanism"][m]["total"] for r in rounds]) for m in mechs}

        def draw(ax):
            for m in mechs:
                ax.plot(t, tot[m], marker=".", label=m.upper())
            ax.set_xlabel("simulation time (s)")
            ax.set_ylabel("total surplus per round")
            ax.set_title("Surplus per market round by mechanism (same bids)")
            ax.legend()

        png = plot_png(figs / "market_surplus.png", draw)
        lat = np.array([r["latency_s"] for r in rounds]) * 1e3
        means = {m: float(tot[m].mean()) for m in mechs}
        rows = [(m.upper(), means[m], float(np.median(tot[m])),
                 means[m] / means["pvisa"] if means["pvisa"] > 0 else None) for m in mechs]
        winners = sum(r["winner_vehicle_id"] is not None for r in rounds)
        text = (f"{len(rounds)} rounds over ZeroMQ ({rounds[0]['mechanism']} on the wire), "
                f"{winners} with a winning AV; round latency p50 {np.percentile(lat, 50):.1f} ms, "
                f"p99 {np.percentile(lat, 99):.1f} ms.\n\n"
                + md_table(rows, ("mechanism", "mean total surplus", "median", "ratio to PViSA"))
                + f"\n\n![surplus](report/{png})\n")
        return ReportSection("Market", text, {"rounds": len(rounds), "mean_total_surplus": means})

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self._latencies) if self._latencies else np.zeros(0)
        out: dict[str, Any] = {"rounds": self.rounds, "rounds_with_winner": self._winners,
                               "mechanism": self.config.mechanism, "curve": self.config.curve,
                               "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
                               "latency_p99_s": float(np.percentile(lat, 99)) if lat.size else None,
                               "mean_total_surplus": {m: float(np.mean(t)) if t else None
                                                      for m, t in self._totals.items()}}
        if self.session is not None:
            out["ledger"] = str(self.session.ledger_path)
        return out
