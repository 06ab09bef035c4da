"""The connection to a CARLA server: versions, the map, the world and Traffic Manager settings,
and putting back exactly the settings this client changed.

:class:`CarlaConnection` records the server's ``WorldSettings`` before any change and knows
which of them it changed: ``synchronous_mode`` (switched off again only if this client
switched it on; a server another client runs synchronously stays so), ``fixed_delta_seconds``
(always put back) and the physics substepping (``substepping``, ``max_substep_delta_time``,
``max_substeps``; changed only when the server's values do not cover a ``tick_s`` step, see
:func:`carla_mr.world.carla_api.physics_substeps`). The Traffic Manager's synchronous mode
follows the world's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from carla_mr.errors import InputError, RunError
from carla_mr.world.carla_api import (check_match, check_version, physics_substeps, substeps_cover)

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario

log = logging.getLogger(__name__)

#: OpenDRIVE standalone mesh generation (``generate_opendrive_world``), metres.
OPENDRIVE_PARAMS = dict(vertex_distance=2.0, max_road_length=50.0, wall_height=1.0, additional_width=0.6,
                        smooth_junctions=True, enable_mesh_visibility=True)


@dataclass
class SavedSettings:
    """The world settings this client may change, as recorded (or as a crashed run recorded them)."""

    synchronous_mode: bool
    fixed_delta_seconds: Optional[float]
    substepping: bool
    max_substep_delta_time: float
    max_substeps: int

    @staticmethod
    def of(settings: Any) -> "SavedSettings":
        d = settings.fixed_delta_seconds
        return SavedSettings(bool(settings.synchronous_mode), None if d is None else float(d),
                             bool(settings.substepping), float(settings.max_substep_delta_time),
                             int(settings.max_substeps))

    def encode(self) -> str:
        """``sync=0;delta=none;sub=1:0.01:10`` (the marker's role_name carries it)."""
        d = "none" if self.fixed_delta_seconds is None else repr(self.fixed_delta_seconds)
        return (f"sync={int(self.synchronous_mode)};delta={d};"
                f"sub={int(self.substepping)}:{self.max_substep_delta_time!r}:{self.max_substeps}")

    @staticmethod
    def decode(fields: dict[str, str], default: "SavedSettings") -> "SavedSettings":
        """The settings of a marker's fields (KeyError/ValueError when malformed); fields a
        marker lacks keep ``default``'s values."""
        sub, dt, n = default.substepping, default.max_substep_delta_time, default.max_substeps
        if "sub" in fields:
            flag, delta, count = fields["sub"].split(":")
            sub, dt, n = flag == "1", float(delta), int(count)
        return SavedSettings(fields["sync"] == "1", None if fields["delta"] == "none" else float(fields["delta"]),
                             sub, dt, n)


class CarlaConnection:
    """A client, its world and Traffic Manager, and the settings to restore.

    ``factory(host, port)`` makes the client (``carla.Client`` or a stand-in's factory); ``api``
    is the ``carla`` namespace. Attributes are None until :meth:`connect` sets them; every
    restore method is safe to call at any point.
    """

    def __init__(self, cfg: Any, api: Any, factory: Callable[[str, int], Any]):
        self.cfg = cfg
        self.api = api
        self.factory = factory
        self.client: Any = None
        self.world: Any = None
        self.tm: Any = None
        self.server_version: Optional[str] = None
        self.client_version: Optional[str] = None
        self.town = ""
        self.xodr_path: Optional[Path] = None  # the .xodr a generated world came from (None: a town)
        self.original: Optional[SavedSettings] = None  # the settings to restore
        self.we_enabled_sync = False
        self.settings_touched = False
        self.substeps_touched = False
        self.tm_sync_touched = False

    # -- connecting -------------------------------------------------------------------------
    def connect(self) -> Any:
        """Reach the server, check both versions, record the settings; returns the world."""
        cfg = self.cfg
        try:
            self.client = self.factory(cfg.host, int(cfg.port))
            self.client.set_timeout(float(cfg.timeout_s))
            server_version = self.client.get_server_version()
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"cannot reach a CARLA server at {cfg.host}:{cfg.port} within {cfg.timeout_s:g} s "
                           f"({exc}); start one (see docs/carla.md: docker compose up carla) or set carla.host / "
                           f"carla.port in the scenario") from exc
        check_version(server_version, "server")
        self.server_version = str(server_version)
        self.client_version = str(self.client.get_client_version())
        check_match(self.client_version, self.server_version, allow_mismatch=bool(cfg.allow_version_mismatch))
        if self.client_version != self.server_version:
            log.warning("CARLA client %s and server %s differ (allowed by carla.allow_version_mismatch)",
                        self.client_version, self.server_version)
        self.world = self.client.get_world()
        self.original = SavedSettings.of(self.world.get_settings())
        return self.world

    def ping(self) -> str:
        """The server's version (raises when it does not answer): the cheap liveness probe."""
        return self.client.get_server_version()

    def apply(self, target: SavedSettings) -> None:
        """Put the world's settings to ``target`` (only the fields this module manages)."""
        s = self.world.get_settings()
        s.synchronous_mode = target.synchronous_mode
        s.fixed_delta_seconds = target.fixed_delta_seconds
        s.substepping = target.substepping
        s.max_substep_delta_time = target.max_substep_delta_time
        s.max_substeps = target.max_substeps
        self.world.apply_settings(s)

    def load_map(self, scenario: "Scenario", seed: int) -> Any:
        """Load the scenario's map: a town the server has (by name), else an .xodr file
        (``generate_opendrive_world``, with the scenario's signs injected). Settings are kept
        (``reset_settings=False``) and applied afterwards by :meth:`go_synchronous`."""
        from carla_mr.world.maps import signs_for_scenario

        sc = scenario
        explicit_file = sc.map.endswith(".xodr") or "/" in sc.map or os.sep in sc.map
        available: dict[str, str] = {}
        if not explicit_file:
            available = {str(m).rsplit("/", 1)[-1]: str(m) for m in self.client.get_available_maps()}
            if sc.map in available:
                if sc.signs.inject or sc.signs.random_count:
                    raise InputError("injecting signs needs an .xodr map on the carla backend (a town's level "
                                     "cannot get new sign meshes); give map: path/to/Town.xodr or remove the signs "
                                     "section", field="signs", source=sc.source_path)
                self.town = sc.map
                if self.world.get_map().name.rsplit("/", 1)[-1] != sc.map:
                    self.world = self.client.load_world(sc.map, reset_settings=False)
                return self.world
        from carla_mr.config import resolve_map

        path = resolve_map(sc.map, sc.source_path, required=explicit_file)
        if path is None:
            raise InputError(f"map '{sc.map}' is neither a town of this server ({', '.join(sorted(available))}) nor "
                             f"an .xodr file; give a town name or a path to an .xodr", field="map",
                             source=sc.source_path)
        text = Path(path).read_text(encoding="utf-8")
        text, _ = signs_for_scenario(text, sc.signs, seed, name=Path(path).stem)
        params = self.api.OpendriveGenerationParameters(**OPENDRIVE_PARAMS)
        self.world = self.client.generate_opendrive_world(text, params, reset_settings=False)
        self.town = Path(path).stem
        self.xodr_path = Path(path)
        return self.world

    def go_synchronous(self, tick_s: float) -> None:
        """Synchronous mode with a fixed ``tick_s`` step (s), physics substeps covering it."""
        s = self.world.get_settings()
        self.we_enabled_sync = not self.original.synchronous_mode
        self.settings_touched = True
        s.synchronous_mode = True
        s.fixed_delta_seconds = float(tick_s)
        if not substeps_cover(s, tick_s):
            s.substepping = True
            s.max_substep_delta_time, s.max_substeps = physics_substeps(tick_s)
            self.substeps_touched = True
        self.world.apply_settings(s)

    def start_traffic_manager(self, seed: int) -> None:
        """The Traffic Manager on ``carla.tm_port``, synchronous and seeded."""
        self.tm = self.client.get_trafficmanager(int(self.cfg.tm_port))
        self.tm_sync_touched = True
        self.tm.set_synchronous_mode(True)
        self.tm.set_random_device_seed(int(seed) % (2 ** 31))

    # -- restoring --------------------------------------------------------------------------
    def restore_traffic_manager(self) -> None:
        self.tm.set_synchronous_mode(False)

    def needs_tm_restore(self) -> bool:
        return self.tm is not None and self.tm_sync_touched and self.we_enabled_sync

    def needs_settings_restore(self) -> bool:
        return self.world is not None and self.original is not None and self.settings_touched

    def restore_settings(self) -> None:
        """Put back ``fixed_delta_seconds`` (and the substepping, if changed); switch
        synchronous mode off only if this client switched it on."""
        o = self.original
        s = self.world.get_settings()
        s.fixed_delta_seconds = o.fixed_delta_seconds
        if self.we_enabled_sync:
            s.synchronous_mode = False
        if self.substeps_touched:
            s.substepping = o.substepping
            s.max_substep_delta_time = o.max_substep_delta_time
            s.max_substeps = o.max_substeps
        self.world.apply_settings(s)
