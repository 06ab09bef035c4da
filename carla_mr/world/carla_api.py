"""The CARLA client API as carla_mr uses it: versions, blueprint tables, small helpers.

Everything here is shared by the backend's modules (``carla_connection``, ``carla_actors``,
``carla_cameras``, ``carla_textures``) and the co-simulation (``cosim``); none of it talks
to a server by itself.

Supported CARLA releases: **0.9.15 and 0.9.16** (:data:`SUPPORTED_VERSIONS`). Both have
every call the backend makes (texture streaming with ``World.apply_textures_to_objects``,
``World.get_names_of_all_objects``, level boxes, physics substepping settings). Their
Python wheels decide the client's Python: 0.9.15 ships cp37/cp38/cp310 wheels (Python
3.10 here, the project needs >= 3.10), 0.9.16 ships cp310-cp312. 0.9.13 and 0.9.14 ship
cp38 wheels only and are therefore not supported.

Units: metres and seconds; CARLA's left-handed world frame (x forward/east, y right/south,
z up), rotations in degrees.
"""

from __future__ import annotations

import math
import re
from typing import Any, Optional

import numpy as np

from carla_mr.errors import InputError, RunError

#: The oldest supported release; a client or server below it is refused.
MIN_VERSION = (0, 9, 15)
#: Supported releases and the Python each one's client wheel needs (docker/Dockerfile).
SUPPORTED_VERSIONS: dict[str, str] = {"0.9.15": "3.10", "0.9.16": "3.11"}

#: Blueprint fallback tables: the first id the server has wins; a pattern with ``*`` picks
#: among matches (4-wheeled cars only) with the run's seed. No version branches.
AV_BLUEPRINTS = ("vehicle.tesla.model3", "vehicle.lincoln.mkz_2020", "vehicle.lincoln.mkz2017",
                 "vehicle.audi.a2", "vehicle.*")
BACKGROUND_BLUEPRINTS = ("vehicle.*",)
RSU_PROP_BLUEPRINTS = ("static.prop.streetsign", "static.prop.streetsign01", "static.prop.trafficwarning",
                       "static.prop.constructioncone")
RGB_BLUEPRINTS = ("sensor.camera.rgb",)
DEPTH_BLUEPRINTS = ("sensor.camera.depth",)
#: An inert actor whose role_name carries the settings before this run changed them.
MARKER_BLUEPRINTS = ("sensor.other.collision", "static.prop.streetsign")

#: SUMO vehicle class -> CARLA blueprints of that class with their approximate length
#: (metres, bounding-box length in CARLA's blueprint library; the co-simulation picks the
#: blueprint of the SUMO vehicle's class whose length is nearest the SUMO length).
VEHICLE_CLASSES: dict[str, tuple[tuple[str, float], ...]] = {
    "passenger": (("vehicle.audi.a2", 3.7), ("vehicle.nissan.micra", 3.6), ("vehicle.citroen.c3", 4.0),
                  ("vehicle.audi.tt", 4.2), ("vehicle.seat.leon", 4.2), ("vehicle.toyota.prius", 4.5),
                  ("vehicle.mini.cooper_s_2021", 4.6), ("vehicle.bmw.grandtourer", 4.6),
                  ("vehicle.mercedes.coupe_2020", 4.6), ("vehicle.ford.mustang", 4.7),
                  ("vehicle.tesla.model3", 4.8), ("vehicle.audi.etron", 4.9), ("vehicle.lincoln.mkz_2020", 4.9),
                  ("vehicle.dodge.charger_2020", 5.0), ("vehicle.chevrolet.impala", 5.4),
                  ("vehicle.nissan.patrol_2021", 5.6)),
    "delivery": (("vehicle.volkswagen.t2", 4.5), ("vehicle.volkswagen.t2_2021", 4.4),
                 ("vehicle.mercedes.sprinter", 5.9)),
    "truck": (("vehicle.carlamotors.carlacola", 5.2), ("vehicle.tesla.cybertruck", 6.3),
              ("vehicle.carlamotors.european_hgv", 8.5)),
    "bus": (("vehicle.mitsubishi.fusorosa", 10.3),),
    "emergency": (("vehicle.ford.ambulance", 6.4), ("vehicle.carlamotors.firetruck", 8.5)),
    "motorcycle": (("vehicle.yamaha.yzf", 2.2), ("vehicle.kawasaki.ninja", 2.0), ("vehicle.harley-davidson.low_rider", 2.4),
                   ("vehicle.vespa.zx125", 1.8)),
    "bicycle": (("vehicle.bh.crossbike", 1.6), ("vehicle.diamondback.century", 1.7), ("vehicle.gazelle.omafiets", 1.8)),
}
#: SUMO classes CARLA has no blueprint family for, and the family that stands in.
VEHICLE_CLASS_ALIASES = {"taxi": "passenger", "private": "passenger", "evehicle": "passenger", "coach": "bus",
                         "trailer": "truck", "moped": "motorcycle", "authority": "emergency", "army": "truck"}

#: CARLA recommends physics substeps of at most this long (s), and allows at most 16 of them.
MAX_SUBSTEP_S = 0.01
MAX_SUBSTEPS = 16

#: Every ``carla`` class member the backend (and the co-simulation) uses:
#: ``"Class.member": "method"`` (called; keyword names as written), or ``"attr"`` / ``"settable"``.
#: The conformance test checks each one against the installed wheel's signatures.
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
    "Client.apply_batch_sync": ("method", (([], False), {})),
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
    "World.get_traffic_light": ("method", (("<landmark>",), {})),
    "WorldSettings.synchronous_mode": ("settable", ()),
    "WorldSettings.fixed_delta_seconds": ("settable", ()),
    "WorldSettings.substepping": ("settable", ()),
    "WorldSettings.max_substep_delta_time": ("settable", ()),
    "WorldSettings.max_substeps": ("settable", ()),
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
    "Map.get_all_landmarks_of_type": ("method", (("1000001",), {})),
    "Map.to_opendrive": ("method", ((), {})),
    "Landmark.id": ("attr", ()),
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
    "TrafficLight.set_state": ("method", (("<state>",), {})),
    "TrafficLight.freeze": ("method", ((True,), {})),
    "TrafficLightState.Red": ("attr", ()),
    "TrafficLightState.Yellow": ("attr", ()),
    "TrafficLightState.Green": ("attr", ()),
    "TrafficLightState.Off": ("attr", ()),
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
    "CityObjectLabel.Any": ("attr", ()),
    "TextureColor.__init__": ("method", ((2, 2), {})),
    "TextureColor.set": ("method", ((0, 0, "<color>"), {})),
    "TextureFloatColor.__init__": ("method", ((0, 0), {})),
    "Color.__init__": ("method", ((1, 2, 3, 4), {})),
}


# -- versions -------------------------------------------------------------------------------------

def parse_version(text: str) -> tuple[int, int, int]:
    """'0.9.15', '0.9.15-1-g8854804f4' or '0.9.16' -> (0, 9, 15); unparseable -> (0, 0, 0)."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text))
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def check_version(text: str, what: str) -> None:
    """RunError unless ``text`` is a supported CARLA release (>= :data:`MIN_VERSION`)."""
    if parse_version(text) < MIN_VERSION:
        need = ".".join(map(str, MIN_VERSION))
        raise RunError(f"CARLA {what} version '{text}' is too old: carla_mr supports CARLA "
                       f"{' and '.join(SUPPORTED_VERSIONS)} (needs {need} or newer). Use a newer server "
                       f"(docker/docker-compose.yml runs carlasim/carla:0.9.16) and `pip install 'carla=={need}'` "
                       f"or newer for the client.")


def check_match(client_version: Optional[str], server_version: str, *, allow_mismatch: bool) -> None:
    """RunError when the client and server releases differ, unless ``allow_mismatch``.

    A client of another release may encode calls the server does not understand (or answer
    wrongly); CARLA's own advice is to use the same version on both sides.
    """
    if client_version is None or parse_version(client_version) == parse_version(server_version):
        return
    if allow_mismatch:
        return
    raise RunError(f"CARLA client {client_version} and server {server_version} differ: install the client of the "
                   f"server's release (pip install 'carla=={server_version}'), or accept the risk with "
                   f"--set carla.allow_version_mismatch=true")


def import_carla():
    """The real ``carla`` module, checked to be a supported release (InputError naming the fix if absent)."""
    try:
        import carla
    except ImportError as exc:
        raise InputError("the CARLA backend needs the 'carla' Python package of your server's release: "
                         f"pip install 'carla==<server version>' ({' or '.join(SUPPORTED_VERSIONS)})",
                         field="backend") from exc
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("carla")
    except PackageNotFoundError:  # e.g. an .egg on sys.path carries no metadata
        v = None
    if v is not None:
        check_version(v, "client (Python package)")
    return carla


def is_connection_error(exc: BaseException) -> bool:
    """Whether a libcarla error means the server did not answer (time-out, refused, reset)."""
    text = str(exc).lower()
    return any(k in text for k in ("time-out of", "timed out", "connection refused", "connection closed",
                                   "connection reset", "rpc::timeout"))


# -- physics ----------------------------------------------------------------------------------------

def physics_substeps(tick_s: float) -> tuple[float, int]:
    """(max_substep_delta_time s, max_substeps) whose product covers a ``tick_s`` step exactly.

    CARLA's physics covers ``max_substep_delta_time * max_substeps`` seconds of each step and
    only warns when that is less than ``fixed_delta_seconds``; it allows at most 16 substeps
    and recommends substeps of at most 0.01 s. Steps up to 0.16 s get 0.01 s substeps or
    shorter; a longer step (the schema allows up to 1 s) gets 16 substeps of ``tick_s / 16``.
    """
    n = min(MAX_SUBSTEPS, max(1, math.ceil(round(float(tick_s) / MAX_SUBSTEP_S, 9))))
    return float(tick_s) / n, int(n)


def substeps_cover(settings: Any, tick_s: float) -> bool:
    """Whether a ``WorldSettings`` already simulates a whole ``tick_s`` step of physics."""
    if not bool(settings.substepping):
        return True  # one physics step of the whole tick
    return float(settings.max_substep_delta_time) * int(settings.max_substeps) >= float(tick_s) - 1e-9


# -- blueprints and places --------------------------------------------------------------------------

def pick_blueprint(library: Any, table: tuple[str, ...], rng: np.random.Generator, *, wheels: int | None = 4,
                   cache: dict | None = None):
    """The first blueprint of ``table`` the server has (``*`` patterns choose with ``rng``
    among 4-wheeled matches), or None. ``cache`` (a dict) remembers a pattern's matches."""
    for pattern in table:
        if "*" not in pattern:
            try:
                return library.find(pattern)
            except (IndexError, RuntimeError, KeyError):
                continue
        key = (pattern, wheels)
        if cache is not None and key in cache:
            cands = cache[key]
        else:
            cands = sorted((bp for bp in library.filter(pattern) if wheels is None or _wheels(bp) == wheels),
                           key=lambda b: b.id)
            if cache is not None:
                cache[key] = cands
        if cands:
            return cands[int(rng.integers(len(cands)))]
    return None


def _wheels(bp: Any) -> int | None:
    try:
        return bp.get_attribute("number_of_wheels").as_int() if bp.has_attribute("number_of_wheels") else None
    except (RuntimeError, ValueError, IndexError):
        return None


def pick_vehicle_for(library: Any, vclass: str, length_m: float, rng: np.random.Generator,
                     available: Optional[set[str]] = None):
    """The blueprint for a SUMO vehicle of class ``vclass`` and length ``length_m`` (metres):
    among the class's blueprints (:data:`VEHICLE_CLASSES`) the server has, one of those whose
    length is nearest (within 0.5 m of the nearest, chosen with ``rng``). None when the
    server has none of the class. ``available`` (the server's blueprint ids) saves lookups."""
    family = VEHICLE_CLASSES.get(VEHICLE_CLASS_ALIASES.get(vclass, vclass), VEHICLE_CLASSES["passenger"])
    have = [(bp_id, length) for bp_id, length in family if available is None or bp_id in available]
    if not have:
        return None
    best = min(abs(length - length_m) for _, length in have)
    near = sorted(bp_id for bp_id, length in have if abs(length - length_m) <= best + 0.5)
    for k in rng.permutation(len(near)):
        try:
            return library.find(near[int(k)])
        except (IndexError, RuntimeError, KeyError):
            continue
    return None


def spawn_transforms(cmap: Any, api: Any, spacing_m: float = 12.0) -> list:
    """The map's recommended spawn points, or (maps without any, e.g. generated from an .xodr)
    driving-lane waypoints every ``spacing_m`` metres outside junctions, lifted 0.5 m."""
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


# -- images -------------------------------------------------------------------------------------------

def bgra_array(raw: Any, width: int, height: int) -> np.ndarray:
    """CARLA image bytes (BGRA, row-major) -> an (H, W, 4) uint8 view (RunError on a size mismatch)."""
    a = np.frombuffer(raw, dtype=np.uint8)
    if a.size != width * height * 4:
        raise RunError(f"camera image has {a.size} bytes, expected {width}x{height}x4")
    return a.reshape(height, width, 4)


def bgra_to_rgb(raw: Any, width: int, height: int) -> np.ndarray:
    """CARLA image bytes (BGRA, row-major) -> (H, W, 3) uint8 RGB (a copy)."""
    return bgra_array(raw, width, height)[:, :, 2::-1].copy()
