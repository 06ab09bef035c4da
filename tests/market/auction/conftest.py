"""Fixtures for the auction tests: a CURVE auctioneer in a thread on 127.0.0.1, with keys."""

from __future__ import annotations

import pytest

from carla_mr.market.auctioneer import Auctioneer, AuctioneerSettings
from carla_mr.market.bidders import AVBidder, SimulatorBidder
from carla_mr.market.keys import in_memory_keyring


class Harness:
    def __init__(self, tmp_path, n_avs=3, n_traffic=2, curve=True, **settings):
        self.av_ids = [f"av-{i:03d}" for i in range(n_avs)]
        traffic = [f"sim-{k:03d}" for k in range(1, n_traffic + 1)]
        self.server, self.keys, self.allow = in_memory_keyring(self.av_ids, traffic, "sim-000")
        self.sim_ids = self.allow.sim_ids
        self.ledger_path = tmp_path / "ledger.sqlite"
        self.settings = AuctioneerSettings(ledger_path=self.ledger_path, allow=self.allow, curve=curve,
                                           server_key=self.server if curve else None,
                                           **{"deadline_s": 5.0, **settings})
        self.auctioneer = Auctioneer(self.settings)
        self.endpoint = self.auctioneer.start()
        self.clients = []
        self.clients_by = {}

    def client(self, bidder_id, **kw):
        cls = AVBidder if bidder_id.startswith("av") else SimulatorBidder
        curve = self.settings.curve
        c = cls(self.endpoint, bidder_id, keypair=self.keys.get(bidder_id), server_public=self.server.public,
                curve=curve, handshake_timeout_s=kw.pop("handshake_timeout_s", 3.0),
                request_timeout_s=kw.pop("request_timeout_s", 2.0), retries=kw.pop("retries", 1), **kw)
        self.clients.append(c)
        return c

    def close(self):
        for c in self.clients:
            c.close()
        self.auctioneer.stop()


@pytest.fixture
def harness(tmp_path):
    hs = []

    def make(**kw):
        h = Harness(tmp_path / f"h{len(hs)}", **kw)
        hs.append(h)
        return h

    yield make
    for h in hs:
        h.close()
