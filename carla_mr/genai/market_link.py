"""Market link: the generative score G and relative accuracy theta of a genai run, as the
market's parameters (``MarketParams.G`` / ``MarketParams.theta``; F = log2(1 + G Q) / theta)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from carla_mr.errors import InputError

#: The market requires theta in (0, 1]; a measured 0 (synthetic data destroyed the validator)
#: is floored to this value.
THETA_FLOOR = 0.01
SUBSETS = ("all", "background", "context")


def market_parameters(run_dir: str | os.PathLike, subset: str = "all") -> dict:
    """{"G": float in [0, 1], "theta": float in (0, 1], "subset", "source"} from a
    ``carla-mr genai generate --theta`` run directory (its ``scores.json``).

    ``subset``: "all" (the whole generated set), "background" or "context". G is the subset's
    generative score; theta its relative accuracy. InputError if the run lacks them.
    """
    if subset not in SUBSETS:
        raise InputError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}", field="subset")
    p = Path(run_dir).expanduser()
    f = p / "scores.json" if p.is_dir() else p
    if not f.is_file():
        raise InputError(f"{f} does not exist; point at a 'carla-mr genai generate' run directory", field="genai run")
    try:
        s = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{f} is not valid JSON: {exc}", field="genai run") from exc
    gk = "G" if subset == "all" else f"G_{subset}"
    tk = "theta" if subset == "all" else f"theta_{subset}"
    if gk not in s:
        raise InputError(f"{f} has no {gk}; the run had no validator or no '{subset}' prompts", field="genai run")
    if tk not in s or s[tk] is None or (isinstance(s[tk], float) and math.isnan(s[tk])):
        raise InputError(f"{f} has no {tk}; rerun 'carla-mr genai generate' with --theta", field="genai run")
    G = float(min(1.0, max(0.0, s[gk])))
    theta = float(min(1.0, max(THETA_FLOOR, s[tk])))
    return {"G": G, "theta": theta, "subset": subset, "source": str(f)}
