"""World backends (embedded SUMO + offline OpenDRIVE, or a real CARLA server) behind one interface.

Import backends from their modules (``carla_mr.world.embedded``, ``carla_mr.world.carla_backend``)
or build one from a scenario with :func:`carla_mr.world.factory.make_world`.
"""

from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND, RsuTable, SignTable, Snapshot, World  # noqa: F401
