"""Actors this client puts on a CARLA server: tagged spawning, session markers with a
heartbeat, the start-up sweep of crashed sessions, vehicles, RSU props and traffic lights.

- **Tags.** Every actor carries ``role_name = "<prefix>/<session>/<kind>"``; nothing else on the
  server is ever destroyed by us.
- **Batches without a tick.** :meth:`ActorSpawner.spawn_batch` sends one
  ``apply_batch_sync(batch, False)``: spawning never advances the simulation (the world is
  ticked once per ``World.tick()``, nowhere else).
- **Session markers.** Each session spawns an inert marker actor whose role name records the
  world settings before the session changed them (``<tag>marker;sync=0;delta=none;...;t0=T``)
  and whose location is the session's **heartbeat**: ``x`` = seconds since ``t0`` modulo
  1000, ``y`` = thousands of seconds, ``z`` = -50 m (see :func:`heartbeat_location`); a
  session that closed without restoring the settings marks itself stopped (``y`` = -1).
  At start-up, :func:`survey_sessions` finds the sessions of the prefix; only those whose
  heartbeat is older than ``carla.heartbeat_stale_s`` (or stopped) are swept and their
  recorded settings adopted; live sessions are left alone.

Co-simulation sees only the narrow :class:`Spawner` interface.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Protocol

import numpy as np

from carla_mr.errors import RunError
from carla_mr.world.carla_api import (AV_BLUEPRINTS, BACKGROUND_BLUEPRINTS, MARKER_BLUEPRINTS, RSU_PROP_BLUEPRINTS,
                                      pick_blueprint, spawn_transforms)
from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND

log = logging.getLogger(__name__)

#: The marker's height (m): far below the road, out of every camera's view.
MARKER_Z_M = -50.0
#: Heartbeat ``y`` of a session that closed (its marker stays only to carry the settings).
STOPPED = -1.0


@dataclass
class SpawnItem:
    """What to spawn: a blueprint, a ``carla.Transform`` and the kind its tag ends with."""

    blueprint: Any
    transform: Any
    kind: str


@dataclass
class SpawnResult:
    """Outcome of one batch: (item index, actor id) spawned, indices that collided at their
    spawn point, and other failures (index -> the server's error)."""

    spawned: list[tuple[int, int]] = field(default_factory=list)
    collided: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)


class Spawner(Protocol):
    """The narrow part of a CARLA world that co-simulation may use."""

    api: Any

    def blueprints(self) -> Any: ...

    def blueprint_ids(self) -> set[str]: ...

    def spawn_batch(self, items: list[SpawnItem], *, autopilot: bool = False, physics: bool = True) -> SpawnResult:
        ...

    def move(self, moves: list[tuple[int, Any]]) -> None: ...

    def destroy(self, ids: Iterable[int]) -> None: ...


class ActorSpawner:
    """Spawns, moves and destroys this session's tagged actors (see the module docstring).

    ``actor_ids`` maps every actor id this session spawned and has not destroyed to its kind.
    """

    def __init__(self, client: Any, world: Any, api: Any, tag: str, tm_port: int):
        self.client = client
        self.world = world
        self.api = api
        self.tag = tag
        self.tm_port = int(tm_port)
        self.actor_ids: dict[int, str] = {}
        self._library: Any = None
        self._ids: Optional[set[str]] = None

    def blueprints(self) -> Any:
        """The server's blueprint library (asked once per world)."""
        if self._library is None:
            self._library = self.world.get_blueprint_library()
        return self._library

    def blueprint_ids(self) -> set[str]:
        if self._ids is None:
            self._ids = {str(bp.id) for bp in self.blueprints()}
        return self._ids

    def tagged(self, bp: Any, kind: str) -> Any:
        """``bp`` with ``role_name = <tag><kind>`` (where the blueprint has a role name)."""
        if bp.has_attribute("role_name"):
            bp.set_attribute("role_name", f"{self.tag}{kind}")
        return bp

    def spawn_batch(self, items: list[SpawnItem], *, autopilot: bool = False, physics: bool = True) -> SpawnResult:
        """Spawn ``items`` in one batch **without ticking** the server, each tagged with its kind.

        Each command is made right after its blueprint is tagged (a command copies the
        blueprint), so one blueprint object may serve many items.
        """
        cmd = self.api.command
        batch = []
        for it in items:
            c = cmd.SpawnActor(self.tagged(it.blueprint, it.kind), it.transform)
            if autopilot:
                c = c.then(cmd.SetAutopilot(cmd.FutureActor, True, self.tm_port))
            if not physics:
                c = c.then(cmd.SetSimulatePhysics(cmd.FutureActor, False))
            batch.append(c)
        out = SpawnResult()
        if not batch:
            return out
        for k, r in enumerate(self.client.apply_batch_sync(batch, False)):
            if r.has_error():
                if "collision" in str(r.error).lower():
                    out.collided.append(k)
                else:
                    out.failed[k] = str(r.error)
                    log.warning("spawning a %s failed: %s", items[k].kind, r.error)
            else:
                out.spawned.append((k, int(r.actor_id)))
                self.actor_ids[int(r.actor_id)] = items[k].kind
        return out

    def spawn_one(self, bp: Any, transform: Any, kind: str, *, attach_to: Any = None) -> Any:
        """One tagged actor by ``World.spawn_actor`` (sensors, the marker); returns the actor."""
        actor = self.world.spawn_actor(self.tagged(bp, kind), transform, attach_to=attach_to)
        self.actor_ids[int(actor.id)] = kind
        return actor

    def move(self, moves: list[tuple[int, Any]]) -> None:
        """Teleport actors: one ``ApplyTransform`` batch, no tick."""
        if moves:
            cmd = self.api.command
            self.client.apply_batch_sync([cmd.ApplyTransform(int(i), tf) for i, tf in moves], False)

    def destroy(self, ids: Iterable[int]) -> None:
        """Destroy actors (one batch; one by one those the batch could not destroy)."""
        ids = [int(i) for i in ids]
        if not ids:
            return
        for i in ids:
            self.actor_ids.pop(i, None)
        responses = self.client.apply_batch_sync([self.api.command.DestroyActor(i) for i in ids], False)
        for i, r in zip(ids, responses):
            if r.has_error() and "not found" not in str(r.error).lower():
                a = self.world.get_actor(i)
                if a is not None:
                    a.destroy()

    def destroy_one_by_one(self, ids: Iterable[int]) -> None:
        """The slow way (a retry when the batch call itself failed)."""
        for i in [int(i) for i in ids]:
            a = self.world.get_actor(i)
            if a is not None:
                a.destroy()
            self.actor_ids.pop(i, None)

    def forget(self, ids: Iterable[int]) -> None:
        """Stop tracking actors the server removed by itself."""
        for i in ids:
            self.actor_ids.pop(int(i), None)

    def sweep(self, tag: str, *, keep: Optional[int] = None) -> int:
        """Destroy every actor whose role name starts with ``tag`` (except ``keep``)."""
        ids = [int(a.id) for a in self.world.get_actors()
               if str(a.attributes.get("role_name", "")).startswith(tag) and int(a.id) != keep]
        self.destroy(ids)
        return len(ids)


# -- session markers and the heartbeat ----------------------------------------------------------

def heartbeat_location(t0: int, now: float) -> tuple[float, float]:
    """The marker's (x, y) metres for a heartbeat at wall-clock ``now`` (s) of a session that
    started at ``t0`` (integer epoch seconds): x = elapsed mod 1000 s, y = thousands of s (both
    stay within 1 km of the origin, inside any level's bounds, at float32 precision < 0.1 ms)."""
    e = max(0.0, float(now) - float(t0))
    return e % 1000.0, float(math.floor(e / 1000.0))


def heartbeat_time(t0: int, x: float, y: float) -> Optional[float]:
    """The wall-clock time of a marker's last heartbeat, None when the session marked itself stopped."""
    if y < 0:
        return None
    return float(t0) + 1000.0 * round(y) + float(x)


def marker_role(tag: str, settings_code: str, t0: int) -> str:
    return f"{tag}marker;{settings_code};t0={int(t0)}"


@dataclass
class Session:
    """One session of our prefix found on the server: its actors and its marker, if any."""

    name: str
    actor_ids: list[int] = field(default_factory=list)
    marker_id: Optional[int] = None
    marker_fields: dict[str, str] = field(default_factory=dict)
    last_beat: Optional[float] = None  # wall-clock seconds, None: stopped or unknown

    def alive(self, now: float, stale_s: float) -> bool:
        """A session is live while its marker's heartbeat is at most ``stale_s`` seconds old."""
        return self.last_beat is not None and now - self.last_beat <= stale_s


def survey_sessions(world: Any, prefix: str) -> dict[str, Session]:
    """Every session of ``prefix`` with actors on the server, with its marker's heartbeat
    (read from one ``WorldSnapshot``, no per-actor round trip)."""
    sessions: dict[str, Session] = {}
    for a in world.get_actors():
        role = str(a.attributes.get("role_name", ""))
        if not role.startswith(prefix):
            continue
        name = role[len(prefix):].split("/", 1)[0]
        s = sessions.setdefault(name, Session(name))
        s.actor_ids.append(int(a.id))
        kind = role[len(prefix) + len(name) + 1:]
        if kind.startswith("marker;"):
            try:
                s.marker_fields = dict(kv.split("=", 1) for kv in kind.split(";")[1:])
            except ValueError:
                continue
            s.marker_id = int(a.id)
    with_marker = [s for s in sessions.values() if s.marker_id is not None and "t0" in s.marker_fields]
    if with_marker:
        snap = world.get_snapshot()
        for s in with_marker:
            found = snap.find(s.marker_id)
            if found is None:
                continue
            loc = found.get_transform().location
            try:
                s.last_beat = heartbeat_time(int(s.marker_fields["t0"]), float(loc.x), float(loc.y))
            except ValueError:
                s.last_beat = None
    return sessions


class SessionMarker:
    """This session's marker actor: spawned before any setting changes, moved by each heartbeat."""

    def __init__(self, spawner: ActorSpawner, t0: int):
        self.spawner = spawner
        self.t0 = int(t0)
        self.actor_id: Optional[int] = None

    def _transform(self, x: float, y: float) -> Any:
        api = self.spawner.api
        return api.Transform(api.Location(float(x), float(y), MARKER_Z_M), api.Rotation(0.0, 0.0, 0.0))

    def spawn(self, settings_code: str, now: float) -> None:
        """Spawn the marker carrying ``settings_code``, with a first heartbeat at ``now``."""
        bp = pick_blueprint(self.spawner.blueprints(), MARKER_BLUEPRINTS, np.random.default_rng(0), wheels=None)
        if bp is None or not bp.has_attribute("role_name"):
            log.warning("no blueprint for the crash-recovery marker; a crashed run's settings cannot be recovered")
            return
        role = marker_role(self.spawner.tag, settings_code, self.t0)
        bp.set_attribute("role_name", role)
        actor = self.spawner.world.spawn_actor(bp, self._transform(*heartbeat_location(self.t0, now)))
        self.actor_id = int(actor.id)

    def beat(self, now: float) -> None:
        """Move the marker to the heartbeat of ``now`` (seen by others after the next tick)."""
        if self.actor_id is not None:
            self.spawner.move([(self.actor_id, self._transform(*heartbeat_location(self.t0, now)))])

    def mark_stopped(self) -> None:
        """Tell later runs at once that this session is over (its settings still to restore)."""
        if self.actor_id is not None:
            self.spawner.move([(self.actor_id, self._transform(0.0, STOPPED))])

    def destroy(self) -> None:
        if self.actor_id is not None:
            self.spawner.destroy([self.actor_id])
            self.actor_id = None


# -- vehicles and props ---------------------------------------------------------------------------

def spawn_vehicles(spawner: ActorSpawner, cmap: Any, want: list[tuple[str, int, tuple[str, ...]]],
                   rng: np.random.Generator, stats: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Spawn ``want`` = [(kind, role, blueprint table)] on autopilot at the map's spawn points
    (shuffled with ``rng``); blocked spawns are retried at unused points, round after round,
    until each has a place or the points run out. Returns sorted ids and their roles;
    ``stats`` gets ``spawn_retries`` and ``spawn_shortfall``."""
    lib = spawner.blueprints()
    points = spawn_transforms(cmap, spawner.api)
    order = list(rng.permutation(len(points)))
    roles: dict[int, int] = {}
    pending = list(want)
    cache: dict = {}
    while pending and order:  # every round uses up spawn points, so this ends
        take = pending[:len(order)]
        items = []
        for kind, _, table in take:
            bp = pick_blueprint(lib, table, rng, cache=cache)
            if bp is None:
                raise RunError(f"the server has no vehicle blueprint from {table}")
            items.append(SpawnItem(bp, points[order.pop(0)], kind))
        res = spawner.spawn_batch(items, autopilot=True)
        for k, vid in res.spawned:
            roles[vid] = take[k][1]
        pending = [take[k] for k in res.collided] + pending[len(take):]
        stats["spawn_retries"] += len(res.collided)
    stats["spawn_shortfall"] = len(pending)
    if pending:
        log.warning("could not spawn %d of %d vehicles (spawn points used up or blocked)", len(pending), len(want))
    ids = sorted(roles)
    return np.array(ids, dtype=np.int64), np.array([roles[i] for i in ids], dtype=np.uint8)


def vehicle_wishlist(avs: int, background: int) -> list[tuple[str, int, tuple[str, ...]]]:
    """(kind, role, blueprint table) for ``avs`` AVs and ``background`` Traffic Manager vehicles."""
    return [("av", ROLE_AV, AV_BLUEPRINTS)] * int(avs) + [("bg", ROLE_BACKGROUND, BACKGROUND_BLUEPRINTS)] * int(background)


def spawn_rsu_props(spawner: ActorSpawner, cmap: Any, rsus: Any, rng: np.random.Generator) -> int:
    """A static prop at the curb beside each RSU's lane-centre position (physics off); returns
    how many stand. Without any prop blueprint the RSUs stay purely logical."""
    api = spawner.api
    bp = pick_blueprint(spawner.blueprints(), RSU_PROP_BLUEPRINTS, rng, wheels=None)
    if bp is None:
        log.info("no RSU prop blueprint on this server; RSUs stay logical")
        return 0
    items = []
    for j in range(len(rsus)):
        wp = cmap.get_waypoint(api.Location(float(rsus.x[j]), float(rsus.y[j]), 0.0))
        if wp is None:
            continue
        t = wp.transform
        r = t.get_right_vector()
        off = float(wp.lane_width) / 2.0 + 1.0
        tf = api.Transform(api.Location(t.location.x + off * r.x, t.location.y + off * r.y, t.location.z),
                           api.Rotation(0.0, t.rotation.yaw, 0.0))
        items.append(SpawnItem(bp, tf, "rsu"))
    return len(spawner.spawn_batch(items, physics=False).spawned)


# -- traffic lights -------------------------------------------------------------------------------

#: SUMO signal characters -> CARLA traffic-light state names, the most restrictive first.
STATE_ORDER = ("Red", "Yellow", "Green", "Off")


class TrafficLights:
    """The server's traffic lights by OpenDRIVE signal id, set from outside (co-simulation).

    The first :meth:`set_states` freezes every light it sets (so CARLA's own cycle does not
    fight the states it is given); :meth:`release` unfreezes them again (a restore step).
    """

    def __init__(self, world: Any, api: Any, cmap: Any):
        self.api = api
        self.lights: dict[str, Any] = {}
        for lm in cmap.get_all_landmarks_of_type("1000001"):
            lid = str(lm.id)
            if lid and lid not in self.lights:
                tl = world.get_traffic_light(lm)
                if tl is not None:
                    self.lights[lid] = tl
        self._state: dict[str, str] = {}
        self._frozen: list[Any] = []

    def set_states(self, states: dict[str, str]) -> int:
        """Set each light ``signal id -> state name`` (``Red``/``Yellow``/``Green``/``Off``) that
        changed since the last call; returns how many were set."""
        n = 0
        for lid, state in states.items():
            tl = self.lights.get(lid)
            if tl is None or self._state.get(lid) == state:
                continue
            if not any(f is tl for f in self._frozen):
                tl.freeze(True)
                self._frozen.append(tl)
            tl.set_state(getattr(self.api.TrafficLightState, state))
            self._state[lid] = state
            n += 1
        return n

    def release(self) -> None:
        """Unfreeze the lights this client froze (their own cycle resumes)."""
        while self._frozen:
            self._frozen[-1].freeze(False)
            self._frozen.pop()
