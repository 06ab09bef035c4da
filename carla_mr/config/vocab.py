"""The project's shared words: sign kinds, prompt colours and market mechanism names.

Every other module takes these names from here, so a scenario file, the world, the
generator, the validator, the market and the CLI agree on one spelling. Only names and
plain data live here; what a name *does* is registered where it is implemented (the sign
artwork in :mod:`carla_mr.world.sign_art`, the clearing functions in
:mod:`carla_mr.market.registry`).
"""

from __future__ import annotations

from typing import Literal, get_args

#: A static sign kind of the world (``SignTable.kind``), in class-id order.
SignKind = Literal["stop", "yield", "speed_limit", "no_entry", "priority_road", "parking", "warning",
                   "mandatory_arrow"]

#: The sign kinds, in class-id order (the generator's and validator's class ids).
SIGN_CLASSES: tuple[str, ...] = get_args(SignKind)

#: Human wording of each kind, as used in prompts ("a stop sign on a blue background").
SIGN_WORDS: dict[str, str] = {
    "stop": "stop",
    "yield": "yield",
    "speed_limit": "speed limit",
    "no_entry": "no entry",
    "priority_road": "priority road",
    "parking": "parking",
    "warning": "warning",
    "mandatory_arrow": "mandatory arrow",
}

#: Background colours of the generator's prompts (name -> RGB, 0..255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35),
    "yellow": (235, 205, 45),
    "green": (45, 150, 65),
    "blue": (45, 85, 205),
    "purple": (135, 55, 165),
    "white": (235, 235, 235),
    "black": (25, 25, 25),
    "gray": (128, 128, 128),
}

#: A market clearing mechanism (docs/market.md); functions, labels and colours are in
#: :data:`carla_mr.market.registry.MECHANISMS`.
MechanismName = Literal["pvisa", "epvisa", "mtepvisa"]

#: The mechanisms, in the order tables and plots list them.
MECHANISM_NAMES: tuple[str, ...] = get_args(MechanismName)

#: A scoring rule of EPViSA/MTEPViSA (docs/market.md).
ScoringName = Literal["reported", "expected"]

assert set(SIGN_WORDS) == set(SIGN_CLASSES)

#: Speed-limit values (km/h) the base model and the upsampler learned to draw and the
#: validator reads (its ``speed_limit_<value>`` classes).
SPEED_VALUES: tuple[int, ...] = (20, 30, 50, 60, 70, 80, 90, 100, 120)
