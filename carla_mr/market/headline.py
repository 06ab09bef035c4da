"""The paper's three claims, measured on an experiment's result (ratios of total surplus).

- generative AI gain: MTEPViSA with / without generative AI (paper: up to +150%, x2.5);
- MTEPViSA / PViSA (paper: > +50%, about x2 as tasks grow);
- MTEPViSA / EPViSA by N (paper: grows with N).

Each is given as a ratio of means with a paired 95% bootstrap interval and as a ratio of
medians (C ~ Zipf(2) has an infinite mean, so means are dominated by rare draws), at the
default parameters and, when the ``fig9_cmax5`` sweep ran, with C truncated at c_max = 5. The
MTEPViSA / EPViSA ratio is given for both EPViSA settings (serving the first window only, or
all of the winner's windows) when fig9 ran: the gap comes from serving, not from scoring.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from carla_mr.market.figures import FIGURES
from carla_mr.market.stats import bootstrap_indices, ratio_of_means

#: What the paper claims, for the tables beside ours.
PAPER = {"genai_gain": "up to +150% (x2.5)", "mtepvisa_over_pvisa": "> +50% (x1.5); about x2 as N grows",
         "mtepvisa_over_epvisa_by_n": "grows with N"}


def _pooled(figures: dict, label: str, metric: str = "total") -> np.ndarray | None:
    """The reps of ``label`` at every figure's default-parameter point, pooled."""
    arrs = []
    for name, points in figures.items():
        fig = FIGURES[name]
        if fig.default_x is None:
            continue
        p = fig.xs.index(fig.default_x)
        if label in points[p]:
            arrs.append(points[p][label][metric])
    return np.concatenate(arrs) if arrs else None


def epvisa_label(windows: str, chosen: str) -> str:
    """The series of EPViSA serving ``windows`` in a run whose EPViSA setting is ``chosen``."""
    return "epvisa|genai" if windows == chosen else f"epvisa:{windows}|genai"


def _by_n(points: list, xs, base_seed: int, key: int, den_label: str) -> dict[str, dict[str, float]]:
    out = {}
    for p, x in enumerate(xs):
        s = points[p]
        if den_label not in s:
            continue
        num = s["mtepvisa|genai"]["total"]
        out[str(int(x))] = ratio_of_means(num, s[den_label]["total"], bootstrap_indices(num.size, base_seed, (key, p)))
    return out


def headline(figures: dict, base_seed: int, epvisa_windows: str = "first") -> dict[str, Any]:
    """The claims' ratios. ``figures``: ExperimentResult.figures; keys of the result: genai_gain,
    mtepvisa_over_pvisa (ratios of means), mtepvisa_over_epvisa_by_n (the run's EPViSA setting),
    mtepvisa_over_epvisa_by_n_first / _all, mtepvisa_over_pvisa_by_n, details (ratio, CI, ratio
    of medians with CI per claim), c_max_5 (the same from fig9_cmax5), paper, claims (on means),
    claims_on_medians, claims_hold."""
    h: dict[str, Any] = {"genai_gain": None, "mtepvisa_over_pvisa": None, "mtepvisa_over_epvisa_by_n": None,
                         "mtepvisa_over_epvisa_by_n_first": None, "mtepvisa_over_epvisa_by_n_all": None,
                         "mtepvisa_over_pvisa_by_n": None, "details": {}, "c_max_5": None, "paper": PAPER,
                         "claims": {}, "claims_on_medians": {}}
    mt, mt0, pv = (_pooled(figures, lab) for lab in ("mtepvisa|genai", "mtepvisa|none", "pvisa|genai"))
    if mt is not None:
        idx = bootstrap_indices(mt.size, base_seed, (1,))
        g, r = ratio_of_means(mt, mt0, idx), ratio_of_means(mt, pv, idx)
        h["genai_gain"], h["mtepvisa_over_pvisa"] = g["ratio"], r["ratio"]
        h["details"].update(genai_gain=g, mtepvisa_over_pvisa=r)
        for stat, claims in (("ratio", h["claims"]), ("ratio_of_medians", h["claims_on_medians"])):
            claims["genai_gain >= 2.5"] = bool(g[stat] >= 2.5)
            claims["mtepvisa_over_pvisa > 1.5"] = bool(r[stat] > 1.5)
    if "fig9" in figures:
        xs = FIGURES["fig9"].xs
        pts = figures["fig9"]
        chosen = _by_n(pts, xs, base_seed, 2, "epvisa|genai")
        for w in ("first", "all"):
            both = _by_n(pts, xs, base_seed, 2, epvisa_label(w, epvisa_windows))
            h[f"mtepvisa_over_epvisa_by_n_{w}"] = {n: d["ratio"] for n, d in both.items()} or None
            h["details"].update({f"mtepvisa_over_epvisa_{w}_N{n}": d for n, d in both.items()})
        pvn = _by_n(pts, xs, base_seed, 3, "pvisa|genai")
        h["mtepvisa_over_epvisa_by_n"] = {n: d["ratio"] for n, d in chosen.items()}
        h["mtepvisa_over_pvisa_by_n"] = {n: d["ratio"] for n, d in pvn.items()}
        h["details"].update({f"mtepvisa_over_epvisa_N{n}": d for n, d in chosen.items()})
        for stat, claims in (("ratio", h["claims"]), ("ratio_of_medians", h["claims_on_medians"])):
            vals = [d[stat] for d in chosen.values()]
            claims["mtepvisa_over_epvisa grows with N"] = bool(all(b > a for a, b in zip(vals, vals[1:])))
    if "fig9_cmax5" in figures:
        h["c_max_5"] = _c_max_5(figures["fig9_cmax5"], base_seed)
    h["claims_hold"] = bool(h["claims"]) and all(h["claims"].values())
    return h


def _c_max_5(points: list, base_seed: int) -> dict[str, Any]:
    """The claims' ratios with C truncated at 5 (N = 1 for the first two, by N for the third)."""
    xs = FIGURES["fig9_cmax5"].xs
    s = points[xs.index(1)]
    mt = s["mtepvisa|genai"]["total"]
    idx = bootstrap_indices(mt.size, base_seed, (5,))
    return {"genai_gain": ratio_of_means(mt, s["mtepvisa|none"]["total"], idx),
            "mtepvisa_over_pvisa": ratio_of_means(mt, s["pvisa|genai"]["total"], idx),
            "mtepvisa_over_epvisa_by_n": _by_n(points, xs, base_seed, 6, "epvisa|genai")}
