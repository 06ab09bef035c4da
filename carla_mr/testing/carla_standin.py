"""An in-process stand-in for a CARLA server, for tests of the CARLA backend without a GPU.

It behaves like the real client/world/Traffic Manager where the backend can tell the
difference, and it is built on the real ``carla`` wheel wherever the wheel works offline:

- the map is the real libcarla ``carla.Map`` parsed from the scenario's OpenDRIVE text
  (waypoints, landmarks); spawn points are generated on its driving lanes;
- settings, transforms, boxes, colours and textures are the real ``carla.WorldSettings``,
  ``carla.Transform``, ``carla.BoundingBox``, ``carla.Color``, ``carla.TextureColor``;
- vehicles on autopilot follow their lanes (``Waypoint.next``) at a steady speed;
- ``get_level_bbs(TrafficSigns)`` gives one box per static sign landmark, offset from the
  landmark the way level meshes are (up on a post, beside the road), plus decoy boxes far
  from any landmark. Objects are named the way CARLA names them: each box belongs to an
  actor ``BP_Sign_<k>`` whose meshes are the environment objects ``BP_Sign_<k>_SM_0`` (the
  plate, TrafficSigns) and ``BP_Sign_<k>_SM_1`` (the post, Poles); boxes listed in
  ``merged_boxes`` belong to a larger actor ``BP_Corner_<k>`` that also carries a building
  mesh. ``get_names_of_all_objects`` lists actor names; ``apply_textures_to_objects``
  raises for any other name (as the server does), records each call, and recolours every
  mesh of the actor in what the cameras render;
- traffic lights are actors (one per traffic-light landmark, ``World.get_traffic_light``)
  with a state that can be set and frozen;
- settings follow CARLA's physics rule, stricter than the server (which only warns): a fixed
  step longer than ``max_substep_delta_time * max_substeps`` with substepping on, or more
  than 16 substeps, is refused;
- cameras deliver BGRA images from a streaming thread, each tagged with its frame number
  (``image.frame`` and the first pixel's B, G, R bytes); depth cameras encode metres the way
  CARLA does. Frames can be dropped or delayed on request.

Fault injection: :meth:`StandinServer.fail` makes the n-th API call (or the n-th call of one
named method) raise, before or after its effect, once or from then on; ``"lost"`` makes every
later call time out like a dead server; ``action`` runs a callable instead of raising (e.g.
one that sends a signal or raises KeyboardInterrupt). Every call is logged in :attr:`StandinServer.calls`
as (name, args, kwargs) for the API conformance test.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

import carla

FRAME_TAG_PIXELS = 1  # pixel (0, 0) carries the frame number in its B, G, R bytes
SPEED_MPS = 8.0


class StandinError(RuntimeError):
    """What an injected fault raises (a RuntimeError, like libcarla's errors)."""


@dataclass
class Fault:
    index: Optional[int] = None  # global call index (0-based) at which to fail
    name: Optional[str] = None  # or: the API name ("World.tick") ...
    nth: int = 1  # ... at its nth call (1-based)
    when: str = "before"  # "before" the effect, or "after" it
    persistent: bool = False  # keep failing every later matching call
    lost: bool = False  # the server is gone: every later call times out
    timeout: bool = False  # this call times out, but the server is still there (a slow server)
    action: Optional[Callable[[], None]] = None  # run instead of raising
    fired: bool = False


def _api(name: str, *, fault: bool = True):
    """Log the call under ``name`` and apply injected faults around it."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            srv: StandinServer = self._srv
            k = srv._enter(name, args, kwargs, fault)
            out = fn(self, *args, **kwargs)
            if fault:
                srv._after(name, k)
            return out

        wrapper._api_name = name
        return wrapper

    return deco


# -- blueprints -------------------------------------------------------------------------------

class StandinAttribute:
    _carla_class = "ActorAttribute"

    def __init__(self, name: str, value: str):
        self.id = name
        self._value = str(value)

    def as_int(self) -> int:
        return int(self._value)

    def as_str(self) -> str:
        return self._value

    def __str__(self) -> str:
        return self._value


class StandinBlueprint:
    _carla_class = "ActorBlueprint"

    def __init__(self, srv: "StandinServer", bp_id: str, attrs: dict[str, str]):
        self._srv = srv
        self.id = bp_id
        self._attrs = dict(attrs)
        self.tags = bp_id.split(".")

    def _copy(self) -> "StandinBlueprint":
        return StandinBlueprint(self._srv, self.id, self._attrs)

    @_api("ActorBlueprint.has_attribute", fault=False)
    def has_attribute(self, name: str) -> bool:
        return name in self._attrs

    @_api("ActorBlueprint.get_attribute", fault=False)
    def get_attribute(self, name: str) -> StandinAttribute:
        if name not in self._attrs:
            raise IndexError(f"blueprint '{self.id}' has no attribute '{name}'")
        return StandinAttribute(name, self._attrs[name])

    @_api("ActorBlueprint.set_attribute", fault=False)
    def set_attribute(self, name: str, value: str) -> None:
        if name not in self._attrs:
            raise IndexError(f"blueprint '{self.id}' has no attribute '{name}'")
        if not isinstance(value, str):
            raise TypeError("set_attribute takes a str value")  # like Boost.Python
        self._attrs[name] = value


BLUEPRINTS: dict[str, dict[str, str]] = {
    "vehicle.tesla.model3": {"number_of_wheels": "4"},
    "vehicle.audi.a2": {"number_of_wheels": "4"},
    "vehicle.nissan.micra": {"number_of_wheels": "4"},
    "vehicle.yamaha.yzf": {"number_of_wheels": "2"},
    "vehicle.mitsubishi.fusorosa": {"number_of_wheels": "4"},
    "sensor.camera.rgb": {"image_size_x": "800", "image_size_y": "600", "fov": "90"},
    "sensor.camera.depth": {"image_size_x": "800", "image_size_y": "600", "fov": "90"},
    "static.prop.streetsign": {},
    "sensor.other.collision": {},
}


class StandinLibrary:
    _carla_class = "BlueprintLibrary"

    def __init__(self, srv: "StandinServer", bps: list[StandinBlueprint]):
        self._srv = srv
        self._bps = bps

    @_api("BlueprintLibrary.filter", fault=False)
    def filter(self, pattern: str) -> "StandinLibrary":
        return StandinLibrary(self._srv, [b for b in self._bps if fnmatch.fnmatch(b.id, pattern)])

    @_api("BlueprintLibrary.find", fault=False)
    def find(self, bp_id: str) -> StandinBlueprint:
        for b in self._bps:
            if b.id == bp_id:
                return b._copy()
        raise IndexError(f"blueprint '{bp_id}' not found")

    def __iter__(self):
        return iter([b._copy() for b in self._bps])

    def __len__(self):
        return len(self._bps)


# -- actors -----------------------------------------------------------------------------------

class StandinActor:
    _carla_class = "Actor"

    def __init__(self, srv: "StandinServer", actor_id: int, type_id: str, attrs: dict[str, str], tf: carla.Transform,
                 parent: Optional["StandinActor"] = None):
        self._srv = srv
        self.id = actor_id
        self.type_id = type_id
        self.attributes = dict(attrs)
        self._tf = tf  # world transform (or relative, for attached actors)
        self._parent = parent
        self._autopilot = False
        self._physics = True
        self._speed = 0.0

    @property
    def parent(self):
        return self._parent

    def _world_tf(self) -> carla.Transform:
        if self._parent is None:
            return self._tf
        return compose(self._parent._world_tf(), self._tf)

    @_api("Actor.get_transform")
    def get_transform(self) -> carla.Transform:
        return self._world_tf()

    @_api("Actor.destroy")
    def destroy(self) -> bool:
        return self._srv._destroy(self.id)


class StandinVehicle(StandinActor):
    _carla_class = "Vehicle"

    @_api("Vehicle.set_autopilot")
    def set_autopilot(self, enabled: bool = True, tm_port: int = 8000) -> None:
        self._srv._set_autopilot(self.id, enabled, tm_port)


class StandinTrafficLight(StandinActor):
    _carla_class = "TrafficLight"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._state = carla.TrafficLightState.Red
        self._frozen = False

    @_api("TrafficLight.set_state")
    def set_state(self, state) -> None:
        if not isinstance(state, carla.TrafficLightState):
            raise TypeError("set_state takes a carla.TrafficLightState")
        self._state = state

    def get_state(self):
        return self._state

    @_api("TrafficLight.freeze")
    def freeze(self, freeze: bool) -> None:
        self._frozen = bool(freeze)

    def is_frozen(self) -> bool:
        return self._frozen


class StandinSensor(StandinActor):
    _carla_class = "Sensor"

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self._callback: Optional[Callable] = None

    def is_listening(self) -> bool:
        return self._callback is not None

    @_api("Sensor.listen")
    def listen(self, callback: Callable) -> None:
        self._callback = callback

    @_api("Sensor.stop")
    def stop(self) -> None:
        self._callback = None


def compose(parent: carla.Transform, rel: carla.Transform) -> carla.Transform:
    """parent ∘ rel with CARLA's matrices (the sensor's world pose)."""
    m = np.array(parent.get_matrix()) @ np.array(rel.get_matrix())
    pitch = math.degrees(math.asin(max(-1.0, min(1.0, m[2, 0]))))
    yaw = math.degrees(math.atan2(m[1, 0], m[0, 0]))
    roll = math.degrees(math.atan2(-m[2, 1], m[2, 2]))
    return carla.Transform(carla.Location(float(m[0, 3]), float(m[1, 3]), float(m[2, 3])),
                           carla.Rotation(pitch, yaw, roll))


class StandinActorList:
    _carla_class = "ActorList"

    def __init__(self, actors: list[StandinActor]):
        self._actors = list(actors)

    def __iter__(self):
        return iter(self._actors)

    def __len__(self):
        return len(self._actors)

    def filter(self, pattern: str) -> "StandinActorList":
        return StandinActorList([a for a in self._actors if fnmatch.fnmatch(a.type_id, pattern)])

    def find(self, actor_id: int):
        return next((a for a in self._actors if a.id == actor_id), None)


# -- snapshots and images ---------------------------------------------------------------------

class StandinTimestamp:
    _carla_class = "Timestamp"

    def __init__(self, frame: int, elapsed: float, delta: float):
        self.frame = frame
        self.elapsed_seconds = elapsed
        self.delta_seconds = delta


class StandinActorSnapshot:
    _carla_class = "ActorSnapshot"

    def __init__(self, actor_id: int, tf: carla.Transform, vel: carla.Vector3D):
        self.id = actor_id
        self._tf = tf
        self._vel = vel

    def get_transform(self) -> carla.Transform:
        return self._tf

    def get_velocity(self) -> carla.Vector3D:
        return self._vel


class StandinWorldSnapshot:
    _carla_class = "WorldSnapshot"

    def __init__(self, frame: int, elapsed: float, delta: float, actors: dict[int, StandinActorSnapshot]):
        self.frame = frame
        self.timestamp = StandinTimestamp(frame, elapsed, delta)
        self.elapsed_seconds = elapsed
        self._actors = actors

    def find(self, actor_id: int):
        return self._actors.get(int(actor_id))

    def __iter__(self):
        return iter(self._actors.values())

    def __len__(self):
        return len(self._actors)


class StandinImage:
    _carla_class = "Image"

    def __init__(self, frame: int, width: int, height: int, fov: float, raw: bytes, tf: carla.Transform,
                 elapsed: float):
        self.frame = frame
        self.width = width
        self.height = height
        self.fov = fov
        self.raw_data = raw
        self.transform = tf
        self.timestamp = elapsed


class StandinEnvObject:
    _carla_class = "EnvironmentObject"

    def __init__(self, obj_id: int, name: str, bb: carla.BoundingBox, label=carla.CityObjectLabel.TrafficSigns):
        self.id = obj_id
        self.name = name
        self.bounding_box = bb
        self.transform = carla.Transform(bb.location, bb.rotation)
        self.type = label


class StandinMap:
    """The real offline ``carla.Map`` with spawn points added (a server map has them)."""

    _carla_class = "Map"

    def __init__(self, srv: "StandinServer", cmap: carla.Map, name: str, spawn_spacing_m: float = 15.0):
        self._srv = srv
        self._map = cmap
        self.name = name
        self._spawn = None
        self._spacing = spawn_spacing_m

    def get_spawn_points(self) -> list:
        if self._spawn is None:
            pts = []
            for wp in self._map.generate_waypoints(self._spacing):
                if wp.is_junction or wp.lane_type != carla.LaneType.Driving:
                    continue
                t = wp.transform
                pts.append(carla.Transform(carla.Location(t.location.x, t.location.y, t.location.z + 0.3),
                                           carla.Rotation(t.rotation.pitch, t.rotation.yaw, t.rotation.roll)))
            self._spawn = pts
        return list(self._spawn)

    def __getattr__(self, item):
        return getattr(self._map, item)


# -- commands (client-side objects in the real API) -------------------------------------------

class _FutureActor:
    def __repr__(self):
        return "FutureActor"


class StandinCommands:
    """The ``carla.command`` namespace: plain records the stand-in's apply_batch_sync executes."""

    FutureActor = _FutureActor()

    def __init__(self, srv: "StandinServer"):
        self._srv = srv
        outer = self

        class Response:
            _carla_class = "command.Response"

            def __init__(self, actor_id: int = 0, error: str = ""):
                self.actor_id = actor_id
                self.error = error

            def has_error(self) -> bool:
                return bool(self.error)

        class SpawnActor:
            def __init__(self, blueprint, transform, parent=None):
                outer._srv._log("command.SpawnActor.__init__", (blueprint, transform) + ((parent,) if parent else ()),
                                {})
                # like libcarla, the command keeps a copy of the blueprint's description
                bp = blueprint._copy() if hasattr(blueprint, "_copy") else blueprint
                self.blueprint, self.transform, self.parent, self.chain = bp, transform, parent, []

            def then(self, command):
                outer._srv._log("command.SpawnActor.then", (command,), {})
                self.chain.append(command)
                return self

        class SetAutopilot:
            def __init__(self, actor, enabled, tm_port=8000):
                outer._srv._log("command.SetAutopilot.__init__", (actor, enabled, tm_port), {})
                self.actor, self.enabled, self.tm_port = actor, enabled, tm_port

        class SetSimulatePhysics:
            def __init__(self, actor, enabled):
                outer._srv._log("command.SetSimulatePhysics.__init__", (actor, enabled), {})
                self.actor, self.enabled = actor, enabled

        class DestroyActor:
            def __init__(self, actor):
                outer._srv._log("command.DestroyActor.__init__", (actor,), {})
                self.actor = actor

        class ApplyTransform:
            def __init__(self, actor, transform):
                outer._srv._log("command.ApplyTransform.__init__", (actor, transform), {})
                self.actor, self.transform = actor, transform

        self.Response = Response
        self.SpawnActor = SpawnActor
        self.SetAutopilot = SetAutopilot
        self.SetSimulatePhysics = SetSimulatePhysics
        self.DestroyActor = DestroyActor
        self.ApplyTransform = ApplyTransform


class StandinApi:
    """The namespace the backend uses in place of the ``carla`` module: real wheel classes for
    data, stand-in ``command`` records and ``Client``."""

    def __init__(self, srv: "StandinServer"):
        for n in ("Transform", "Location", "Rotation", "Vector3D", "BoundingBox", "WorldSettings", "Color",
                  "TextureColor", "TextureFloatColor", "CityObjectLabel", "LaneType", "TrafficLightState",
                  "OpendriveGenerationParameters"):
            setattr(self, n, getattr(carla, n))
        self.command = StandinCommands(srv)
        self.Client = srv.client_factory


class _Factory:
    def __init__(self, srv: "StandinServer"):
        self._srv = srv
        self.api: Optional[StandinApi] = None

    def __call__(self, host: str = "127.0.0.1", port: int = 2000, worker_threads: int = 0) -> "StandinClient":
        self._srv._log("Client.__init__", (host, port), {})
        if self._srv.refuse_connections:
            raise StandinError(f"time-out of 2000ms while waiting for the simulator at {host}:{port}")
        return StandinClient(self._srv)


# -- client, world, traffic manager ------------------------------------------------------------

class StandinTrafficManager:
    _carla_class = "TrafficManager"

    def __init__(self, srv: "StandinServer", port: int):
        self._srv = srv
        self.sim_port = port
        self.sim_synchronous = False
        self.sim_seed: Optional[int] = None

    @_api("TrafficManager.set_synchronous_mode")
    def set_synchronous_mode(self, mode_switch: bool) -> None:
        self.sim_synchronous = bool(mode_switch)

    @_api("TrafficManager.set_random_device_seed")
    def set_random_device_seed(self, value: int) -> None:
        self.sim_seed = int(value)

    @_api("TrafficManager.get_port")
    def get_port(self) -> int:
        return self.sim_port


class StandinClient:
    _carla_class = "Client"

    def __init__(self, srv: "StandinServer"):
        self._srv = srv
        self._timeout = 5.0

    @_api("Client.set_timeout")
    def set_timeout(self, seconds: float) -> None:
        self._timeout = float(seconds)

    @_api("Client.get_server_version")
    def get_server_version(self) -> str:
        return self._srv.version

    @_api("Client.get_client_version")
    def get_client_version(self) -> str:
        return self._srv.client_version

    @_api("Client.get_available_maps")
    def get_available_maps(self) -> list:
        return [f"/Game/Carla/Maps/{t}" for t in sorted(self._srv.towns_text)]

    @_api("Client.get_world")
    def get_world(self) -> "StandinWorld":
        return StandinWorld(self._srv)

    @_api("Client.load_world")
    def load_world(self, map_name: str, reset_settings: bool = True, map_layers: Any = None) -> "StandinWorld":
        self._srv._load(self._srv.towns_text.get(map_name.rsplit("/", 1)[-1]), map_name.rsplit("/", 1)[-1],
                        reset_settings)
        return StandinWorld(self._srv)

    @_api("Client.generate_opendrive_world")
    def generate_opendrive_world(self, opendrive: str, parameters: Any = None,
                                 reset_settings: bool = True) -> "StandinWorld":
        self._srv._load(opendrive, "OpenDriveMap", reset_settings)
        return StandinWorld(self._srv)

    @_api("Client.get_trafficmanager")
    def get_trafficmanager(self, port: int = 8000) -> StandinTrafficManager:
        return self._srv._tm(int(port))

    @_api("Client.apply_batch_sync")
    def apply_batch_sync(self, commands: list, do_tick: bool = False) -> list:
        out = [self._srv._execute(c) for c in commands]
        if do_tick and self._srv.settings["synchronous_mode"]:
            self._srv._tick()
        return out


class StandinWorld:
    _carla_class = "World"

    def __init__(self, srv: "StandinServer"):
        self._srv = srv
        self.id = srv.episode

    @_api("World.get_settings")
    def get_settings(self) -> carla.WorldSettings:
        s = carla.WorldSettings()
        for k, v in self._srv.settings.items():
            setattr(s, k, v)
        return s

    @_api("World.apply_settings")
    def apply_settings(self, settings: carla.WorldSettings, seconds: float = 0.0) -> int:
        if not isinstance(settings, carla.WorldSettings):
            raise TypeError("apply_settings needs a carla.WorldSettings")
        check_physics(settings)
        for k in self._srv.settings:
            self._srv.settings[k] = getattr(settings, k)
        return self._srv.frame

    @_api("World.tick")
    def tick(self, seconds: float = 10.0) -> int:
        if not self._srv.settings["synchronous_mode"]:
            raise StandinError("World.tick() called while the server is asynchronous")
        return self._srv._tick()

    @_api("World.get_snapshot")
    def get_snapshot(self) -> StandinWorldSnapshot:
        return self._srv._snapshot()

    @_api("World.get_map")
    def get_map(self) -> StandinMap:
        return self._srv.map

    @_api("World.get_blueprint_library")
    def get_blueprint_library(self) -> StandinLibrary:
        return StandinLibrary(self._srv, [StandinBlueprint(self._srv, k, {**v, "role_name": ""})
                                          for k, v in sorted(BLUEPRINTS.items())])

    @_api("World.get_actors")
    def get_actors(self, actor_ids: Optional[list] = None) -> StandinActorList:
        acts = list(self._srv.actors.values())
        if actor_ids is not None:
            want = set(int(i) for i in actor_ids)
            acts = [a for a in acts if a.id in want]
        return StandinActorList(acts)

    @_api("World.get_actor")
    def get_actor(self, actor_id: int):
        return self._srv.actors.get(int(actor_id))

    @_api("World.spawn_actor")
    def spawn_actor(self, blueprint, transform, attach_to=None, attachment_type=None, bone: str = ""):
        a, err = self._srv._spawn(blueprint, transform, attach_to)
        if err:
            raise StandinError(err)
        return a

    @_api("World.get_level_bbs")
    def get_level_bbs(self, bb_type: Any = carla.CityObjectLabel.Any) -> list:
        if bb_type not in (carla.CityObjectLabel.TrafficSigns, carla.CityObjectLabel.Any):
            return []
        return [b for b, _ in self._srv.sign_boxes]

    @_api("World.get_environment_objects")
    def get_environment_objects(self, object_type: Any = carla.CityObjectLabel.Any) -> list:
        return [o for o in self._srv.env_objects if object_type in (carla.CityObjectLabel.Any, o.type)]

    @_api("World.get_names_of_all_objects")
    def get_names_of_all_objects(self) -> list:
        return list(self._srv.object_names)

    @_api("World.apply_textures_to_objects")
    def apply_textures_to_objects(self, objects_name_list: list, diffuse_texture, emissive_texture, normal_texture,
                                  ao_roughness_metallic_emissive_texture) -> None:
        if not isinstance(objects_name_list, list):
            raise TypeError("objects_name_list must be a list")  # Boost.Python takes a list only
        if not isinstance(diffuse_texture, carla.TextureColor):
            raise TypeError("diffuse_texture must be a carla.TextureColor")
        unknown = [n for n in objects_name_list if n not in self._srv.object_names]
        if unknown:
            raise StandinError(f"unable to find Actor to apply the texture ({unknown[0]})")
        self._srv._texture(list(objects_name_list), diffuse_texture)

    @_api("World.get_traffic_light")
    def get_traffic_light(self, landmark) -> Optional[StandinTrafficLight]:
        aid = self._srv.light_of.get(str(landmark.id))
        return self._srv.actors.get(aid) if aid is not None else None


def check_physics(settings: carla.WorldSettings) -> None:
    """CARLA's substepping rule (the server only warns; the stand-in refuses): with a fixed step
    and substepping on, ``max_substep_delta_time * max_substeps >= fixed_delta_seconds`` and
    ``1 <= max_substeps <= 16``."""
    delta = settings.fixed_delta_seconds
    if not settings.substepping or delta is None:
        return
    if not 1 <= int(settings.max_substeps) <= 16:
        raise StandinError(f"max_substeps must be 1..16, got {settings.max_substeps}")
    covered = float(settings.max_substep_delta_time) * int(settings.max_substeps)
    if covered + 1e-9 < float(delta):
        raise StandinError(f"physics substeps cover {covered:g} s of a {delta:g} s step "
                           f"(max_substep_delta_time * max_substeps < fixed_delta_seconds)")


# -- the server -------------------------------------------------------------------------------

class StandinServer:
    """The server state shared by every stand-in client. See the module docstring.

    ``town_xodr``: OpenDRIVE text of the map loaded at start (as if a town were running),
    ``town``: its name. ``synchronous``/``fixed_delta``: the settings another client left.
    ``foreign``: actors of other clients to create at start ((type_id, role_name) pairs).
    """

    def __init__(self, town_xodr: str, town: str = "Town01", *, version: str = "0.9.16", synchronous: bool = False,
                 fixed_delta: Optional[float] = None, foreign: tuple = (("vehicle.audi.a2", "hero"),),
                 decoy_boxes: int = 3, merged_boxes: tuple[int, ...] = (), seed: int = 0,
                 client_version: Optional[str] = None):
        self.version = version
        self.client_version = client_version or version
        self.merged_boxes = set(int(k) for k in merged_boxes)
        self.light_of: dict[str, int] = {}  # traffic-light landmark id -> actor id
        self.calls: list[tuple[str, tuple, dict]] = []
        self.fault_points: list[int] = []  # indices of calls a fault can hit (server round trips)
        self.faults: list[Fault] = []
        self.counts: dict[str, int] = {}
        self.lost = False
        self.refuse_connections = False
        #: spawns for which this returns True fail with "collision at spawn position"
        self.refuse_spawn: Optional[Callable[[Any, carla.Transform], bool]] = None
        self.settings = {"synchronous_mode": bool(synchronous), "no_rendering_mode": False,
                         "fixed_delta_seconds": fixed_delta, "substepping": True, "max_substep_delta_time": 0.01,
                         "max_substeps": 10}
        self.tms: dict[int, StandinTrafficManager] = {}
        self.towns_text = {town: town_xodr}
        self.actors: dict[int, StandinActor] = {}
        self._next_id = 100
        self.frame = 0
        self.elapsed = 0.0
        self.episode = 0
        self.decoys = decoy_boxes
        self.rng = np.random.default_rng(seed)
        self.texture_calls: list[tuple[list[str], tuple[int, int], tuple[float, float, float]]] = []
        self.object_colour: dict[str, tuple[float, float, float]] = {}
        self.ignore_textures = False  # a server that accepts texture calls but renders nothing new
        self.drop_frames: set[int] = set()
        self.delay_frames: dict[int, float] = {}
        self.occluder_share = 0.0  # share of every depth/RGB image (left part) hidden by a wall at 1.5 m
        self.client_factory = _Factory(self)
        self.api = StandinApi(self)
        self.client_factory.api = self.api
        self._stream: "queue.Queue" = queue.Queue()
        self._stream_thread: Optional[threading.Thread] = None
        self._lock = threading.RLock()
        self._load(town_xodr, town, False)
        for type_id, role in foreign:
            sp = self.map.get_spawn_points()
            self._spawn(self._bp(type_id, role), sp[len(self.actors) * 7 % len(sp)], None)

    # -- faults and the call log ------------------------------------------------------------
    def fail(self, *, index: Optional[int] = None, name: Optional[str] = None, nth: int = 1, when: str = "before",
             persistent: bool = False, lost: bool = False, timeout: bool = False,
             action: Optional[Callable[[], None]] = None) -> Fault:
        f = Fault(index=index, name=name, nth=nth, when=when, persistent=persistent, lost=lost, timeout=timeout,
                  action=action)
        self.faults.append(f)
        return f

    def heal(self) -> None:
        """Clear every fault (the server is reachable again)."""
        self.faults.clear()
        self.lost = False

    def _log(self, name: str, args: tuple, kwargs: dict) -> int:
        self.calls.append((name, tuple(args), dict(kwargs)))
        self.counts[name] = self.counts.get(name, 0) + 1
        return len(self.calls) - 1

    def _matches(self, f: Fault, name: str, k: int) -> bool:
        if f.index is not None:
            return (k >= f.index) if (f.persistent or f.lost) else (k == f.index)
        if f.name is not None and f.name == name:
            n = self.counts.get(name, 0)
            return (n >= f.nth) if f.persistent else (n == f.nth)
        return False

    def _raise(self, name: str, f: Optional[Fault]) -> None:
        if f is not None and f.action is not None:
            f.action()
            return
        if self.lost or (f is not None and (f.lost or f.timeout)):
            self.lost = self.lost or f is None or f.lost
            raise StandinError(f"time-out of 2000ms while waiting for the simulator, make sure the simulator is "
                               f"ready and connected to localhost:2000 ({name})")
        raise StandinError(f"injected fault in {name}")

    def _enter(self, name: str, args: tuple, kwargs: dict, fault: bool) -> int:
        k = self._log(name, args, kwargs)
        if not fault:
            return k
        self.fault_points.append(k)
        if self.lost:
            self._raise(name, None)
        for f in self.faults:
            if f.when == "before" and self._matches(f, name, k) and (f.persistent or f.lost or not f.fired):
                f.fired = True
                self._raise(name, f)
        return k

    def _after(self, name: str, k: int) -> None:
        for f in self.faults:
            if f.when == "after" and self._matches(f, name, k) and (f.persistent or f.lost or not f.fired):
                f.fired = True
                self._raise(name, f)

    # -- state ------------------------------------------------------------------------------
    def _tm(self, port: int) -> StandinTrafficManager:
        if port not in self.tms:
            self.tms[port] = StandinTrafficManager(self, port)
        return self.tms[port]

    def _bp(self, type_id: str, role: str) -> StandinBlueprint:
        return StandinBlueprint(self, type_id, {**BLUEPRINTS.get(type_id, {}), "role_name": role})

    def _load(self, text: Optional[str], name: str, reset_settings: bool) -> None:
        if text is None:
            raise StandinError(f"map '{name}' not found on the server")
        with self._lock:
            for aid in list(self.actors):
                self._destroy(aid)
            cmap = carla.Map(name, text)
            self.map = StandinMap(self, cmap, f"Carla/Maps/{name}")
            self.episode += 1
            if reset_settings:
                self.settings.update(synchronous_mode=False, fixed_delta_seconds=None)
            self._make_sign_boxes(cmap)
            self._make_traffic_lights(cmap)

    def _make_traffic_lights(self, cmap: carla.Map) -> None:
        """One traffic-light actor per traffic-light landmark id (ids from 10000 up)."""
        self.light_of = {}
        for lm in cmap.get_all_landmarks_of_type("1000001"):
            lid = str(lm.id)
            if lid in self.light_of:
                continue
            aid = 10000 + len(self.light_of)
            self.actors[aid] = StandinTrafficLight(self, aid, "traffic.traffic_light", {}, lm.transform)
            self.light_of[lid] = aid

    def _make_sign_boxes(self, cmap: carla.Map) -> None:
        """One level box per static sign landmark (up on its post, 0.6 m beside the road-level
        pose), named like level meshes, plus decoys far from every landmark."""
        boxes: list[tuple[carla.BoundingBox, str]] = []
        seen: set[str] = set()
        for lm in cmap.get_all_landmarks():
            if str(lm.type).startswith("1000") or lm.is_dynamic or lm.id in seen:
                continue
            seen.add(lm.id)
            t = lm.transform
            yaw = t.rotation.yaw + 180.0  # the face looks against the traffic it governs
            side = math.radians(t.rotation.yaw + 90.0)
            loc = carla.Location(t.location.x + 0.6 * math.cos(side), t.location.y + 0.6 * math.sin(side),
                                 t.location.z + 2.2)
            bb = carla.BoundingBox(loc, carla.Vector3D(0.05, 0.4, 0.4))
            bb.rotation = carla.Rotation(0.0, yaw, 0.0)
            boxes.append((bb, str(lm.id)))
        lms = np.array([[b.location.x, b.location.y] for b, _ in boxes]).reshape(-1, 2)
        wps = cmap.generate_waypoints(20.0)
        decoys = 0
        for wp in wps:
            if decoys >= self.decoys:
                break
            p = np.array([wp.transform.location.x, wp.transform.location.y + 4.0])
            if len(lms) and np.min(np.linalg.norm(lms - p, axis=1)) < 30.0:
                continue
            bb = carla.BoundingBox(carla.Location(float(p[0]), float(p[1]), 2.0), carla.Vector3D(0.05, 0.4, 0.4))
            boxes.append((bb, ""))
            decoys += 1
        self.sign_boxes = boxes
        self.box_actor = [f"BP_Corner_{k}" if k in self.merged_boxes else f"BP_Sign_{k}" for k in range(len(boxes))]
        L = carla.CityObjectLabel
        objs = []
        for k, ((bb, _), actor) in enumerate(zip(boxes, self.box_actor)):
            objs.append(StandinEnvObject(1000 + 3 * k, f"{actor}_SM_0", bb, L.TrafficSigns))
            post = carla.BoundingBox(carla.Location(bb.location.x, bb.location.y, bb.location.z - 1.2),
                                     carla.Vector3D(0.05, 0.05, 1.2))
            objs.append(StandinEnvObject(1001 + 3 * k, f"{actor}_SM_1", post, L.Poles))
            if k in self.merged_boxes:
                objs.append(StandinEnvObject(1002 + 3 * k, f"{actor}_SM_2", post, L.Buildings))
        objs.append(StandinEnvObject(999, "BP_Apartment04_v05_Opt_2_SM_0", carla.BoundingBox(), L.Buildings))
        self.env_objects = objs
        self.object_names = ["BP_Apartment04_v05_Opt_2", "SM_Road_01", "BP_Fence_3"] + list(self.box_actor)
        self.object_colour = {}

    def _spawn(self, bp: StandinBlueprint, tf: carla.Transform, parent) -> tuple[Optional[StandinActor], str]:
        with self._lock:
            if parent is not None and int(getattr(parent, "id", parent)) not in self.actors:
                return None, "parent actor not found"
            if self.refuse_spawn is not None and self.refuse_spawn(bp, tf):
                return None, "Spawn failed because of collision at spawn position"
            if bp.id.startswith("vehicle."):
                for a in self.actors.values():
                    if a.type_id.startswith("vehicle.") and a._parent is None:
                        d = a._tf.location.distance(tf.location)
                        if d < 2.0:
                            return None, "Spawn failed because of collision at spawn position"
            aid = self._next_id
            self._next_id += 1
            par = self.actors[int(getattr(parent, "id", parent))] if parent is not None else None
            cls = (StandinSensor if bp.id.startswith("sensor.") else
                   StandinVehicle if bp.id.startswith("vehicle.") else StandinActor)
            tf = carla.Transform(carla.Location(tf.location.x, tf.location.y, tf.location.z),
                                 carla.Rotation(tf.rotation.pitch, tf.rotation.yaw, tf.rotation.roll))
            a = cls(self, aid, bp.id, dict(bp._attrs), tf, par)
            self.actors[aid] = a
            return a, ""

    def _destroy(self, aid: int) -> bool:
        with self._lock:
            a = self.actors.pop(int(aid), None)
            if a is None:
                return False
            for child in [c for c in self.actors.values() if c._parent is a]:
                self.actors.pop(child.id, None)
            return True

    def _set_autopilot(self, aid: int, enabled: bool, port: int) -> None:
        a = self.actors.get(int(aid))
        if a is None:
            raise StandinError("actor not found")
        a._autopilot = bool(enabled)
        a._speed = SPEED_MPS if enabled else 0.0
        self._tm(int(port))

    def _execute(self, c) -> Any:
        R = self.api.command.Response
        name = type(c).__name__
        if name == "SpawnActor":
            a, err = self._spawn(c.blueprint, c.transform, c.parent)
            if err:
                return R(0, err)
            for sub in c.chain:
                target = a.id if sub.actor is StandinCommands.FutureActor else int(sub.actor)
                if type(sub).__name__ == "SetAutopilot":
                    self._set_autopilot(target, sub.enabled, sub.tm_port)
                elif type(sub).__name__ == "SetSimulatePhysics":
                    self.actors[target]._physics = bool(sub.enabled)
            return R(a.id, "")
        if name == "DestroyActor":
            aid = int(getattr(c.actor, "id", c.actor))
            return R(aid, "") if self._destroy(aid) else R(aid, f"actor {aid} not found")
        if name == "ApplyTransform":
            aid = int(getattr(c.actor, "id", c.actor))
            a = self.actors.get(aid)
            if a is None:
                return R(aid, f"actor {aid} not found")
            a._tf = c.transform
            return R(aid, "")
        return R(0, f"unsupported command {name}")

    def _texture(self, names: list[str], tex: carla.TextureColor) -> None:
        w, h = int(tex.width), int(tex.height)
        acc = np.zeros(3)
        step = max(1, min(w, h) // 16)
        n = 0
        for y in range(0, h, step):
            for x in range(0, w, step):
                c = tex.get(x, y)
                acc += (c.r, c.g, c.b)
                n += 1
        mean = tuple(float(v) for v in acc / max(n, 1))
        self.texture_calls.append((list(names), (w, h), mean))
        if not self.ignore_textures:
            for nm in names:
                self.object_colour[nm] = mean

    def _box_colour(self, k: int) -> tuple[float, float, float]:
        return self.object_colour.get(self.box_actor[k], (200.0, 30.0, 30.0))

    # -- stepping ---------------------------------------------------------------------------
    def _tick(self) -> int:
        with self._lock:
            dt = self.settings["fixed_delta_seconds"] or 0.05
            for a in list(self.actors.values()):
                if a._autopilot and a._parent is None and a._physics:
                    self._drive(a, dt)
            self.frame += 1
            self.elapsed += dt
            frame, elapsed = self.frame, self.elapsed
            sensors = [a for a in self.actors.values() if isinstance(a, StandinSensor) and a._callback is not None]
        for s in sensors:
            if frame in self.drop_frames:
                continue
            img = self._render(s, frame, elapsed)
            self._emit(s._callback, img, self.delay_frames.get(frame, 0.0))
        return frame

    def _drive(self, a: StandinActor, dt: float) -> None:
        wp = self.map._map.get_waypoint(a._tf.location)
        if wp is None:
            return
        nxt = wp.next(max(0.1, a._speed * dt))
        if not nxt:
            a._speed = 0.0
            return
        t = nxt[int(a.id) % len(nxt)].transform
        a._tf = carla.Transform(carla.Location(t.location.x, t.location.y, a._tf.location.z),
                                carla.Rotation(0.0, t.rotation.yaw, 0.0))

    def _snapshot(self) -> StandinWorldSnapshot:
        with self._lock:
            out = {}
            for a in self.actors.values():
                tf = a._world_tf()
                yaw = math.radians(tf.rotation.yaw)
                v = carla.Vector3D(a._speed * math.cos(yaw), a._speed * math.sin(yaw), 0.0)
                out[a.id] = StandinActorSnapshot(a.id, tf, v)
            return StandinWorldSnapshot(self.frame, self.elapsed, self.settings["fixed_delta_seconds"] or 0.05, out)

    # -- sensors ----------------------------------------------------------------------------
    def _emit(self, cb: Callable, img: StandinImage, delay: float) -> None:
        if self._stream_thread is None or not self._stream_thread.is_alive():
            self._stream_thread = threading.Thread(target=self._stream_loop, name="standin-stream", daemon=True)
            self._stream_thread.start()
        self._stream.put((time.monotonic() + delay, cb, img))

    def _stream_loop(self) -> None:
        idle = 0.0
        while idle < 2.0:  # stops by itself when nothing arrives for 2 s
            try:
                due, cb, img = self._stream.get(timeout=0.1)
            except queue.Empty:
                idle += 0.1
                continue
            idle = 0.0
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                cb(img)
            except Exception:  # noqa: BLE001 - a client callback error must not kill the stream
                pass

    def _render(self, s: StandinSensor, frame: int, elapsed: float) -> StandinImage:
        w = int(s.attributes.get("image_size_x", 800))
        h = int(s.attributes.get("image_size_y", 600))
        fov = float(s.attributes.get("fov", 90))
        tf = s._world_tf()
        f = w / (2.0 * math.tan(math.radians(fov) / 2.0))
        inv = np.array(tf.get_inverse_matrix())
        is_depth = s.type_id == "sensor.camera.depth"
        zbuf = np.full((h, w), 1000.0)
        rgb = np.empty((h, w, 3))
        rgb[: h // 2] = (135.0, 170.0, 220.0)
        rgb[h // 2:] = (90.0, 90.0, 90.0)
        if self.occluder_share > 0:
            cut = int(round(w * self.occluder_share))
            zbuf[:, :cut] = 1.5
            rgb[:, :cut] = (40.0, 120.0, 40.0)
        for k, (bb, _) in enumerate(self.sign_boxes):
            pts = [v for v in bb.get_world_vertices(carla.Transform())]
            P = np.array([[p.x, p.y, p.z, 1.0] for p in pts]) @ inv.T
            if np.any(P[:, 0] <= 0.1):
                continue
            u = f * P[:, 1] / P[:, 0] + w / 2.0
            v = -f * P[:, 2] / P[:, 0] + h / 2.0
            x0, x1 = int(max(0, math.floor(u.min()))), int(min(w, math.ceil(u.max())))
            y0, y1 = int(max(0, math.floor(v.min()))), int(min(h, math.ceil(v.max())))
            if x1 <= x0 or y1 <= y0:
                continue
            d = float(P[:, 0].min())
            region = zbuf[y0:y1, x0:x1]
            nearer = d < region
            region[nearer] = d
            rgb[y0:y1, x0:x1][nearer] = self._box_colour(k)
        if is_depth:
            from carla_mr.world.carla_signs import encode_depth_bgra

            bgra = encode_depth_bgra(zbuf)
        else:
            bgra = np.empty((h, w, 4), np.uint8)
            bgra[..., 0] = rgb[..., 2]
            bgra[..., 1] = rgb[..., 1]
            bgra[..., 2] = rgb[..., 0]
            bgra[..., 3] = 255
        bgra[0, 0, 0] = frame & 255
        bgra[0, 0, 1] = (frame >> 8) & 255
        bgra[0, 0, 2] = (frame >> 16) & 255
        return StandinImage(frame, w, h, fov, bgra.tobytes(), tf, elapsed)

    # -- inspection helpers for tests ------------------------------------------------------
    def tagged(self, prefix: str) -> list[StandinActor]:
        return [a for a in self.actors.values() if str(a.attributes.get("role_name", "")).startswith(prefix)]

    def plant_leftovers(self, prefix: str, n: int = 2) -> list[int]:
        """Actors as a crashed run with ``prefix`` would have left them."""
        ids = []
        sp = self.map.get_spawn_points()
        for k in range(n):
            a, err = self._spawn(self._bp("vehicle.audi.a2", f"{prefix}deadbeef/av"), sp[-1 - 3 * k], None)
            if a is not None:
                ids.append(a.id)
        return ids


def frame_tag(rgb: np.ndarray) -> int:
    """The frame number the stand-in wrote into pixel (0, 0) of an RGB image (R, G, B = hi, mid, lo)."""
    r, g, b = (int(v) for v in rgb[0, 0, :3])
    return b | (g << 8) | (r << 16)
