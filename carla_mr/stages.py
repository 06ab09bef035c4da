"""The stage contract: what a stage is, and every value that passes between stages.

A stage is a plain object with a ``name`` and four methods. The runner
(:class:`carla_mr.runner.Runner`) calls ``start(ctx)`` once, ``on_tick(snapshot, ctx)`` for
every tick's :class:`~carla_mr.world.base.Snapshot`, ``close()`` exactly once on every exit
path (stages in reverse order, then the world; ``close`` must be idempotent) and
``summary()`` for the run's ``summary.json``. A stage may also have a
``report_section(run_dir, summary, figures_dir)`` static method returning a
:class:`ReportSection` for ``report.md``.

Stages never share state through the world or each other's attributes: what one stage gives
another is one of the frozen dataclasses below, written to the run's :class:`Board`
(``ctx.board``) and read from it by the stages after it. In tick order:

=====================  ===================  =====================  ============================
board field            type                 written by             read by
=====================  ===================  =====================  ============================
``twin_accuracy``      :class:`TwinAccuracy`  twin, every sample    market (R_acc), same tick
``market_round``       :class:`MarketRound`   market, every round   genai (jobs), same tick
``generation_scores``  :class:`GenerationScores`  genai, per job    market, the *next* round
``camera_frames``      :class:`CameraFrames`  recorder, per frame   perception, same tick
=====================  ===================  =====================  ============================

The one write a stage makes into the world is :meth:`World.apply_sign_textures
<carla_mr.world.base.World.apply_sign_textures>` (the genai stage swapping generated sign
faces in); everything else a stage learns from the world it reads.

Units: metres and seconds of simulation time; positions in CARLA's left-handed world frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.base import CameraFrame, Snapshot, World


# -- what passes between stages -------------------------------------------------------------

@dataclass(frozen=True)
class TwinAccuracy:
    """The twin's rolling accuracy R per predicted vehicle, at the RSU serving it now.

    Written by the twin stage after each sample; the market reads it the same tick as the AVs'
    R_acc. For every predicted vehicle present now (sorted ``ids``): its serving RSU, R in
    [0, 1] (see :mod:`carla_mr.twin.accuracy` for the definition) computed from the
    predictions that were actually *served*, and how many evaluated predictions it rests on
    (0: the prior). ``served_by`` names, per vehicle, the predictor that served its latest
    prediction (``"model"`` or a baseline's name such as ``"constant_velocity"``), or is
    None when the twin runs one predictor only.
    """

    frame: int
    time: float  # s
    ids: np.ndarray  # (A,) int64, sorted
    rsu: np.ndarray  # (A,) int32, serving RSU index or -1
    r: np.ndarray  # (A,) float64 in [0, 1]
    n: np.ndarray  # (A,) int64, evaluated predictions behind r
    prior: float  # R of a vehicle with no evaluated prediction yet
    hit_radius_m: float  # a prediction hits when its final error is within this, metres
    window: int  # rolling window (exact mean over the first ``window`` evaluations, then EMA 1/window)
    served_by: Optional[np.ndarray] = None  # (A,) str, or None

    def get(self, ids: np.ndarray, default: float | None = None) -> np.ndarray:
        """R for each of ``ids`` (Q,) float64; ``default`` (else the prior) for ids not present."""
        ids = np.asarray(ids, np.int64)
        out = np.full(ids.size, self.prior if default is None else float(default))
        if self.ids.size and ids.size:
            pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
            hit = self.ids[pos] == ids
            out[hit] = self.r[pos[hit]]
        return out

    def as_dict(self) -> dict[int, float]:
        return {int(i): float(r) for i, r in zip(self.ids, self.r)}

    def per_rsu(self) -> dict[int, dict[str, float]]:
        """For each RSU serving predicted vehicles now: how many, and their mean R."""
        out: dict[int, dict[str, float]] = {}
        for j in np.unique(self.rsu):
            m = self.rsu == j
            out[int(j)] = {"vehicles": int(m.sum()), "mean_r": float(self.r[m].mean())}
        return out


@dataclass(frozen=True)
class MarketRound:
    """One cleared market round and the GPU-time schedule it produced (W windows).

    Written by the market stage at the tick its round clears; the genai stage reads it the same
    tick and turns each window into a generation job that starts at ``time + start_s[w]``.
    Window ``w`` gives simulator ``sim_index[w]`` (0 = the driving simulator, 1..K-1 traffic
    simulators; ``sim_id[w]`` its bidder id) ``duration_s[w]`` seconds of the RSU's GPU,
    starting ``start_s[w]`` seconds after the round's ``time``, to serve task ``task[w]`` of
    vehicle ``vehicle_id[w]`` (-1: no vehicle, an absent bidder slot). Payments are in
    micro-units (integers, exact). ``round_id`` increases by one per round.

    ``to_record()`` / ``from_record()`` are the ``market/rounds.jsonl`` form (one JSON object
    per line); readers (report, viewer) take rounds from there through ``from_record``.
    """

    round_id: int
    frame: int
    time: float  # s, simulation time the round cleared
    participants: int  # AVs that bid
    winner_vehicle_id: Optional[int]  # the AV whose DT task won the round, or None
    payment_micro: Optional[int]  # what the winner pays, micro-units
    mechanism: str  # carla_mr.config.vocab.MECHANISM_NAMES
    sim_id: tuple[str, ...]  # (W,) bidder id of each window's simulator
    sim_index: np.ndarray  # (W,) int32
    vehicle_id: np.ndarray  # (W,) int64, -1 = none
    task: np.ndarray  # (W,) int32
    start_s: np.ndarray  # (W,) float64, s after ``time``
    duration_s: np.ndarray  # (W,) float64, s
    payment_micro_w: np.ndarray  # (W,) int64, micro-units per window
    latency_s: float = 0.0  # close -> every result delivered, wall seconds
    chain_hash: str = ""  # the ledger's hash after this round

    def __len__(self) -> int:
        return int(self.sim_index.shape[0])

    def windows(self) -> list[dict[str, Any]]:
        """The windows as plain dicts (sim_id, sim_index, vehicle_id or None, task, start_s,
        duration_s, payment_micro), in schedule order."""
        return [{"sim_id": self.sim_id[w], "sim_index": int(self.sim_index[w]),
                 "vehicle_id": int(self.vehicle_id[w]) if self.vehicle_id[w] >= 0 else None,
                 "task": int(self.task[w]), "start_s": float(self.start_s[w]),
                 "duration_s": float(self.duration_s[w]), "payment_micro": int(self.payment_micro_w[w])}
                for w in range(len(self))]

    def to_record(self) -> dict[str, Any]:
        return {"round_id": self.round_id, "frame": self.frame, "time": self.time,
                "participants": self.participants, "winner_vehicle_id": self.winner_vehicle_id,
                "payment_micro": self.payment_micro, "mechanism": self.mechanism, "windows": self.windows(),
                "latency_s": self.latency_s, "chain_hash": self.chain_hash}

    @staticmethod
    def from_windows(*, windows: list[Mapping[str, Any]], **kw: Any) -> "MarketRound":
        """Build from window dicts (the keys of :meth:`windows`)."""
        w = list(windows)
        vid = [-1 if x.get("vehicle_id") is None else int(x["vehicle_id"]) for x in w]
        return MarketRound(sim_id=tuple(str(x["sim_id"]) for x in w),
                           sim_index=np.array([int(x["sim_index"]) for x in w], np.int32),
                           vehicle_id=np.array(vid, np.int64), task=np.array([int(x["task"]) for x in w], np.int32),
                           start_s=np.array([float(x["start_s"]) for x in w], np.float64),
                           duration_s=np.array([float(x["duration_s"]) for x in w], np.float64),
                           payment_micro_w=np.array([int(x.get("payment_micro", 0)) for x in w], np.int64), **kw)

    @staticmethod
    def from_record(rec: Mapping[str, Any]) -> "MarketRound":
        """A round from one ``rounds.jsonl`` line; keys other than :meth:`to_record`'s are ignored."""
        return MarketRound.from_windows(
            windows=rec.get("windows", []), round_id=int(rec["round_id"]), frame=int(rec.get("frame", 0)),
            time=float(rec.get("time", 0.0)), participants=int(rec.get("participants", 0)),
            winner_vehicle_id=None if rec.get("winner_vehicle_id") is None else int(rec["winner_vehicle_id"]),
            payment_micro=None if rec.get("payment_micro") is None else int(rec["payment_micro"]),
            mechanism=str(rec.get("mechanism", "")), latency_s=float(rec.get("latency_s", 0.0)),
            chain_hash=str(rec.get("chain_hash", "")))


@dataclass(frozen=True)
class GenerationScores:
    """The generative score G and relative accuracy theta of every simulator (K of them).

    Written by the genai stage after each generation job; the market reads the latest scores
    when its *next* round opens, so scores produced by the jobs of round r price round r + 1
    (the one-round lag of the paper's repeated auction: a simulator's G is known only after
    it generated). Index k is the market's simulator index (0 = the driving simulator, which
    does not generate). NaN means "not measured yet": the market then uses its model's prior
    for that simulator. ``G[k]`` in [0, 1] is the share of simulator k's images the
    independent validator recognised as what was asked; ``theta[k]`` in (0, 1] the paper's
    relative accuracy (1 = its images brought no improvement, towards 0 = better; see
    docs/genai.md); ``images[k]`` how many images back them; ``round_id`` the latest round
    whose jobs contributed.
    """

    G: np.ndarray  # (K,) float64 in [0, 1], NaN = not measured
    theta: np.ndarray  # (K,) float64 in (0, 1], NaN = not measured
    images: np.ndarray  # (K,) int64
    round_id: int = -1

    @staticmethod
    def unmeasured(k: int) -> "GenerationScores":
        nan = np.full(int(k), np.nan)
        return GenerationScores(G=nan, theta=nan.copy(), images=np.zeros(int(k), np.int64))


@dataclass(frozen=True)
class CameraFrames:
    """The camera images of one tick, by camera slot name (e.g. ``cam0``).

    Written by the recorder when it renders a tick; perception reads them the same tick
    instead of rendering again (it renders its own when ``frame`` is not the current one).
    """

    frame: int
    frames: Mapping[str, "CameraFrame"]


class Board:
    """What the stages of one run pass to each other: one typed slot per contract value.

    Every slot starts as None. A write is an attribute assignment (``ctx.board.market_round =
    round``) and is checked against the slot's type, so a stage cannot publish the wrong kind
    of value; reading is attribute access. The table in this module's docstring says who
    writes and who reads each slot.
    """

    _SLOTS: dict[str, type] = {"twin_accuracy": TwinAccuracy, "market_round": MarketRound,
                               "generation_scores": GenerationScores, "camera_frames": CameraFrames}
    __slots__ = tuple(_SLOTS)

    twin_accuracy: Optional[TwinAccuracy]
    market_round: Optional[MarketRound]
    generation_scores: Optional[GenerationScores]
    camera_frames: Optional[CameraFrames]

    def __init__(self) -> None:
        for name in self._SLOTS:
            object.__setattr__(self, name, None)

    def __setattr__(self, name: str, value: Any) -> None:
        kind = self._SLOTS.get(name)
        if kind is None:
            raise AttributeError(f"the board has no slot '{name}'; slots: {', '.join(self._SLOTS)}")
        if value is not None and not isinstance(value, kind):
            raise TypeError(f"board.{name} takes a {kind.__name__}, got {type(value).__name__}")
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        return "Board(" + ", ".join(f"{n}={'set' if getattr(self, n) is not None else None}"
                                    for n in self._SLOTS) + ")"


# -- the stage interface ---------------------------------------------------------------------

@dataclass
class RunContext:
    """What every stage gets: the scenario, the world (read it; the one write is
    ``apply_sign_textures``), the run directory, the run's seed and the board.

    A stage that has finished its job for the whole run (a recording that reached
    ``max_frames``) may call :meth:`request_stop`; the runner then ends the run after the
    current tick, as a completed run. ``completed`` is set by the runner before it closes the
    stages: True when every tick ran (or a stage asked to stop), False after an error or an
    interrupt, so a stage's ``close`` can tell a finished job from an interrupted one.
    """

    scenario: "Scenario"
    world: "World"
    run_dir: Path
    seed: int
    board: Board = field(default_factory=Board)
    stop_requested: Optional[str] = None
    completed: bool = False

    def request_stop(self, reason: str) -> None:
        """End the run after this tick (``reason`` goes to the summary's ``stopped_early``)."""
        if self.stop_requested is None:
            self.stop_requested = str(reason)


@dataclass(frozen=True)
class ReportSection:
    """A stage's part of ``report.md``: a title, markdown (figures linked relative to the run
    directory) and the headline numbers that also go to the run's JSON result."""

    title: str
    markdown: str
    headline: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Stage(Protocol):
    """The core interface (see the module docstring); :class:`BaseStage` gives defaults."""

    name: str

    def start(self, ctx: RunContext) -> None: ...

    def on_tick(self, snapshot: "Snapshot", ctx: RunContext) -> None: ...

    def close(self) -> None: ...

    def summary(self) -> dict[str, Any]: ...


class BaseStage:
    """Defaults for a stage: nothing to start, close or summarise, and no report section.

    Subclasses set ``name`` and override what they need. ``report_section`` is a static
    method (the report is written from the run directory after the run, with no stage
    object) returning a :class:`ReportSection`, or None when the stage has nothing to show.
    """

    name = "stage"

    def start(self, ctx: RunContext) -> None:
        pass

    def on_tick(self, snapshot: "Snapshot", ctx: RunContext) -> None:
        pass

    def close(self) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def report_section(run_dir: Path, summary: Mapping[str, Any], figures_dir: Path) -> Optional[ReportSection]:
        return None


def board_slots() -> tuple[str, ...]:
    """The board's slot names, in tick order."""
    return tuple(Board._SLOTS)


__all__ = ["BaseStage", "Board", "CameraFrames", "GenerationScores", "MarketRound", "ReportSection", "RunContext", "Stage",
           "TwinAccuracy", "board_slots"]
