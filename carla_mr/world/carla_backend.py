"""The CARLA backend: a synchronous client of a real CARLA server (0.9.13 or newer).

One :class:`CarlaWorld` drives one server the way the embedded backend drives SUMO, behind the
same :class:`~carla_mr.world.base.World` interface and with the same Snapshot arrays.

Guarantees (each proven against the stand-in server in ``tests/world/carla``):

- **Restore.** The world settings are recorded before any change and the close path puts back
  exactly what this client changed: ``fixed_delta_seconds`` always, ``synchronous_mode`` only
  when this client switched it on (a server that was already synchronous, i.e. driven by
  another client, stays synchronous), and the Traffic Manager's synchronous mode likewise.
- **Our actors only.** Every actor this client spawns carries ``role_name =
  "<prefix>/<session>/<kind>"``. close() destroys the recorded ids, then sweeps the server for
  any actor still tagged with this session (spawned by a call whose answer was lost), and
  never touches another actor. At start, actors tagged ``<prefix>/`` by an earlier run that
  crashed are removed (if that run left the server synchronous, close() turns it off).
- **Every exit path.** close() is idempotent and is reached from the context manager, an
  ``atexit`` hook and SIGINT/SIGTERM handlers (then the previous handler runs). Each restore
  step runs on its own, so one failing step does not skip the others; once the server is
  unreachable the remaining steps are skipped rather than waiting out their timeouts. The
  close path only touches attributes set in ``__init__`` (``None`` until they exist).
- **One snapshot per tick.** tick() calls ``world.tick()`` once and reads every vehicle from
  the one ``WorldSnapshot`` of that frame (client-side, no per-actor round trips).
- **Cameras matched by frame.** Sensor data arrive on the server's streaming thread into a
  queue per sensor; after each tick the queue is read up to the tick's frame number with a
  timeout: older images are dropped, a frame that does not arrive counts as missed.

The ``carla`` API calls this module makes are listed in :data:`CARLA_API`; the conformance
test checks every entry against the installed wheel's signatures.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

from carla_mr.errors import InputError, RunError
from carla_mr.world.base import (ROLE_AV, ROLE_BACKGROUND, CameraFrame, FrameMissed, RsuTable, SignTable,  # noqa: F401
                                 SignTexture, Snapshot, World)
from carla_mr.config.camera import CameraSpec

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario

log = logging.getLogger(__name__)

MIN_VERSION = (0, 9, 13)

#: Blueprint fallback tables: the first id the server has wins; a pattern with ``*`` picks
#: among matches (4-wheeled cars only) with the run's seed. No version branches.
AV_BLUEPRINTS = ("vehicle.tesla.model3", "vehicle.lincoln.mkz_2020", "vehicle.lincoln.mkz2017",
                 "vehicle.audi.a2", "vehicle.*")
BACKGROUND_BLUEPRINTS = ("vehicle.*",)
RSU_PROP_BLUEPRINTS = ("static.prop.streetsign", "static.prop.streetsign01", "static.prop.trafficwarning",
                       "static.prop.constructioncone")
RGB_BLUEPRINTS = ("sensor.camera.rgb",)
#: An inert actor whose role_name carries the settings before this run changed them.
MARKER_BLUEPRINTS = ("sensor.other.collision", "static.prop.streetsign")
DEPTH_BLUEPRINTS = ("sensor.camera.depth",)

#: Every ``carla`` class member this module (and carla_textures / cosim) uses:
#: ``"Class.member": "method"`` (called; keyword names as written), or ``"attr"`` / ``"settable"``.
CARLA_API: dict[str, tuple[str, tuple]] = {
    # client
    "Client.__init__": ("method", (("127.0.0.1", 2000), {})),
    "Client.set_timeout": ("method", ((1.0,), {})),
    "Client.get_server_version": ("method", ((), {})),
    "Client.get_client_version": ("method", ((), {})),
    "Client.get_world": ("method", ((), {})),
    "Client.get_available_maps": ("method", ((), {})),
    "Client.load_world": ("method", (("Town01",), {"reset_settings": False})),
    "Client.generate_opendrive_world": ("method", (("<xodr>", "<params>"), {"reset_settings": False})),
    "Client.get_trafficmanager": ("method", ((8000,), {})),
    "Client.apply_batch_sync": ("method", (([], True), {})),
    "OpendriveGenerationParameters.__init__": ("method", ((), {"vertex_distance": 2.0, "max_road_length": 50.0,
                                                                 "wall_height": 1.0, "additional_width": 0.6,
                                                                 "smooth_junctions": True,
                                                                 "enable_mesh_visibility": True})),
    # world
    "World.get_settings": ("method", ((), {})),
    "World.apply_settings": ("method", (("<settings>",), {})),
    "World.tick": ("method", ((10.0,), {})),
    "World.get_snapshot": ("method", ((), {})),
    "World.get_map": ("method", ((), {})),
    "World.get_blueprint_library": ("method", ((), {})),
    "World.get_actors": ("method", ((), {})),
    "World.get_actor": ("method", ((1,), {})),
    "World.spawn_actor": ("method", (("<bp>", "<tf>"), {"attach_to": None})),
    "World.get_level_bbs": ("method", (("<label>",), {})),
    "World.get_names_of_all_objects": ("method", ((), {})),
    "World.get_environment_objects": ("method", (("<label>",), {})),
    "World.apply_textures_to_objects": ("method", ((["n"], "<d>", "<e>", "<n>", "<a>"), {})),
    "World.apply_color_texture_to_object": ("method", (("n", "<param>", "<tex>"), {})),
    "WorldSettings.synchronous_mode": ("settable", ()),
    "WorldSettings.fixed_delta_seconds": ("settable", ()),
    "WorldSnapshot.frame": ("attr", ()),
    "WorldSnapshot.timestamp": ("attr", ()),
    "WorldSnapshot.find": ("method", ((1,), {})),
    "Timestamp.elapsed_seconds": ("attr", ()),
    "ActorSnapshot.get_transform": ("method", ((), {})),
    "ActorSnapshot.get_velocity": ("method", ((), {})),
    "Map.name": ("attr", ()),
    "Map.get_spawn_points": ("method", ((), {})),
    "Map.generate_waypoints": ("method", ((2.0,), {})),
    "Map.get_all_landmarks": ("method", ((), {})),
    "Map.to_opendrive": ("method", ((), {})),
    "Waypoint.transform": ("attr", ()),
    "Waypoint.lane_width": ("attr", ()),
    "Map.get_waypoint": ("method", (("<loc>",), {})),
    "Transform.get_right_vector": ("method", ((), {})),
    "Waypoint.is_junction": ("attr", ()),
    "Waypoint.lane_type": ("attr", ()),
    "LaneType.Driving": ("attr", ()),
    # traffic manager
    "TrafficManager.set_synchronous_mode": ("method", ((True,), {})),
    "TrafficManager.set_random_device_seed": ("method", ((1,), {})),
    # blueprints and actors
    "BlueprintLibrary.find": ("method", (("vehicle.tesla.model3",), {})),
    "BlueprintLibrary.filter": ("method", (("vehicle.*",), {})),
    "ActorBlueprint.id": ("attr", ()),
    "ActorBlueprint.has_attribute": ("method", (("role_name",), {})),
    "ActorBlueprint.get_attribute": ("method", (("number_of_wheels",), {})),
    "ActorBlueprint.set_attribute": ("method", (("role_name", "x"), {})),
    "ActorAttribute.as_int": ("method", ((), {})),
    "ActorList.__iter__": ("attr", ()),
    "Actor.id": ("attr", ()),
    "Actor.attributes": ("attr", ()),
    "Actor.destroy": ("method", ((), {})),
    "Sensor.listen": ("method", ((print,), {})),
    "Sensor.stop": ("method", ((), {})),
    "Image.frame": ("attr", ()),
    "Image.width": ("attr", ()),
    "Image.height": ("attr", ()),
    "Image.raw_data": ("attr", ()),
    "Image.transform": ("attr", ()),
    # commands
    "command.SpawnActor.__init__": ("method", (("<bp>", "<tf>"), {})),
    "command.SpawnActor.then": ("method", (("<cmd>",), {})),
    "command.SetAutopilot.__init__": ("method", (("<future>", True, 8000), {})),
    "command.DestroyActor.__init__": ("method", ((1,), {})),
    "command.ApplyTransform.__init__": ("method", ((1, "<tf>"), {})),
    "command.SetSimulatePhysics.__init__": ("method", (("<future>", False), {})),
    "command.FutureActor": ("attr", ()),
    "command.Response.actor_id": ("attr", ()),
    "command.Response.error": ("attr", ()),
    "command.Response.has_error": ("method", ((), {})),
    # geometry and textures
    "Transform.__init__": ("method", (("<loc>", "<rot>"), {})),
    "Transform.get_matrix": ("method", ((), {})),
    "Transform.location": ("attr", ()),
    "Transform.rotation": ("attr", ()),
    "Location.__init__": ("method", ((0.0, 0.0, 0.0), {})),
    "Rotation.__init__": ("method", ((0.0, 0.0, 0.0), {})),
    "Vector3D.x": ("attr", ()),
    "Location.x": ("attr", ()),
    "Rotation.yaw": ("attr", ()),
    "Rotation.pitch": ("attr", ()),
    "Rotation.roll": ("attr", ()),
    "Location.y": ("attr", ()),
    "Location.z": ("attr", ()),
    "Vector3D.y": ("attr", ()),
    "Vector3D.z": ("attr", ()),
    "BoundingBox.location": ("attr", ()),
    "BoundingBox.extent": ("attr", ()),
    "BoundingBox.rotation": ("attr", ()),
    "EnvironmentObject.name": ("attr", ()),
    "EnvironmentObject.bounding_box": ("attr", ()),
    "CityObjectLabel.TrafficSigns": ("attr", ()),
    "MaterialParameter.Diffuse": ("attr", ()),
    "TextureColor.__init__": ("method", ((2, 2), {})),
    "TextureColor.set": ("method", ((0, 0, "<color>"), {})),
    "TextureFloatColor.__init__": ("method", ((0, 0), {})),
    "Color.__init__": ("method", ((1, 2, 3, 4), {})),
}


def parse_version(text: str) -> tuple[int, int, int]:
    """'0.9.13', '0.9.13-1-g8854804f4' or '0.9.16' -> (0, 9, 13); unparseable -> (0, 0, 0)."""
    import re

    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def check_version(text: str, what: str) -> None:
    """RunError unless ``text`` is CARLA >= 0.9.13 (texture streaming, object names, level boxes)."""
    v = parse_version(text)
    if v < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise RunError(f"CARLA {what} version '{text}' is too old: carla_mr needs CARLA {need} or newer "
                       f"(texture streaming and World.get_names_of_all_objects arrived in {need}). "
                       f"Use a newer server (docker/docker-compose.yml runs carlasim/carla:0.9.16) and "
                       f"`pip install 'carla>={need}'` for the client.")


def import_carla():
    """The real ``carla`` module, checked to be >= 0.9.13 (InputError naming the fix if absent)."""
    try:
        import carla
    except ImportError as exc:
        raise InputError("the CARLA backend needs the 'carla' Python package of your server's version: "
                         "pip install 'carla==<server version>' (0.9.13 or newer)", field="backend") from exc
    try:
        from importlib.metadata import version

        v = version("carla")
    except Exception:  # noqa: BLE001 - e.g. an .egg on sys.path carries no metadata
        v = None
    if v is not None:
        check_version(v, "client (Python package)")
    return carla


# -- close on every exit path -------------------------------------------------------------------

#: Worlds connected and not yet closed (strong references: a world that holds server state
#: must be closed, even if its owner dropped it, so the atexit hook can still reach it).
_OPEN: "set[CarlaWorld]" = set()
_HANDLERS: dict[int, Any] = {}
_ATEXIT = False
_LOCK = threading.RLock()


def close_all_open_worlds() -> None:
    """close() every CarlaWorld of this process that is still open (atexit and signal hook)."""
    for w in list(_OPEN):
        try:
            w.close()
        except Exception as exc:  # noqa: BLE001 - closing everything matters more than one error
            log.warning("closing a CarlaWorld failed: %s", exc)


def _signal_handler(signum, frame):
    prev = _HANDLERS.get(signum, signal.SIG_DFL)  # read first: the last close() uninstalls
    close_all_open_worlds()
    _uninstall_handlers()
    if callable(prev):
        prev(signum, frame)
    elif prev == signal.SIG_IGN:
        return
    elif signum == signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise SystemExit(128 + int(signum))


def _install_handlers() -> None:
    global _ATEXIT
    with _LOCK:
        if not _ATEXIT:
            atexit.register(close_all_open_worlds)
            _ATEXIT = True
        if _HANDLERS or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                _HANDLERS[sig] = signal.getsignal(sig)
                signal.signal(sig, _signal_handler)
            except (ValueError, OSError):  # pragma: no cover - not the main interpreter
                _HANDLERS.pop(sig, None)


def _uninstall_handlers() -> None:
    with _LOCK:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, prev in list(_HANDLERS.items()):
            try:
                if signal.getsignal(sig) is _signal_handler:
                    signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):  # pragma: no cover
                pass
            _HANDLERS.pop(sig, None)


# -- helpers ------------------------------------------------------------------------------------

def _is_connection_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("time-out of", "timed out", "connection refused", "connection closed",
                                   "connection reset", "rpc::timeout"))


def pick_blueprint(library: Any, table: tuple[str, ...], rng: np.random.Generator, *, wheels: int | None = 4,
                   cache: dict | None = None):
    """The first blueprint of ``table`` the server has (``*`` patterns choose with ``rng``
    among 4-wheeled matches). ``cache`` (a dict) remembers a pattern's matches between calls."""
    for pattern in table:
        if "*" in pattern:
            key = (pattern, wheels)
            if cache is not None and key in cache:
                cands = cache[key]
                if cands:
                    return cands[int(rng.integers(len(cands)))]
                continue
            cands = [bp for bp in library.filter(pattern)]
            if wheels is not None:
                kept = []
                for bp in cands:
                    try:
                        if bp.has_attribute("number_of_wheels") and \
                                bp.get_attribute("number_of_wheels").as_int() == wheels:
                            kept.append(bp)
                    except (RuntimeError, ValueError):
                        continue
                cands = kept
            cands.sort(key=lambda b: b.id)
            if cache is not None:
                cache[key] = cands
            if cands:
                return cands[int(rng.integers(len(cands)))]
            continue
        try:
            return library.find(pattern)
        except (IndexError, RuntimeError, KeyError):
            continue
    return None


def spawn_transforms(cmap: Any, api: Any, spacing_m: float = 12.0) -> list:
    """The map's recommended spawn points, or (maps without any, e.g. generated from an .xodr)
    driving-lane waypoints every ``spacing_m`` outside junctions, lifted 0.5 m."""
    sps = list(cmap.get_spawn_points())
    if sps:
        return sps
    out = []
    for wp in cmap.generate_waypoints(spacing_m):
        if wp.is_junction or wp.lane_type != api.LaneType.Driving:
            continue
        t = wp.transform
        out.append(api.Transform(api.Location(t.location.x, t.location.y, t.location.z + 0.5),
                                 api.Rotation(t.rotation.pitch, t.rotation.yaw, t.rotation.roll)))
    return out


def bgra_to_rgb(raw: Any, width: int, height: int) -> np.ndarray:
    """CARLA image bytes (BGRA, row-major) -> (H, W, 3) uint8 RGB (a copy)."""
    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size != width * height * 4:
        raise RunError(f"camera image has {a.size} bytes, expected {width}x{height}x4")
    return a.reshape(height, width, 4)[:, :, 2::-1].copy()


def bgra_array(raw: Any, width: int, height: int) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 4)


@dataclass
class _Sensor:
    actor: Any
    q: "queue.Queue"
    width: int
    height: int
    latest: Any = None  # the image matched to the latest tick, or None when missed
    matched: int = 0
    missed: int = 0
    dropped: int = 0


@dataclass
class _Camera:
    name: str
    spec: CameraSpec
    vehicle_id: int
    rgb: _Sensor
    depth: Optional[_Sensor] = None


@dataclass
class CloseReport:
    """What close() did: steps done, steps that failed (name -> error), steps skipped."""

    done: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)


class CarlaWorld(World):
    """A CARLA server behind the World interface. See the module docstring for the guarantees.

    ``client_factory(host, port) -> client`` replaces ``carla.Client`` (tests inject the
    stand-in server); its optional ``api`` attribute is the namespace used for ``carla.*``
    classes (default: the real ``carla`` module). ``sensor_timeout_s`` bounds the wait for a
    camera image each tick; ``depth`` attaches a depth camera beside each RGB camera for the
    labels' occlusion (both default to the scenario's ``carla:`` section). ``cache_dir`` keeps
    the per-town sign-object names on disk (default: ``<cache>/carla``, see
    :func:`carla_mr.world.sumo_net.cache_dir`). ``install_handlers`` adds the SIGINT/SIGTERM
    handlers (main thread only).
    """

    def __init__(self, scenario: "Scenario", *, seed: Optional[int] = None,
                 client_factory: Optional[Callable[[str, int], Any]] = None,
                 sensor_timeout_s: Optional[float] = None, depth: Optional[bool] = None,
                 cache_dir: str | Path | None = None, install_handlers: bool = True):
        super().__init__(scenario.tick_s)
        self.scenario = scenario
        self.cfg = scenario.carla
        self.seed = int(scenario.seed if seed is None else seed)
        self.sensor_timeout_s = float(self.cfg.sensor_timeout_s if sensor_timeout_s is None else sensor_timeout_s)
        self.depth = bool(self.cfg.depth_camera if depth is None else depth)
        self._factory = client_factory
        self._install = bool(install_handlers)
        self.api = getattr(client_factory, "api", None) if client_factory is not None else None
        if self.api is None:
            self.api = import_carla()
        self.session = os.urandom(4).hex()
        self.tag_prefix = f"{self.cfg.role_name_prefix}/"
        self.tag = f"{self.tag_prefix}{self.session}/"
        # everything close() may touch starts as None / empty, so close() is safe at any point
        self.client: Any = None
        self.world: Any = None
        self.tm: Any = None
        self._orig_settings: Any = None
        self._we_enabled_sync = False
        self._settings_touched = False
        self._tm_sync_touched = False
        self._actor_ids: dict[int, str] = {}  # id -> kind ("av", "bg", "rsu", "sensor")
        self._marker_id: Optional[int] = None
        self._cameras: dict[str, _Camera] = {}
        self._closed = False
        self._connected = False
        self._server_lost = False
        self.close_report = CloseReport()
        self.stats: dict[str, Any] = {"leftovers_removed": 0, "spawn_retries": 0, "spawn_shortfall": 0,
                                      "vanished": 0, "rsu_props": 0, "texture_noops": [], "texture_no_object": [],
                                      "texture_not_restorable": []}
        self.last: Optional[Snapshot] = None
        self._frame0: Optional[int] = None
        self._t0 = 0.0
        self._server_frame = -1
        self._world_snapshot: Any = None
        self._vehicle_ids = np.zeros(0, np.int64)
        self._vehicle_role = np.zeros(0, np.uint8)
        self._box_index = np.zeros(0, np.int64)
        self._geometry = None
        self._level_boxes = None
        self._pending_checks: dict[str, dict[str, Any]] = {}
        from carla_mr.world.carla_textures import SignObjectIndex

        if cache_dir is None:
            from carla_mr.world.sumo_net import cache_dir as _cache_root

            cache_dir = _cache_root() / "carla"
        self.objects = SignObjectIndex(cache_dir)
        self.cosim = None
        self.town = ""

    # -- connection and settings ------------------------------------------------------------
    def _connect(self) -> None:
        api = self.api
        factory = self._factory or api.Client
        _OPEN.add(self)
        if self._install:
            _install_handlers()
        try:
            self.client = factory(self.cfg.host, int(self.cfg.port))
            self.client.set_timeout(float(self.cfg.timeout_s))
            server_version = self.client.get_server_version()
        except RunError:
            raise
        except Exception as exc:
            raise RunError(f"cannot reach a CARLA server at {self.cfg.host}:{self.cfg.port} within "
                           f"{self.cfg.timeout_s:g} s ({exc}); start one (see docs/carla.md: docker compose up "
                           f"carla) or set carla.host / carla.port in the scenario") from exc
        check_version(server_version, "server")
        self.server_version = server_version
        try:
            client_version = self.client.get_client_version()
        except Exception:  # noqa: BLE001 - informative only
            client_version = None
        if client_version and parse_version(client_version) != parse_version(server_version):
            log.warning("CARLA client %s and server %s differ; install the client of the server's version "
                        "(pip install 'carla==%s') if calls fail", client_version, server_version, server_version)
        world = self.client.get_world()
        self.world = world
        # 1. the settings before any change of ours
        self._orig_settings = world.get_settings()
        # 2. leftovers of an earlier crashed run (our prefix, any session)
        markers: list[str] = []
        removed = self._remove_tagged(self.tag_prefix, markers=markers)
        self.stats["leftovers_removed"] = removed
        if self._recover_from_markers(markers, removed):
            # put the server back as it was before the crash right away (an orphaned synchronous
            # server would otherwise wait for ticks nobody sends, e.g. during a map load)
            s = world.get_settings()
            if (bool(s.synchronous_mode), s.fixed_delta_seconds) != (bool(self._orig_settings.synchronous_mode),
                                                                     self._orig_settings.fixed_delta_seconds):
                s.synchronous_mode = self._orig_settings.synchronous_mode
                s.fixed_delta_seconds = self._orig_settings.fixed_delta_seconds
                world.apply_settings(s)
        # 3. the map (loading keeps the settings: reset_settings=False)
        world = self._load_map(world)
        self.world = world
        # 3b. a marker actor carrying the original settings, spawned before they change, so a run
        #     that starts after this one crashed can restore them (see _recover_from_markers)
        self._spawn_marker()
        # 4. synchronous mode with a fixed step, applied AFTER loading
        s = world.get_settings()
        self._we_enabled_sync = not bool(self._orig_settings.synchronous_mode)
        self._settings_touched = True
        s.synchronous_mode = True
        s.fixed_delta_seconds = self.tick_s
        world.apply_settings(s)
        # 5. the Traffic Manager, synchronous and seeded
        self.tm = self.client.get_trafficmanager(int(self.cfg.tm_port))
        self._tm_sync_touched = True
        self.tm.set_synchronous_mode(True)
        self.tm.set_random_device_seed(int(self.seed) % (2 ** 31))
        self._connected = True

    def _load_map(self, world: Any) -> Any:
        """Load the scenario's map: a town the server has (by name), else an .xodr file
        (``generate_opendrive_world``, with the scenario's signs injected). Settings are kept
        (``reset_settings=False``) and applied by the caller afterwards."""
        from carla_mr.world.maps import signs_for_scenario

        sc = self.scenario
        explicit_file = sc.map.endswith(".xodr") or "/" in sc.map or os.sep in sc.map
        town = None
        available: dict[str, str] = {}
        if not explicit_file:
            available = {str(m).rsplit("/", 1)[-1]: str(m) for m in self.client.get_available_maps()}
            if sc.map in available:
                town = sc.map
        if town is not None:
            if sc.signs.inject or sc.signs.random_count:
                raise InputError("injecting signs needs an .xodr map on the carla backend (a town's level cannot "
                                 "get new sign meshes); give map: path/to/Town.xodr or remove the signs section",
                                 field="signs", source=sc.source_path)
            self.town = town
            if world.get_map().name.rsplit("/", 1)[-1] != town:
                world = self.client.load_world(town, reset_settings=False)
            return world
        from carla_mr.config import resolve_map

        path = resolve_map(sc.map, sc.source_path, required=explicit_file)
        if path is None:
            raise InputError(f"map '{sc.map}' is neither a town of this server ({', '.join(sorted(available))}) nor "
                             f"an .xodr file; give a town name or a path to an .xodr", field="map",
                             source=sc.source_path)
        text = Path(path).read_text(encoding="utf-8")
        text, _ = signs_for_scenario(text, sc.signs, self.seed, name=Path(path).stem)
        params = self.api.OpendriveGenerationParameters(
            vertex_distance=2.0, max_road_length=50.0, wall_height=1.0, additional_width=0.6,
            smooth_junctions=True, enable_mesh_visibility=True)
        world = self.client.generate_opendrive_world(text, params, reset_settings=False)
        self.town = Path(path).stem
        return world

    # -- actors -----------------------------------------------------------------------------
    def _marker_role(self) -> str:
        o = self._orig_settings
        delta = o.fixed_delta_seconds
        d = "none" if delta is None else repr(float(delta))
        return f"{self.tag}marker;sync={int(bool(o.synchronous_mode))};delta={d}"

    def _spawn_marker(self) -> None:
        lib = self.world.get_blueprint_library()
        bp = pick_blueprint(lib, MARKER_BLUEPRINTS, np.random.default_rng(0), wheels=None)
        if bp is None or not bp.has_attribute("role_name"):
            log.warning("no blueprint for the crash-recovery marker; a crashed run's settings cannot be recovered")
            return
        bp.set_attribute("role_name", self._marker_role())
        api = self.api
        actor = self.world.spawn_actor(bp, api.Transform(api.Location(0.0, 0.0, -50.0), api.Rotation(0.0, 0.0, 0.0)))
        self._marker_id = int(actor.id)

    def _recover_from_markers(self, markers: list[str], removed: int) -> bool:
        """Adopt the settings a crashed run recorded before it changed them (its marker), so this
        run's close() restores the server to its state before the crash. True when a marker
        was found."""
        o = self._orig_settings
        parsed = []
        for m in markers:
            try:
                fields = dict(kv.split("=", 1) for kv in m.split(";")[1:])
                sync = fields["sync"] == "1"
                delta = None if fields["delta"] == "none" else float(fields["delta"])
                parsed.append((sync, delta))
            except (KeyError, ValueError):
                continue
        if parsed:
            sync, delta = min(parsed, key=lambda p: p[0])  # an asynchronous original wins
            if bool(o.synchronous_mode) != sync or o.fixed_delta_seconds != delta:
                log.warning("a crashed carla_mr run left the server changed; its original settings (synchronous=%s, "
                            "fixed_delta_seconds=%s) will be restored on close", sync, delta)
            o.synchronous_mode = sync
            o.fixed_delta_seconds = delta
        elif removed and o.synchronous_mode:
            log.warning("removed %d actors left by a crashed carla_mr run; the server was left synchronous by it "
                        "and will be switched back to asynchronous on close", removed)
            o.synchronous_mode = False
            o.fixed_delta_seconds = None
        self.stats["recovered_settings"] = bool(parsed)
        return bool(parsed)

    def _remove_tagged(self, prefix: str, *, markers: list | None = None, keep: int | None = None) -> int:
        """Destroy every actor whose role_name starts with ``prefix`` (except ``keep``); returns how
        many. Crash-recovery markers' role names are appended to ``markers``."""
        ids = []
        for a in self.world.get_actors():
            role = str(a.attributes.get("role_name", "")) if hasattr(a, "attributes") else ""
            if role.startswith(prefix) and int(a.id) != keep:
                ids.append(int(a.id))
                if markers is not None and "/marker;" in role:
                    markers.append(role)
        if ids:
            self._destroy_ids(ids)
        return len(ids)

    def _destroy_ids(self, ids: list[int]) -> None:
        api = self.api
        responses = self.client.apply_batch_sync([api.command.DestroyActor(int(i)) for i in ids], False)
        failed = [i for i, r in zip(ids, responses) if r.has_error() and "not found" not in str(r.error).lower()]
        for i in failed:  # one by one for those the batch could not destroy
            a = self.world.get_actor(int(i))
            if a is not None:
                a.destroy()

    def _tagged(self, bp: Any, kind: str) -> Any:
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", f"{self.tag}{kind}")
        return bp

    def _spawn_batch(self, items: list[tuple[Any, Any, str]], what: str, *, autopilot: bool,
                     physics: bool = True) -> tuple[list[tuple[int, int]], list[int]]:
        """Spawn ``(blueprint, transform, kind)`` items in one batch, each tagged ``<tag><kind>``;
        returns ((index, actor id) of each spawned item, indices of items that collided at
        their spawn point). Each command is made right after its blueprint is tagged (a
        command copies the blueprint), so one blueprint object may serve many items."""
        api = self.api
        cmd = api.command
        batch = []
        for bp, tf, kind in items:
            c = cmd.SpawnActor(self._tagged(bp, kind), tf)
            if autopilot:
                c = c.then(cmd.SetAutopilot(cmd.FutureActor, True, int(self.cfg.tm_port)))
            if not physics:
                c = c.then(cmd.SetSimulatePhysics(cmd.FutureActor, False))
            batch.append(c)
        if not batch:
            return [], []
        responses = self.client.apply_batch_sync(batch, True)
        ids, collided = [], []
        for k, r in enumerate(responses):
            if r.has_error():
                if "collision" in str(r.error).lower():
                    collided.append(k)
                else:
                    log.warning("spawning %s failed: %s", what, r.error)
            else:
                ids.append((k, int(r.actor_id)))
                self._actor_ids[int(r.actor_id)] = items[k][2]
        return ids, collided

    def _spawn_vehicles(self, rng: np.random.Generator) -> None:
        sc = self.scenario
        lib = self.world.get_blueprint_library()
        points = spawn_transforms(self.map, self.api)
        order = list(rng.permutation(len(points)))
        want = [("av", ROLE_AV, AV_BLUEPRINTS)] * int(sc.vehicles.avs)
        if self.cosim is None:
            want += [("bg", ROLE_BACKGROUND, BACKGROUND_BLUEPRINTS)] * int(sc.vehicles.background)
        roles: dict[int, int] = {}
        pending = list(want)
        cache: dict = {}
        for _round in range(64):  # every round uses up spawn points, so this ends anyway
            if not pending or not order:
                break
            take = pending[:len(order)]
            items = []
            for kind, _, table in take:
                bp = pick_blueprint(lib, table, rng, cache=cache)
                if bp is None:
                    raise RunError(f"the server has no vehicle blueprint from {table}")
                items.append((bp, points[order.pop(0)], kind))
            done, collided = self._spawn_batch(items, "vehicle", autopilot=True)
            for k, vid in done:
                roles[vid] = take[k][1]
                self._actor_ids[vid] = take[k][0]
            pending = [take[k] for k in collided] + pending[len(take):]
            if collided:
                self.stats["spawn_retries"] += len(collided)
        self.stats["spawn_shortfall"] = len(pending)
        if pending:
            log.warning("could not spawn %d of %d vehicles (spawn points used up or blocked)", len(pending), len(want))
        ids_sorted = sorted(roles)
        self._vehicle_ids = np.array(ids_sorted, dtype=np.int64)
        self._vehicle_role = np.array([roles[i] for i in ids_sorted], dtype=np.uint8)

    def _spawn_rsu_props(self, rng: np.random.Generator) -> None:
        api = self.api
        lib = self.world.get_blueprint_library()
        if not self.cfg.rsu_props or len(self.rsus) == 0:
            return  # purely logical RSUs
        bp = pick_blueprint(lib, RSU_PROP_BLUEPRINTS, rng, wheels=None)
        if bp is None:
            log.info("no RSU prop blueprint on this server; RSUs stay logical")
            return
        items = []
        for j in range(len(self.rsus)):
            # the RSU's logical position is on a lane centre; its prop stands at the curb beside it
            loc = api.Location(float(self.rsus.x[j]), float(self.rsus.y[j]), 0.0)
            wp = self.map.get_waypoint(loc)
            if wp is None:
                continue
            t = wp.transform
            r = t.get_right_vector()
            off = float(wp.lane_width) / 2.0 + 1.0
            tf = api.Transform(api.Location(t.location.x + off * r.x, t.location.y + off * r.y, t.location.z),
                               api.Rotation(0.0, t.rotation.yaw, 0.0))
            items.append((bp, tf, "rsu"))
        done, _ = self._spawn_batch(items, "rsu", autopilot=False, physics=False)
        self.stats["rsu_props"] = len(done)

    # -- World interface --------------------------------------------------------------------
    def reset(self) -> Snapshot:
        """Connect (first call), load the map, switch to synchronous mode, spawn, and return frame 0."""
        if self._closed:
            raise RunError("CarlaWorld.reset() after close(); make a new CarlaWorld")
        try:
            if not self._connected:
                self._connect()
            else:
                self._teardown_actors()
            self._setup_world()
            return self._advance()
        except BaseException as exc:
            self.close()
            self._reraise(exc, "reset")
            raise

    def _setup_world(self) -> None:
        from carla_mr.world.maps import landmarks_to_signs
        from carla_mr.world.rsu import RsuAssociator, make_rsus

        rng = np.random.default_rng(self.seed)
        self.map = self.world.get_map()
        self.signs = landmarks_to_signs(self.map)
        self.rsus = make_rsus(self.scenario.rsus, self.map)
        self._assoc = RsuAssociator(self.rsus)
        self._join_level_boxes()
        if self.cfg.cosim_sumo and self.cosim is None:
            from carla_mr.world.cosim import SumoCosim

            self.cosim = SumoCosim(self)
        self._spawn_vehicles(rng)
        self._spawn_rsu_props(rng)
        if self.cosim is not None:
            self.cosim.start()
        self._frame0 = None

    def _join_level_boxes(self) -> None:
        from carla_mr.world.carla_signs import join_boxes_to_signs, sign_geometry

        bbs = list(self.world.get_level_bbs(self.api.CityObjectLabel.TrafficSigns))
        center = np.array([[b.location.x, b.location.y, b.location.z] for b in bbs], dtype=np.float64).reshape(-1, 3)
        extent = np.array([[b.extent.x, b.extent.y, b.extent.z] for b in bbs], dtype=np.float64).reshape(-1, 3)
        rot = np.array([[b.rotation.pitch, b.rotation.yaw, b.rotation.roll] for b in bbs],
                       dtype=np.float64).reshape(-1, 3)
        self._level_boxes = (center, extent, rot)
        sxyz = np.stack([self.signs.x, self.signs.y, self.signs.z], axis=1) if len(self.signs) else np.zeros((0, 3))
        # traffic lights are not TrafficSigns objects: only static signs join a level box
        static = np.array([str(k) != "traffic_light" for k in self.signs.kind], dtype=bool)
        idx = np.full(len(self.signs), -1, dtype=np.int64)
        if static.any():
            idx[static] = join_boxes_to_signs(sxyz[static], center)
        self._box_index = idx
        self._geometry = sign_geometry(self.signs, self._box_index, center, extent, rot)

    def tick(self) -> Snapshot:
        """One fixed step: ``world.tick()``, then every vehicle from that frame's snapshot."""
        if self._closed or not self._connected:
            raise RunError("CarlaWorld.tick() before reset() (or after close())")
        try:
            return self._advance()
        except BaseException as exc:
            self.close()
            self._reraise(exc, "tick")
            raise

    def _reraise(self, exc: BaseException, what: str) -> None:
        """libcarla's RuntimeErrors become RunErrors naming the step; ours pass through."""
        from carla_mr.errors import CarlaMrError

        if isinstance(exc, Exception) and not isinstance(exc, CarlaMrError):
            rep = self.close_report
            state = ("the server was restored and our actors removed" if not rep.failed and not rep.skipped else
                     f"restoring the server was incomplete (failed: {sorted(rep.failed)}, skipped: {rep.skipped}); "
                     f"the next run removes our leftovers and restores the settings")
            raise RunError(f"CARLA {what} failed ({type(exc).__name__}: {exc}); {state}") from exc

    def _advance(self) -> Snapshot:
        if self.cosim is not None:
            self.cosim.before_tick()
        frame = int(self.world.tick(float(self.cfg.timeout_s)))
        snap = self.world.get_snapshot()
        if int(snap.frame) < frame:
            raise RunError(f"the world snapshot is of frame {snap.frame}, older than the tick's frame {frame}")
        self._server_frame = frame
        self._world_snapshot = snap
        elapsed = float(snap.timestamp.elapsed_seconds)
        if self._frame0 is None:
            self._frame0 = frame
            self._t0 = elapsed - self.tick_s
        ids = self._vehicle_ids
        role = self._vehicle_role
        if self.cosim is not None:
            ids, role = self.cosim.vehicles(ids, role)
        n = len(ids)
        rows = np.zeros((n, 7))
        keep = np.ones(n, dtype=bool)
        find = snap.find
        vals = []
        for k, vid in enumerate(ids.tolist()):
            a = find(vid)
            if a is None:
                keep[k] = False
                vals.append((0.0,) * 7)
                continue
            t = a.get_transform()
            v = a.get_velocity()
            loc = t.location
            vals.append((loc.x, loc.y, loc.z, t.rotation.yaw, v.x, v.y, v.z))
        if n:
            rows = np.array(vals, dtype=np.float64)
        x, y, z, yaw = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), rows[:, 3].copy()
        speed = np.sqrt((rows[:, 4:7] ** 2).sum(axis=1))
        if not keep.all():  # vehicles the server removed (e.g. fell off the map)
            gone = ids[~keep]
            self.stats["vanished"] += int(gone.size)
            for g in gone:
                self._actor_ids.pop(int(g), None)
            if self.cosim is None:
                self._vehicle_ids, self._vehicle_role = ids[keep], role[keep]
            ids, role, x, y, z, yaw, speed = ids[keep], role[keep], x[keep], y[keep], z[keep], yaw[keep], speed[keep]
        from carla_mr.world.coords import wrap_deg

        out = Snapshot(frame=frame - self._frame0, time=elapsed - self._t0, ids=ids.astype(np.int64), role=role,
                       x=x, y=y, z=z, yaw=wrap_deg(yaw), speed=speed, rsu=self._assoc.assign(x, y))
        self._match_sensors(frame)
        self._check_textures()
        self.last = out
        return out

    # -- cameras ----------------------------------------------------------------------------
    def _spawn_sensor(self, table: tuple[str, ...], spec: CameraSpec, parent: Any, kind: str) -> _Sensor:
        api = self.api
        lib = self.world.get_blueprint_library()
        bp = pick_blueprint(lib, table, np.random.default_rng(0), wheels=None)
        if bp is None:
            raise RunError(f"the server has no camera blueprint from {table}")
        bp.set_attribute("image_size_x", str(int(spec.width)))
        bp.set_attribute("image_size_y", str(int(spec.height)))
        bp.set_attribute("fov", repr(float(spec.fov_deg)))
        self._tagged(bp, kind)
        tf = api.Transform(api.Location(spec.x, spec.y, spec.z), api.Rotation(spec.pitch, spec.yaw, spec.roll))
        actor = self.world.spawn_actor(bp, tf, attach_to=parent)
        self._actor_ids[int(actor.id)] = "sensor"
        q: queue.Queue = queue.Queue()
        actor.listen(q.put)
        return _Sensor(actor=actor, q=q, width=int(spec.width), height=int(spec.height))

    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        """Attach an RGB camera (and, with ``depth``, a depth camera at the same pose) to a vehicle.

        Images are matched to ticks from the next tick on; see :meth:`read_camera`.
        """
        if not self._connected or self._closed:
            raise RunError("attach_camera() needs a reset() world")
        if name in self._cameras:
            raise InputError(f"a camera named '{name}' is already attached", field="name")
        spec = spec if isinstance(spec, CameraSpec) else CameraSpec.model_validate(spec)
        parent = self.world.get_actor(int(vehicle_id))
        if parent is None:
            raise InputError(f"no vehicle with id {vehicle_id} in the world", field="vehicle_id")
        rgb = self._spawn_sensor(RGB_BLUEPRINTS, spec, parent, "camera")
        cam = _Camera(name=name, spec=spec, vehicle_id=int(vehicle_id), rgb=rgb)
        self._cameras[name] = cam
        if self.depth:
            cam.depth = self._spawn_sensor(DEPTH_BLUEPRINTS, spec, parent, "depth")

    def _match_sensors(self, frame: int) -> None:
        deadline = time.monotonic() + self.sensor_timeout_s
        for cam in self._cameras.values():
            for s in (cam.rgb, cam.depth):
                if s is None:
                    continue
                s.latest = None
                while True:
                    remaining = deadline - time.monotonic()
                    try:
                        img = s.q.get(timeout=max(0.0, remaining)) if remaining > 0 else s.q.get_nowait()
                    except queue.Empty:
                        s.missed += 1
                        break
                    f = int(img.frame)
                    if f == frame:
                        s.latest = img
                        s.matched += 1
                        break
                    if f < frame:
                        s.dropped += 1
                        continue
                    # an image from a later frame than this tick: keep it for the next tick
                    s.q.put(img)
                    s.missed += 1
                    break

    def camera_stats(self) -> dict[str, dict[str, int]]:
        """Per camera: images matched to ticks, frames missed (timeout), stale images dropped."""
        out = {}
        for name, cam in self._cameras.items():
            out[name] = {"matched": cam.rgb.matched, "missed": cam.rgb.missed, "dropped": cam.rgb.dropped}
            if cam.depth is not None:
                out[name].update(depth_matched=cam.depth.matched, depth_missed=cam.depth.missed)
        return out

    def read_camera(self, name: str) -> CameraFrame:
        """The named camera's RGB image for the latest tick, with sign labels.

        Raises :class:`FrameMissed` (a RunError) when the image of this tick did not arrive in
        time; the miss is counted in :meth:`camera_stats` and the next tick may be read again.
        """
        from carla_mr.world.carla_signs import decode_depth_bgra, frame_labels

        cam = self._cameras.get(name)
        if cam is None:
            raise KeyError(f"no camera named '{name}'; attached: {sorted(self._cameras)}")
        img = cam.rgb.latest
        if img is None:
            raise FrameMissed(f"camera '{name}' has no image for frame {self._server_frame} "
                              f"({cam.rgb.missed} missed so far)")
        rgb = bgra_to_rgb(img.raw_data, int(img.width), int(img.height))
        cam_to_world = np.array(img.transform.get_matrix(), dtype=np.float64)
        K = cam.spec.intrinsics()
        depth = None
        if cam.depth is not None and cam.depth.latest is not None:
            d = cam.depth.latest
            depth = decode_depth_bgra(bgra_array(d.raw_data, int(d.width), int(d.height)))
        a = self._world_snapshot.find(cam.vehicle_id) if self._world_snapshot is not None else None
        ego = (float("nan"),) * 4
        if a is not None:
            t = a.get_transform()
            ego = (float(t.location.x), float(t.location.y), float(t.location.z), float(t.rotation.yaw))
        labels = frame_labels(self.signs, self._geometry, cam_to_world, K, rgb.shape[1], rgb.shape[0],
                              depth_img=depth, textures=self.sign_textures()) if self._geometry is not None else []
        return CameraFrame(frame=self._server_frame - (self._frame0 or 0), time=self.last.time if self.last else 0.0,
                           image=rgb, intrinsics=K, cam_to_world=cam_to_world, ego=ego, labels=labels)

    # -- sign textures ----------------------------------------------------------------------
    def sign_objects(self) -> dict[str, list[str]]:
        """Sign id -> the level object names its texture goes to (discovered once per town).

        Static signs only (traffic lights are not TrafficSigns objects); a sign joined to a
        level box is anchored at the box, which is where its mesh is.
        """
        static = np.array([str(k) != "traffic_light" for k in self.signs.kind], dtype=bool)
        sxyz = np.stack([self.signs.x, self.signs.y, self.signs.z], axis=1) if len(self.signs) else np.zeros((0, 3))
        if self._level_boxes is not None and len(self._box_index):
            c = self._level_boxes[0]
            ok = self._box_index >= 0
            sxyz = sxyz.copy()
            sxyz[ok] = c[self._box_index[ok]]
        key = f"{self.town}@{getattr(self, 'server_version', '')}"
        ids = [str(s) for s in self.signs.ids[static]]
        table = self.objects.discover(self.world, self.api, key, ids, sxyz[static])
        return {str(s): list(table.get(str(s), [])) for s in self.signs.ids}

    def _push_textures(self, textures: Mapping[str, SignTexture]) -> None:
        from carla_mr.world.carla_textures import apply_texture, to_texture_color

        if not self._connected or self._closed:
            raise RunError("apply_sign_textures() needs a reset() world")
        names_by_sign = self.sign_objects()
        current = self.texture_store
        before = self._visible_patches(list(textures))
        for sid, tex in list(textures.items()):  # type: ignore[union-attr]
            names = names_by_sign.get(str(sid), [])
            if tex.image is None:
                prev = current.get(str(sid))
                if prev is not None and prev.source != "original":
                    # CARLA cannot read a level texture back, so the original cannot be restored;
                    # keep the label truthful: the sign still shows the last generated image.
                    self.stats["texture_not_restorable"].append(str(sid))
                    textures[str(sid)] = prev  # type: ignore[index]
                continue
            if not names:
                self.stats["texture_no_object"].append(str(sid))
                continue
            apply_texture(self.world, self.api, names, to_texture_color(self.api, np.asarray(tex.image)))
            if str(sid) in before:
                self._pending_checks[str(sid)] = before[str(sid)]

    def _visible_patches(self, sign_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Mean colour of each sign's pixels in every camera that sees it now (for the no-op check)."""
        from carla_mr.world.carla_textures import patch_mean

        out: dict[str, dict[str, Any]] = {}
        wanted = set(map(str, sign_ids))
        for name in list(self._cameras):
            try:
                fr = self.read_camera(name)
            except FrameMissed:
                continue
            for lab in fr.labels:
                if lab["id"] in wanted and lab["id"] not in out:
                    out[lab["id"]] = {"camera": name, "mean": patch_mean(fr.image, lab["box"])}
        return out

    def _check_textures(self) -> None:
        """After a tick: did each just-applied texture change the sign's pixels? No change -> no-op."""
        if not self._pending_checks:
            return
        from carla_mr.world.carla_textures import patch_changed, patch_mean

        pending, self._pending_checks = self._pending_checks, {}
        by_cam: dict[str, Any] = {}
        for sid, info in pending.items():
            cam = info["camera"]
            if cam not in by_cam:
                try:
                    by_cam[cam] = self.read_camera(cam)
                except FrameMissed:
                    by_cam[cam] = None
            fr = by_cam[cam]
            if fr is None:
                continue
            lab = next((l for l in fr.labels if l["id"] == sid), None)
            if lab is None:
                continue
            changed = patch_changed(info["mean"], patch_mean(fr.image, lab["box"]))
            self.stats.setdefault("texture_checked", 0)
            self.stats["texture_checked"] += 1
            if changed is False:
                self.stats["texture_noops"].append(sid)

    # -- metadata ---------------------------------------------------------------------------
    def landmark_summary(self) -> dict[str, Any]:
        from carla_mr.world.maps import landmark_counts

        if self.map is None:
            return super().landmark_summary()
        return landmark_counts(self.map)

    def summary(self) -> dict[str, Any]:
        """Backend facts for a run summary: server version, town, spawn/sensor/texture stats, close report."""
        return {"backend": "carla", "server_version": getattr(self, "server_version", None), "town": self.town,
                "session": self.session, **{k: v for k, v in self.stats.items()},
                **({"cosim": self.cosim.summary()} if self.cosim is not None else {}),
                "cameras": self.camera_stats() if self._cameras else self.stats.get("cameras", {}),
                "close": {"done": list(self.close_report.done), "failed": dict(self.close_report.failed),
                          "skipped": list(self.close_report.skipped)}}

    # -- close ------------------------------------------------------------------------------
    def _step(self, name: str, fn: Callable[[], Any], *, retry: Optional[Callable[[], Any]] = None) -> None:
        """Run one restore step; on failure try ``retry`` once; never raise (recorded instead)."""
        rep = self.close_report
        if self._server_lost:
            rep.skipped.append(name)
            return
        try:
            fn()
            rep.done.append(name)
            return
        except Exception as exc:  # noqa: BLE001 - every step must get its chance
            err = exc
        if retry is not None and not _is_connection_error(err):
            try:
                retry()
                rep.done.append(name)
                return
            except Exception as exc:  # noqa: BLE001
                err = exc
        rep.failed[name] = f"{type(err).__name__}: {err}"
        log.warning("CARLA close step '%s' failed: %s", name, err)
        if _is_connection_error(err):
            self._server_lost = True

    def _teardown_actors(self) -> None:
        """Stop and destroy our sensors, then every other actor of ours, then sweep by tag."""
        if self._cameras:
            self.stats["cameras"] = self.camera_stats()  # kept for summary() after the sensors go
        cams, self._cameras = self._cameras, {}
        for cam in cams.values():
            for s in (cam.rgb, cam.depth):
                if s is not None and s.actor is not None:
                    actor = s.actor
                    self._step(f"stop sensor {actor.id}", actor.stop, retry=actor.stop)
        if self.cosim is not None:
            cosim = self.cosim
            self._step("stop co-simulation", cosim.stop)
        ids = list(self._actor_ids)
        if ids and self.client is not None and self.world is not None:
            def batch():
                self._destroy_ids(ids)

            def one_by_one():
                for i in ids:
                    a = self.world.get_actor(int(i))
                    if a is not None:
                        a.destroy()

            self._step("destroy actors", batch, retry=one_by_one)
        self._actor_ids = {}
        if self.world is not None and self.client is not None:
            keep = self._marker_id
            self._step("sweep tagged actors", lambda: self._remove_tagged(self.tag, keep=keep),
                       retry=lambda: self._remove_tagged(self.tag, keep=keep))
        self._vehicle_ids = np.zeros(0, np.int64)
        self._vehicle_role = np.zeros(0, np.uint8)

    def _restore_settings(self) -> None:
        world, orig = self.world, self._orig_settings
        s = world.get_settings()
        s.fixed_delta_seconds = orig.fixed_delta_seconds
        if self._we_enabled_sync:
            s.synchronous_mode = False  # we switched it on, so we switch it off
        world.apply_settings(s)

    def close(self) -> None:
        """Restore the server and destroy our actors; idempotent and safe at any point."""
        with _LOCK:
            if self._closed:
                return
            self._closed = True
        try:
            if self.client is not None:
                try:
                    self.client.set_timeout(min(float(self.cfg.timeout_s), 5.0))
                except Exception as exc:  # noqa: BLE001
                    if _is_connection_error(exc):
                        self._server_lost = True
            self._teardown_actors()
            if self.tm is not None and self._tm_sync_touched and self._we_enabled_sync:
                tm = self.tm
                self._step("traffic manager synchronous off", lambda: tm.set_synchronous_mode(False),
                           retry=lambda: tm.set_synchronous_mode(False))
            if self.world is not None and self._orig_settings is not None and self._settings_touched:
                self._step("restore world settings", self._restore_settings, retry=self._restore_settings)
            restored = not any(k in self.close_report.failed for k in ("restore world settings",
                                                                       "traffic manager synchronous off"))
            if self._marker_id is not None and restored and not self._server_lost:
                marker = self._marker_id  # restored: the crash-recovery marker has done its job
                self._step("destroy marker", lambda: self._destroy_ids([marker]),
                           retry=lambda: self._destroy_ids([marker]))
        finally:
            _OPEN.discard(self)
            if not _OPEN:
                _uninstall_handlers()
