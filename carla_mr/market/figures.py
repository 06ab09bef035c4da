"""The paper's figures as data: each sweep's x values, its market parameters and its treatments.

Read by :mod:`carla_mr.market.experiments` (which runs the sweeps) and
:mod:`carla_mr.market.plots` (which draws them); neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Per rep and series: the Outcome's surplus and payments, plus "helped": the share of feasible
#: (AV, task, simulator) slots where generative AI raises the match quality, i.e. F > 1 <=>
#: G Q > 2^theta - 1 (the same for every mechanism of a treatment).
METRICS = ("total", "S_DT", "S_T", "S_D", "revenue", "payment", "helped", "n_infeasible")
#: Fig. 10's kinds of generated images and their relative accuracy theta.
FIG10_THETAS = {"generated": 0.82, "background": 0.42, "recontextualised": 0.85}


@dataclass(frozen=True)
class Figure:
    name: str
    code: int  # the figure's component of the spawn key
    x_name: str
    xs: tuple[float, ...]
    title: str
    default_x: float | None  # the x at which the market has the default parameters
    both_epvisa_windows: bool = False  # also clear EPViSA with the other epvisa_windows setting

    def params_at(self, x: float) -> dict[str, Any]:
        """The MarketParams overrides of the point x."""
        if self.name == "fig9_cmax5":
            return {"n_tasks": int(x), "c_max": 5.0}
        if self.name == "fig8a":
            return {"n_avs": int(x)}
        if self.name == "fig8b":
            return {"n_traffic": int(x) - 1}  # x counts all simulators: 1 driving + K traffic
        if self.name == "fig8c":
            return {"g_lo": round(max(0.0, x - 0.1), 10), "g_hi": round(min(1.0, x + 0.1), 10)}
        return {"n_tasks": int(x)}  # fig9, fig10

    def treatments(self, theta: float) -> list[tuple[str, bool, float]]:
        """(series suffix, genai, theta) evaluated on each draw."""
        if self.name == "fig10":
            return [(f"theta={label}", True, th) for label, th in FIG10_THETAS.items()] + [("none", False, theta)]
        return [("genai", True, theta), ("none", False, theta)]


FIGURES: dict[str, Figure] = {f.name: f for f in (
    Figure("fig8a", 81, "n_avs", (10, 20, 30, 40, 50), "Total surplus vs number of AVs (N = 1)", 30),
    Figure("fig8b", 82, "n_simulators", (10, 20, 30, 40, 50), "Total surplus vs number of simulators (N = 1)", 30),
    Figure("fig8c", 83, "g_mean", (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
           "Total surplus vs generative score G ~ U[g-0.1, g+0.1]", 0.5),
    Figure("fig9", 9, "n_tasks", (1, 2, 3, 4, 5), "Total surplus and its split vs number of tasks N", 1,
           both_epvisa_windows=True),
    Figure("fig10", 10, "n_tasks", (1, 2, 3, 4, 5), "Surplus vs N for three kinds of generation", None),
    Figure("fig9_cmax5", 95, "n_tasks", (1, 2, 3, 4, 5), "Total surplus vs N with C truncated at c_max = 5",
           None, both_epvisa_windows=True),
)}
ALL = tuple(FIGURES)
