"""MarketStage: the world's AVs and the simulators bid for the RSU's GPU time every round.

Every ``round_period_ticks`` ticks the stage turns the latest Snapshot into one auction round
and runs it over ZeroMQ (CURVE on loopback) through :class:`~carla_mr.market.session.MarketSession`:

- Bidders. The session has ``vehicles.avs`` AV *slots* (``av-000`` ...), each with its own
  CURVE key. At each round the AVs that an RSU serves (``snapshot.rsu >= 0``) take the slots in
  ascending vehicle-id order; empty slots stay silent (absent). Simulator ``sim-000`` is the
  driving simulator (standing contract), the others are traffic simulators.
- Public data (known to the RSU). Channel gain from the distance to the serving RSU,
  ``g = clip(1 - dist / range, 0.01, 1)``, and the serving RSU's bandwidths; transmit powers,
  noise and the simulators' jobs drawn once per run from the market model; R_acc from the
  twin's rolling accuracy (``ctx.board.twin_accuracy``), else ``market.r_acc``'s default; G and
  theta per simulator from the genai stage (``ctx.board.generation_scores``, written after the
  jobs of the previous round) where measured, else the model's prior (G ~ U[g_lo, g_hi] per
  (AV, simulator), theta = 0.53). A measured G is used as it is, also G = 1 (every validated
  image was recognised; the specification allows G in [0, 1], the prior's [0.4, 0.6] is only
  the paper's sampling range).
- Each round is a fresh draw of the market model (seed (run seed, round)): the AVs' common
  scale C ~ Zipf(2) and the simulators' idiosyncratic matches u ~ U(0, 1] (h = C u, the values
  the simulators bid), and the DT tasks (size MB, Gcycles/MB, deadline s). The RSU generates
  the DT tasks (the twin's task spec), so their sizes and cycles are public: the auctioneer
  refuses a bid that reports others (``task_mismatch``). Winners change from round to round.
- Bids. An AV's value for its DT slot grows with its speed: ``v = 0.2 + 0.8 clip(speed / 15 m/s,
  0, 1)``, bid truthfully; each simulator bids its truthful ``v m`` per second of window.
- Output. ``ctx.board.market_round`` holds the latest round (a
  :class:`~carla_mr.stages.MarketRound`: winner vehicle id, schedule with vehicle ids) for the
  genai stage; ``RUN_DIR/market/rounds.jsonl`` one line per round with the outcome, its
  latency, the G and theta used, and the same bids cleared by every registered mechanism with
  the pure functions (the report's per-mechanism surplus).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.config.market import MarketConfig
from carla_mr.config.vocab import MECHANISM_NAMES
from carla_mr.stages import BaseStage, GenerationScores, MarketRound, ReportSection, RunContext
from carla_mr.world.base import Snapshot

SPEED_REF_MPS = 15.0
#: spawn-key tag of the stage's random streams ("mkt")
_TAG = 0x6D6B74


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
        self._totals: dict[str, list[float]] = {m: [] for m in MECHANISM_NAMES}
        self._winners: list[int] = []
        self._payments: list[int] = []

    # ---------------------------------------------------------------- lifecycle
    def start(self, ctx: RunContext) -> None:
        from carla_mr.market.clearing import model_params
        from carla_mr.market.model import sample_market
        from carla_mr.market.session import MarketSession

        cfg = self.config
        self.seed = int(ctx.seed)
        self.slot_ids = [f"av-{k:03d}" for k in range(self.n_slots)]
        self.session = MarketSession(cfg, ctx.run_dir, seed=ctx.seed, av_ids=self.slot_ids,
                                     n_tasks=cfg.tasks_per_av)
        self.params = model_params(self.n_slots, cfg.num_simulators, cfg.tasks_per_av,
                                   {"model": {} if cfg.generative_ai else {"genai": False}})
        # links and the simulators' jobs: drawn once per run by the model itself
        m = sample_market(self.params, np.random.SeedSequence(self.seed, spawn_key=(_TAG,)))
        self.p_av, self.p_rsu, self.s2_rsu, self.s2_av = m.p_av, m.p_rsu, m.s2_rsu, m.s2_av
        self.s_sim, self.e_sim = m.public.s_sim, m.public.e_sim
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
        from carla_mr.market.clearing import public_market_of, select_avs

        n = rows.size
        vehicle_ids = snap.ids[rows]
        draw = self._draw()
        public, v, r_acc = self._public_data(snap, rows, ctx, draw)
        s_dt, e_dt, d = draw.public.s_dt, draw.public.e_dt, draw.public.d
        # the present AVs' public market, built once: their truthful simulator values, and the
        # same bids cleared by every mechanism below (absent slots bid nothing)
        pm_n = public_market_of(select_avs(public, np.arange(n)), s_dt[:n], e_dt[:n], d[:n])
        U = np.zeros((self.n_slots, self.config.tasks_per_av, self.config.num_simulators))
        U[:n] = np.nan_to_num(v[:n, None, None] * pm_n.F * draw.h[:n, None, :])
        res = self.session.run_round(public=public, v=v, U=U, s_dt=s_dt, e_dt=e_dt, d=d,
                                     deadline_s=self.config.round_deadline_s)
        self.rounds += 1
        self._latencies.append(res.latency_s)
        by_mech = self._by_mechanism(pm_n, v[:n], U[:n], r_acc[:n], vehicle_ids)
        rnd = self._market_round(res, snap, vehicle_ids)
        ctx.board.market_round = rnd
        if rnd.winner_vehicle_id is not None:
            self._winners.append(rnd.winner_vehicle_id)
            self._payments.append(int(rnd.payment_micro or 0))
        G, theta = public["G"][:n, 0, 1:], public["theta"][0, 0, 1:]
        info = {**rnd.to_record(), "n_tasks": self.config.tasks_per_av, "r_acc_mean": float(np.mean(r_acc[:n])),
                "G_mean": float(np.mean(G)), "G_min": float(G.min()), "G_max": float(G.max()),
                "theta_mean": float(theta.mean()), "theta_min": float(theta.min()), "theta_max": float(theta.max()),
                # per traffic simulator k = 1..K (G averaged over this round's AVs)
                "G_by_sim": [round(float(x), 6) for x in G.mean(0)], "theta_by_sim": [round(float(x), 6) for x in theta],
                "winner_C": (float(draw.C[self.slot_ids.index(res.outcome["winner_id"])])
                             if res.outcome.get("winner_id") else None),
                "by_mechanism": by_mech}
        with open(self._log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(info) + "\n")

    def _draw(self):
        """This round's draw of the market model for the slots (seed: run seed, round number):
        C, u (h = C u), the prior G and the DT tasks come from it."""
        from carla_mr.market.model import sample_market

        return sample_market(self.params, np.random.SeedSequence(self.seed, spawn_key=(_TAG, 2, self.rounds)))

    def _public_data(self, snap: Snapshot, rows: np.ndarray, ctx: RunContext, draw):
        """This round's public data (make_public form, with the RSU's task spec), the AVs' bids
        v (I,) (NaN: empty slot) and R_acc (I,)."""
        from carla_mr.market.clearing import make_public_from_channel

        cfg, mp, I, n = self.config, self.params, self.n_slots, rows.size
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
        r_acc = np.full(I, float(mp.r_acc))
        acc = ctx.board.twin_accuracy
        if acc is not None:
            r_acc[:n] = np.clip(acc.get(snap.ids[rows], default=float(mp.r_acc)), 0.0, 1.0)
        G, theta = generation_scores(ctx.board.generation_scores, draw.G, float(mp.theta), cfg.num_simulators)
        public = make_public_from_channel(
            g=g, p_av_mw=self.p_av, p_rsu_mw=self.p_rsu, s2_rsu=self.s2_rsu, s2_av=self.s2_av,
            s_sim=self.s_sim, e_sim=self.e_sim, C=draw.C, G=G, theta=theta, r_acc=r_acc,
            gamma=mp.gamma, beta0=mp.beta0, genai=mp.genai, size_unit=mp.size_unit,
            bandwidth_up_mhz=bw_up, bandwidth_down_mhz=bw_dn, s_dt=draw.public.s_dt, e_dt=draw.public.e_dt)
        return public, v, r_acc

    def _by_mechanism(self, pm, v, U, r_acc, vehicle_ids) -> dict[str, dict[str, Any]]:
        """The same bids cleared by every registered mechanism (the pure functions), per mechanism:
        surplus parts, revenue, the winning vehicle id and its payment."""
        from carla_mr.market.mechanisms import clear_all

        by_mech = {}
        for mech, o in clear_all(pm, v, U, scoring=self.config.scoring, r_acc=r_acc).items():
            by_mech[mech] = {"total": float(o.total), "S_DT": float(o.S_DT), "S_T": float(o.S_T),
                             "S_D": float(o.S_D), "revenue": float(o.revenue), "payment": float(o.payment),
                             "n_infeasible": int(o.n_infeasible),
                             "winner_vehicle_id": int(vehicle_ids[o.winner]) if o.winner >= 0 else None}
            self._totals[mech].append(float(o.total))
        return by_mech

    def _market_round(self, res, snap: Snapshot, vehicle_ids: np.ndarray) -> MarketRound:
        """The round as the board's MarketRound: bidder slots mapped back to vehicle ids."""
        slot_to_vehicle = {self.slot_ids[k]: int(vehicle_ids[k]) for k in range(vehicle_ids.size)}
        winner_slot = res.outcome.get("winner_id")
        sched = res.schedule.arrays()
        windows = [{"sim_id": str(sched["sim_id"][w]), "sim_index": int(sched["sim_index"][w]),
                    "vehicle_id": slot_to_vehicle.get(str(sched["av_id"][w])), "task": int(sched["task"][w]),
                    "start_s": float(sched["start_s"][w]), "duration_s": float(sched["duration_s"][w]),
                    "payment_micro": int(sched["payment_micro"][w])} for w in range(len(res.schedule))]
        return MarketRound.from_windows(
            windows=windows, round_id=int(res.round_id), frame=int(snap.frame), time=float(snap.time),
            participants=int(vehicle_ids.size),
            winner_vehicle_id=slot_to_vehicle.get(winner_slot) if winner_slot else None,
            payment_micro=res.outcome.get("payment_micro"), mechanism=self.config.mechanism,
            latency_s=float(res.latency_s), chain_hash=str(res.chain_hash))

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figs: Path) -> Optional[ReportSection]:
        """This stage's part of report.md (see :class:`~carla_mr.stages.BaseStage`)."""
        from carla_mr.market.stage_report import market_section

        return market_section(run_dir, summary, figs)

    def summary(self) -> dict[str, Any]:
        lat = np.asarray(self._latencies) if self._latencies else np.zeros(0)
        wins = np.asarray(self._winners, np.int64)
        pays = np.asarray(self._payments, np.int64)
        out: dict[str, Any] = {
            "rounds": self.rounds, "rounds_with_winner": int(wins.size), "n_tasks": self.config.tasks_per_av,
            "distinct_winners": int(np.unique(wins).size), "paid_rounds": int((pays > 0).sum()),
            "mean_payment": float(pays.mean() / 1e6) if pays.size else None,
            "mechanism": self.config.mechanism, "scoring": self.config.scoring, "curve": self.config.curve,
            "latency_p50_s": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_p99_s": float(np.percentile(lat, 99)) if lat.size else None,
            "mean_total_surplus": {m: float(np.mean(t)) if t else None for m, t in self._totals.items()},
            "median_total_surplus": {m: float(np.median(t)) if t else None for m, t in self._totals.items()}}
        if self.session is not None:
            out["ledger"] = str(self.session.ledger_path)
        return out


def generation_scores(scores: GenerationScores | None, G_prior: np.ndarray, theta_prior: float,
                      n_sims: int) -> tuple[np.ndarray, np.ndarray]:
    """G (I, K+1) and theta (K+1,) for a round: each traffic simulator's measured G and theta
    where the genai stage measured them (finite), the prior elsewhere (``G_prior`` (I, K+1), the
    model's draw; ``theta_prior``). The driving simulator (index 0) does not generate: prior."""
    G = np.array(G_prior, dtype=float)
    theta = np.full(n_sims, float(theta_prior))
    if scores is not None:
        k = min(n_sims, int(np.asarray(scores.G).shape[0]))
        g_meas = np.asarray(scores.G, float)[:k]
        t_meas = np.asarray(scores.theta, float)[:k]
        gm = np.isfinite(g_meas)
        gm[0] = False
        G[:, :k][:, gm] = np.clip(g_meas[gm], 0.0, 1.0)
        tm = np.isfinite(t_meas) & (t_meas > 0)
        tm[0] = False
        theta[:k][tm] = np.minimum(t_meas[tm], 1.0)
    return G, theta
