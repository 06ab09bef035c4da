"""The CARLA backend: a synchronous client of a real CARLA server (0.9.15 or 0.9.16).

:class:`CarlaWorld` drives one server the way the embedded backend drives SUMO, behind the same
:class:`~carla_mr.world.base.World` interface and with the same Snapshot arrays. It is a
facade over small modules, one concern each:

- :mod:`~carla_mr.world.carla_connection`: client, versions, map loading, world and Traffic
  Manager settings, and putting back exactly what this client changed;
- :mod:`~carla_mr.world.carla_actors`: tagged spawning without ticks, session markers with
  a heartbeat, the start-up sweep of crashed sessions, vehicles, RSU props, traffic lights;
- :mod:`~carla_mr.world.carla_cameras`: sensors and frame matching;
- :mod:`~carla_mr.world.carla_textures`: which actor carries each sign, texture streaming;
- :mod:`~carla_mr.world.carla_close`: the uninterruptible, resumable restore sequence, signals
  and the atexit hook;
- :mod:`~carla_mr.world.cosim`: SUMO co-simulation (``carla.cosim_sumo``).

Guarantees (each proven against the stand-in server in ``tests/world/carla``):

- **Restore.** The settings are recorded before any change; close() puts back exactly what
  this client changed (``synchronous_mode`` only if this client switched it on, the fixed
  step, the physics substepping if it had to change it, the Traffic Manager's mode, frozen
  traffic lights).
- **Our actors only.** Every actor carries ``role_name = "<prefix>/<session>/<kind>"``; close()
  destroys ours and sweeps our session's tag. At start, sessions of our prefix whose
  heartbeat stopped (crashed runs) are removed and their recorded settings adopted; live
  sessions are left alone.
- **Every exit path.** close() is reached from the context manager, an ``atexit`` hook and,
  when the world owns the signals (``owns_signals``, standalone use), SIGINT/SIGTERM
  handlers installed by ``reset()``. Signals are held while closing; each restore step
  survives any exception; an interrupted close() is finished by calling close() again; a
  time-out skips the remaining steps only once the server stops answering.
- **One server step per tick.** tick() calls ``world.tick()`` once (spawns never tick) and
  reads every vehicle from that frame's ``WorldSnapshot`` (no per-actor round trips).
- **Cameras matched by frame** (see :mod:`~carla_mr.world.carla_cameras`).

The ``carla`` API calls these modules make are listed in
:data:`carla_mr.world.carla_api.CARLA_API`; the conformance test checks every entry against
the installed wheel's signatures.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np

from carla_mr.errors import CarlaMrError, RunError
from carla_mr.world.base import CameraFrame, FrameMissed, SignTexture, Snapshot, World
from carla_mr.world.carla_actors import (ActorSpawner, SessionMarker, TrafficLights, spawn_rsu_props, spawn_vehicles,
                                         survey_sessions, vehicle_wishlist)
from carla_mr.world.carla_api import import_carla, is_connection_error
from carla_mr.world.carla_cameras import CameraRig
from carla_mr.world.carla_close import (CloseReport, RestoreSequence, Step, deferred_signals, install_handlers,
                                        is_open, register, unregister)
from carla_mr.world.carla_connection import CarlaConnection, SavedSettings

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario
    from carla_mr.world.carla_textures import SignTarget

log = logging.getLogger(__name__)

__all__ = ["CarlaWorld", "FrameMissed"]


class CarlaWorld(World):
    """A CARLA server behind the World interface. See the module docstring for the guarantees.

    ``client_factory(host, port) -> client`` replaces ``carla.Client`` (tests inject the
    stand-in server); its ``api`` attribute is the namespace used for ``carla.*`` classes
    (default: the real ``carla`` module). ``sensor_timeout_s`` bounds the wait for a camera
    image each tick; ``depth`` attaches a depth camera beside each RGB camera for the labels'
    occlusion (both default to the scenario's ``carla:`` section). ``cache_dir`` keeps the
    per-town sign-object table on disk (default: ``<cache>/carla``). ``owns_signals``: see
    :class:`~carla_mr.world.base.World` (a driver that owns the signals sets it to False
    before ``reset()``). ``clock`` gives wall-clock seconds (heartbeats; tests replace it).
    """

    def __init__(self, scenario: "Scenario", *, seed: Optional[int] = None,
                 client_factory: Optional[Callable[[str, int], Any]] = None,
                 sensor_timeout_s: Optional[float] = None, depth: Optional[bool] = None,
                 cache_dir: str | Path | None = None, owns_signals: bool = True,
                 clock: Callable[[], float] = time.time):
        super().__init__(scenario.tick_s)
        self.owns_signals = bool(owns_signals)
        self.scenario = scenario
        self.cfg = scenario.carla
        self.seed = int(scenario.seed if seed is None else seed)
        self.sensor_timeout_s = float(self.cfg.sensor_timeout_s if sensor_timeout_s is None else sensor_timeout_s)
        self.depth = bool(self.cfg.depth_camera if depth is None else depth)
        self.api = client_factory.api if client_factory is not None else import_carla()
        self.clock = clock
        self.session = os.urandom(4).hex()
        self.tag_prefix = f"{self.cfg.role_name_prefix}/"
        self.tag = f"{self.tag_prefix}{self.session}/"
        # everything close() may touch starts as None / empty, so close() is safe at any point
        self.conn = CarlaConnection(self.cfg, self.api, client_factory or self.api.Client)
        self.spawner: Optional[ActorSpawner] = None
        self.marker: Optional[SessionMarker] = None
        self.rig: Optional[CameraRig] = None
        self.cosim: Any = None
        self.traffic_lights: Optional[TrafficLights] = None
        self.close_report = CloseReport()
        self._restore: Optional[RestoreSequence] = None
        self._closed = False  # no reset()/tick() any more
        self._close_done = False  # every restore step has run
        self._closing = False
        self._connected = False
        self._last_beat = 0.0
        self.stats: dict[str, Any] = {"leftovers_removed": 0, "live_sessions": 0, "spawn_retries": 0,
                                      "spawn_shortfall": 0, "vanished": 0, "rsu_props": 0, "texture_noops": [],
                                      "texture_no_object": {}, "texture_other_meshes": {},
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
        self._assoc = None
        self._pending_checks: dict[str, dict[str, Any]] = {}
        from carla_mr.world.carla_textures import SignObjectIndex
        from carla_mr.world.sumo_net import cache_dir as cache_root

        self.objects = SignObjectIndex(cache_dir if cache_dir is not None else cache_root() / "carla")

    # -- the server's objects, through the connection -----------------------------------------
    @property
    def client(self) -> Any:
        return self.conn.client

    @property
    def world(self) -> Any:
        return self.conn.world

    @property
    def tm(self) -> Any:
        return self.conn.tm

    @property
    def town(self) -> str:
        return self.conn.town

    # -- connecting ---------------------------------------------------------------------------
    def _connect(self) -> None:
        register(self)
        if self.owns_signals:
            install_handlers()
        world = self.conn.connect()
        self._sweep_dead_sessions(world)
        world = self.conn.load_map(self.scenario, self.seed)
        self.spawner = ActorSpawner(self.conn.client, world, self.api, self.tag, self.cfg.tm_port)
        # the marker carries the original settings and is spawned before they change, so a run
        # that starts after this one crashed can restore them
        now = float(self.clock())
        self.marker = SessionMarker(self.spawner, int(now))
        self.marker.spawn(self.conn.original.encode(), now)
        self._last_beat = now
        self.conn.go_synchronous(self.tick_s)
        self.conn.start_traffic_manager(self.seed)
        self._connected = True

    def _sweep_dead_sessions(self, world: Any) -> None:
        """Remove the actors of sessions of our prefix whose heartbeat stopped and adopt the
        settings their markers recorded; leave live sessions alone."""
        sessions = survey_sessions(world, self.tag_prefix)
        now = float(self.clock())
        dead = [s for s in sessions.values() if not s.alive(now, float(self.cfg.heartbeat_stale_s))]
        self.stats["live_sessions"] = len(sessions) - len(dead)
        ids = [i for s in dead for i in s.actor_ids]
        if ids:
            ActorSpawner(self.conn.client, world, self.api, self.tag, self.cfg.tm_port).destroy(ids)
        self.stats["leftovers_removed"] = len(ids)
        if self._adopt_settings([s.marker_fields for s in dead if s.marker_id is not None], bool(ids)):
            # put the server back as it was before the crash right away (an orphaned synchronous
            # server would otherwise wait for ticks nobody sends, e.g. during a map load)
            if SavedSettings.of(world.get_settings()) != self.conn.original:
                self.conn.apply(self.conn.original)

    def _adopt_settings(self, markers: list[dict[str, str]], removed: bool) -> bool:
        """Make a crashed session's recorded settings the ones this run restores (an
        asynchronous original wins). True when a marker was adopted."""
        o = self.conn.original
        parsed = []
        for fields in markers:
            try:
                parsed.append(SavedSettings.decode(fields, o))
            except (KeyError, ValueError):
                continue
        if parsed:
            pick = min(parsed, key=lambda p: p.synchronous_mode)
            if pick != o:
                log.warning("a crashed carla_mr run left the server changed; its original settings (%s) will be "
                            "restored on close", pick.encode())
            self.conn.original = pick
        elif removed and o.synchronous_mode:
            log.warning("removed actors left by a crashed carla_mr run; the server was left synchronous by it and "
                        "will be switched back to asynchronous on close")
            o.synchronous_mode = False
            o.fixed_delta_seconds = None
        self.stats["recovered_settings"] = bool(parsed)
        return bool(parsed)

    # -- World interface ----------------------------------------------------------------------
    def reset(self) -> Snapshot:
        """Connect (first call), load the map, switch to synchronous mode, load signs, RSUs and
        landmarks, spawn, and return frame 0."""
        if self._closed:
            raise RunError("CarlaWorld.reset() after close(); make a new CarlaWorld")
        try:
            if not self._connected:
                self._connect()
            else:
                self._remove_episode_actors()
            self._setup_world()
            return self._advance()
        except BaseException as exc:
            self.close()
            self._reraise(exc, "reset")
            raise

    def _remove_episode_actors(self) -> None:
        """Before a second reset(): cameras, SUMO and every actor of ours except the marker."""
        for actor in self.rig.detach_all() if self.rig is not None else []:
            actor.stop()
        if self.cosim is not None:
            self.cosim.stop()
            self.cosim = None
        if self.traffic_lights is not None:
            self.traffic_lights.release()
            self.traffic_lights = None
        keep = self.marker.actor_id if self.marker is not None else None
        self.spawner.destroy([i for i in self.spawner.actor_ids if i != keep])
        self.spawner.sweep(self.tag, keep=keep)

    def _setup_world(self) -> None:
        from carla_mr.world.maps import landmarks_to_signs
        from carla_mr.world.rsu import RsuAssociator, make_rsus

        rng = np.random.default_rng(self.seed)
        self.map = self.world.get_map()
        self.xodr_path = self.conn.xodr_path
        self.signs = landmarks_to_signs(self.map)
        self.rsus = make_rsus(self.scenario.rsus, self.map)
        self._assoc = RsuAssociator(self.rsus)
        self._join_level_boxes()
        self.rig = CameraRig(self.spawner, depth=self.depth, sensor_timeout_s=self.sensor_timeout_s)
        vehicles = self.scenario.vehicles
        want = vehicle_wishlist(vehicles.avs, 0 if self.cfg.cosim_sumo else vehicles.background)
        self._vehicle_ids, self._vehicle_role = spawn_vehicles(self.spawner, self.map, want, rng, self.stats)
        if self.cfg.rsu_props and len(self.rsus):
            self.stats["rsu_props"] = spawn_rsu_props(self.spawner, self.map, self.rsus, rng)
        if self.cfg.cosim_sumo:
            from carla_mr.world.cosim import SumoCosim

            if self.cfg.cosim_traffic_lights:
                self.traffic_lights = TrafficLights(self.world, self.api, self.map)
            self.cosim = SumoCosim(self.spawner, self.seed, traffic_lights=self.traffic_lights)
            self.cosim.start(self.scenario, self.map.to_opendrive(), self.town)
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
        if isinstance(exc, Exception) and not isinstance(exc, CarlaMrError):
            rep = self.close_report
            state = ("the server was restored and our actors removed" if not rep.failed and not rep.skipped else
                     f"restoring the server was incomplete (failed: {sorted(rep.failed)}, skipped: {rep.skipped}); "
                     f"the next run removes our leftovers and restores the settings")
            raise RunError(f"CARLA {what} failed ({type(exc).__name__}: {exc}); {state}") from exc

    def _heartbeat(self) -> None:
        now = float(self.clock())
        if self.marker is not None and now - self._last_beat >= float(self.cfg.heartbeat_s):
            self.marker.beat(now)
            self._last_beat = now

    def _advance(self) -> Snapshot:
        if self.cosim is not None and self._frame0 is not None:  # reset(): SUMO's first step is mirrored
            self.cosim.before_tick()
        self._heartbeat()
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
        ids, role = self._vehicle_ids, self._vehicle_role
        if self.cosim is not None:
            ids, role = self.cosim.vehicles(ids, role)
        out = self._snapshot_arrays(snap, ids, role, frame - self._frame0, elapsed - self._t0)
        self.rig.match(frame)
        self._check_textures()
        self.last = out
        return out

    def _snapshot_arrays(self, snap: Any, ids: np.ndarray, role: np.ndarray, frame: int, t: float) -> Snapshot:
        """The Snapshot of vehicles ``ids`` read from one WorldSnapshot; vehicles the server
        removed (e.g. fell off the map) are dropped and counted as ``vanished``."""
        from carla_mr.world.coords import wrap_deg

        n = len(ids)
        rows = np.zeros((n, 7))
        keep = np.ones(n, dtype=bool)
        find = snap.find
        for k, vid in enumerate(ids.tolist()):
            a = find(vid)
            if a is None:
                keep[k] = False
                continue
            tf = a.get_transform()
            v = a.get_velocity()
            loc = tf.location
            rows[k] = (loc.x, loc.y, loc.z, tf.rotation.yaw, v.x, v.y, v.z)
        if not keep.all():
            gone = ids[~keep]
            self.stats["vanished"] += int(gone.size)
            self.spawner.forget(gone.tolist())
            if self.cosim is None:
                self._vehicle_ids, self._vehicle_role = ids[keep], role[keep]
            ids, role, rows = ids[keep], role[keep], rows[keep]
        x, y, z = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy()
        speed = np.sqrt((rows[:, 4:7] ** 2).sum(axis=1))
        return Snapshot(frame=frame, time=t, ids=ids.astype(np.int64), role=role, x=x, y=y, z=z,
                        yaw=wrap_deg(rows[:, 3].copy()), speed=speed, rsu=self._assoc.assign(x, y))

    # -- cameras ------------------------------------------------------------------------------
    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        """Attach an RGB camera (and, with ``depth``, a depth camera at the same pose) to a vehicle.

        Images are matched to ticks from the next tick on; see :meth:`read_camera`.
        """
        if not self._connected or self._closed:
            raise RunError("attach_camera() needs a reset() world")
        self.rig.attach(name, spec, vehicle_id)

    def camera_stats(self) -> dict[str, dict[str, int]]:
        """Per camera: images matched to ticks, frames missed (timeout), stale images dropped."""
        return self.rig.stats() if self.rig is not None else {}

    def read_camera(self, name: str) -> CameraFrame:
        """The named camera's RGB image for the latest tick, with sign labels.

        Raises :class:`FrameMissed` (a RunError) when the image of this tick did not arrive in
        time; the miss is counted in :meth:`camera_stats` and the next tick may be read again.
        """
        from carla_mr.world.carla_signs import frame_labels

        if self.rig is None:
            raise KeyError(f"no camera named '{name}'; attached: []")
        snap = self._world_snapshot
        textures = self.sign_textures()

        def labels_of(rgb, cam_to_world, K, depth):
            if self._geometry is None:
                return []
            return frame_labels(self.signs, self._geometry, cam_to_world, K, rgb.shape[1], rgb.shape[0],
                                depth_img=depth, textures=textures)

        return self.rig.frame(name, frame=self._server_frame - (self._frame0 or 0),
                              time_s=self.last.time if self.last else 0.0,
                              ego_of=snap.find if snap is not None else (lambda vid: None), labels_of=labels_of)

    # -- sign textures ------------------------------------------------------------------------
    def sign_objects(self) -> dict[str, "SignTarget"]:
        """Static sign id -> the actor its texture goes to (discovered once per town, cached).

        A sign joined to a level box is anchored at the box, which is where its mesh is.
        Traffic lights are not TrafficSigns objects and have no entry.
        """
        static = np.array([str(k) != "traffic_light" for k in self.signs.kind], dtype=bool)
        sxyz = np.stack([self.signs.x, self.signs.y, self.signs.z], axis=1) if len(self.signs) else np.zeros((0, 3))
        if self._level_boxes is not None and len(self._box_index):
            ok = self._box_index >= 0
            sxyz = sxyz.copy()
            sxyz[ok] = self._level_boxes[0][self._box_index[ok]]
        key = f"{self.town}@{self.conn.server_version}"
        ids = [str(s) for s in self.signs.ids[static]]
        return dict(self.objects.discover(self.world, self.api, key, ids, sxyz[static]))

    def _push_textures(self, textures: dict[str, SignTexture]) -> None:
        """Stream each texture to its sign's actor; a sign that cannot take it keeps what it
        showed (and the reason is recorded in ``texture_no_object``)."""
        from carla_mr.world.carla_textures import apply_texture, to_texture_color

        if not self._connected or self._closed:
            raise RunError("apply_sign_textures() needs a reset() world")
        targets = self.sign_objects()
        before = self._visible_patches(list(textures))
        for sid, tex in list(textures.items()):
            shown = self.texture_store.get(sid, SignTexture())
            if tex.image is None:
                if shown.source != "original":
                    # CARLA cannot read a level texture back, so the original cannot be restored;
                    # keep the label truthful: the sign still shows the last generated image.
                    self.stats["texture_not_restorable"].append(sid)
                    textures[sid] = shown
                continue
            target = targets.get(sid)
            if target is None or target.object is None:
                self.stats["texture_no_object"][sid] = target.reason if target is not None else \
                    "a traffic light has no sign object"
                textures[sid] = shown
                continue
            try:
                apply_texture(self.world, self.api, target.object, to_texture_color(self.api, np.asarray(tex.image)))
            except Exception as exc:  # noqa: BLE001 - the server's refusal is recorded per sign
                if is_connection_error(exc):
                    raise
                self.stats["texture_no_object"][sid] = f"the server refused '{target.object}': {exc}"
                textures[sid] = shown
                continue
            if target.other_meshes:
                self.stats["texture_other_meshes"][sid] = {"actor": target.object,
                                                           "other_meshes": list(target.other_meshes)}
            if sid in before:
                self._pending_checks[sid] = before[sid]

    def _visible_patches(self, sign_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Mean colour of each sign's pixels in every camera that sees it now (for the no-op check)."""
        from carla_mr.world.carla_textures import patch_mean

        out: dict[str, dict[str, Any]] = {}
        wanted = set(map(str, sign_ids))
        for name in list(self.rig.cameras if self.rig is not None else []):
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
        frames: dict[str, Optional[CameraFrame]] = {}
        for sid, info in pending.items():
            cam = info["camera"]
            if cam not in frames:
                try:
                    frames[cam] = self.read_camera(cam)
                except FrameMissed:
                    frames[cam] = None
            fr = frames[cam]
            lab = None if fr is None else next((l for l in fr.labels if l["id"] == sid), None)
            if lab is None:
                continue
            self.stats["texture_checked"] = self.stats.get("texture_checked", 0) + 1
            if patch_changed(info["mean"], patch_mean(fr.image, lab["box"])) is False:
                self.stats["texture_noops"].append(sid)

    # -- metadata -----------------------------------------------------------------------------
    def landmark_summary(self) -> dict[str, Any]:
        from carla_mr.world.maps import landmark_counts

        return super().landmark_summary() if self.map is None else landmark_counts(self.map)

    def summary(self) -> dict[str, Any]:
        """Backend facts for a run summary: versions, town, physics, spawn/sensor/texture
        figures, co-simulation counts and the close report."""
        conn = self.conn
        return {"backend": "carla", "server_version": conn.server_version, "client_version": conn.client_version,
                "town": self.town, "session": self.session, **self.stats,
                "physics_substeps_set": conn.substeps_touched,
                **({"cosim": self.cosim.summary()} if self.cosim is not None else {}),
                "cameras": self.camera_stats(), "close": self.close_report.as_dict()}

    # -- close --------------------------------------------------------------------------------
    def close(self) -> None:
        """Restore the server and destroy our actors: idempotent, safe at any point, held
        against signals, and resumed by calling it again if an interrupt cut it short."""
        with _CLOSE_LOCK:
            if self._close_done or self._closing:
                return
            self._closing = True
        self._closed = True
        interrupt: Optional[BaseException] = None
        try:
            with deferred_signals(self.owns_signals and is_open(self)):
                seq = self._restore = self._restore or self._restore_sequence()
                interrupt = seq.run()
                if seq.finished:  # the marker step comes last, once the others are through
                    self._add_marker_step(seq)
                    interrupt = seq.run() or interrupt
                if seq.finished:
                    self._close_done = True
                    unregister(self)  # before held signals are delivered (their handler closes open worlds)
        finally:
            self._closing = False
        if interrupt is not None:
            raise interrupt

    def _restore_sequence(self) -> RestoreSequence:
        """The restore steps, in order: stop sensors, SUMO and traffic-light control, destroy
        our actors, sweep our tag, then the Traffic Manager and the world settings."""
        conn = self.conn
        seq = RestoreSequence(self.close_report, conn.ping if conn.client is not None else _no_server)
        if conn.client is not None:
            try:  # client-side: every later call waits at most this long
                conn.client.set_timeout(min(float(self.cfg.timeout_s), 5.0))
            except Exception:  # noqa: BLE001
                pass
        for actor in self.rig.detach_all() if self.rig is not None else []:
            seq.add(Step(f"stop sensor {actor.id}", actor.stop))
        if self.cosim is not None:
            seq.add(Step("stop co-simulation", self.cosim.stop))
        if self.traffic_lights is not None:
            seq.add(Step("release traffic lights", self.traffic_lights.release))
        sp = self.spawner
        if sp is not None:
            keep = self.marker.actor_id if self.marker is not None else None
            ids = [i for i in sp.actor_ids if i != keep]
            if ids:
                seq.add(Step("destroy actors", lambda: sp.destroy(ids), retry=lambda: sp.destroy_one_by_one(ids)))
            seq.add(Step("sweep tagged actors", lambda: sp.sweep(self.tag, keep=keep)))
        if conn.needs_tm_restore():
            seq.add(Step("traffic manager synchronous off", conn.restore_traffic_manager))
        if conn.needs_settings_restore():
            seq.add(Step("restore world settings", conn.restore_settings))
        return seq

    def _add_marker_step(self, seq: RestoreSequence) -> None:
        """Once the settings are restored the marker has done its job; if they could not be,
        it stays (for the next run) and is marked stopped."""
        if self.marker is None or self.marker.actor_id is None or seq.server_lost:
            return
        rep = self.close_report
        restored = not any(k in rep.failed or k in rep.skipped
                           for k in ("restore world settings", "traffic manager synchronous off"))
        if restored:
            seq.add(Step("destroy marker", self.marker.destroy))
        else:
            seq.add(Step("mark session stopped", self.marker.mark_stopped))


_CLOSE_LOCK = threading.RLock()


def _no_server() -> None:
    raise RunError("not connected")
