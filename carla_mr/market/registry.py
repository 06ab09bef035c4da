"""The mechanisms by name: the one table of what each name clears with, and how it is shown.

The names and their order come from :data:`carla_mr.config.vocab.MECHANISM_NAMES` (the single
spelling, also used by the config's validation); this table adds to each its clearing rule
(:mod:`carla_mr.market.rules`), its label and its colour. CLI choices, the market stage, the
experiments, the plots and the report all read it; nothing else lists the mechanisms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from carla_mr.config.vocab import MECHANISM_NAMES
from carla_mr.errors import InputError
from carla_mr.market.outcome import Outcome
from carla_mr.market.rules import ClearingInput, clear_epvisa, clear_mtepvisa, clear_pvisa


@dataclass(frozen=True)
class Mechanism:
    """One mechanism: ``rule(ClearingInput) -> Outcome``, a label for tables and plots, a colour
    (matplotlib hex) and a one-line description."""

    name: str
    label: str
    colour: str
    rule: Callable[[ClearingInput], Outcome]
    description: str


MECHANISMS: dict[str, Mechanism] = {m.name: m for m in (
    Mechanism("pvisa", "PViSA", "#1f77b4", clear_pvisa,
              "baseline: second price on the AVs' bids online, plain second price per window offline"),
    Mechanism("epvisa", "EPViSA", "#ff7f0e", clear_epvisa,
              "scores the first task window (modified second bid offline)"),
    Mechanism("mtepvisa", "MTEPViSA", "#2ca02c", clear_mtepvisa,
              "multi-task: scores and serves all N task windows (modified second bid offline)"),
)}
assert tuple(MECHANISMS) == MECHANISM_NAMES, "registry and carla_mr.config.vocab.MECHANISM_NAMES disagree"

#: The registered names, in table order (== MECHANISM_NAMES).
NAMES: tuple[str, ...] = tuple(MECHANISMS)


def get(name: str) -> Mechanism:
    """The mechanism called ``name``; InputError (field ``mechanism``) naming the choices otherwise."""
    try:
        return MECHANISMS[name]
    except (KeyError, TypeError):
        raise InputError(f"must be one of {list(NAMES)}, got {name!r}", field="mechanism") from None


def label(name: str) -> str:
    """The display label of a mechanism (``"mtepvisa"`` -> ``"MTEPViSA"``)."""
    return get(name).label


def colour(name: str) -> str:
    """The plot colour of a mechanism."""
    return get(name).colour
