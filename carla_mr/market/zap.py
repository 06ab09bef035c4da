"""ZAP for CURVE: the auctioneer admits exactly the allow-list's keys (User-Id = the bidder id)."""

from __future__ import annotations

from zmq.auth.thread import ThreadAuthenticator

from carla_mr.market.keys import AllowList

ZAP_DOMAIN = "carla_mr"


class AllowListAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread with the allow-list as its CURVE credentials provider."""

    def __init__(self, ctx, allow: AllowList):
        super().__init__(ctx)
        self.allow = allow

    def start(self) -> None:
        super().start()
        self.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self)

    def callback(self, domain: str, key: bytes) -> bool:
        """Credentials provider: ``key`` is the client's z85 public key."""
        return key in self.allow.by_key

    def curve_user_id(self, client_public_key: bytes) -> str:
        from zmq.utils import z85

        return self.allow.by_key[z85.encode(client_public_key)].id
