"""``carla-mr market``: experiments (market issue) and the auction service (ZeroMQ issue).

The group collects its commands from two modules so each part can be developed alone:
``carla_mr.market.experiment_cli`` and ``carla_mr.market.auction_cli``. Each exposes a
``COMMANDS`` list of click commands.
"""

from __future__ import annotations

import importlib

import click


@click.group(name="market")
def market_group():
    """The GPU-time market: experiments, auctioneer, bidders, keys, ledger replay."""


for _mod in ("carla_mr.market.experiment_cli", "carla_mr.market.auction_cli"):
    try:
        _m = importlib.import_module(_mod)
    except ModuleNotFoundError as _exc:
        if _exc.name != _mod:
            raise
        continue
    for _cmd in getattr(_m, "COMMANDS", []):
        market_group.add_command(_cmd)
