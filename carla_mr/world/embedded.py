"""The embedded world: a real OpenDRIVE map (libcarla, offline) with real SUMO traffic (libsumo).

No server and no GPU. The scenario's map is parsed by ``carla.Map`` (waypoints, topology,
landmarks -> :attr:`signs`), signs from the scenario are injected first, netconvert turns the
.xodr into a SUMO net (cached), and libsumo steps the traffic with fixed ``tick_s`` steps.

- Vehicles: ``vehicles.avs`` AVs (role 1) and ``vehicles.background`` vehicles (role 0) on
  random valid routes. Before a vehicle reaches the end of its route the route is extended to
  a new random destination, so ids stay stable; a vehicle that still leaves the network (a
  dead end, a teleport that fails) is replaced by a new one of the same role, so the
  population stays constant.
- Traffic lights are the net's (netconvert imports the map's signals) and run in SUMO.
- Each vehicle's serving RSU is the nearest one whose range covers it (vectorised).
- Snapshots come from libsumo subscriptions (position 3D, angle, speed), converted to
  CARLA's frame with the net offset, RSU association included, in one pass
  (:class:`~carla_mr.world.sumo_columns.SumoColumns`: C where built, else numpy; same bits);
  no per-vehicle objects beyond libsumo's result dicts.
- Deterministic for a seed (SUMO's ``--seed`` and a numpy Generator for routes).

libsumo runs one simulation per process: a second live EmbeddedWorld raises RunError.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from carla_mr.errors import CarlaMrError, InputError, RunError
from carla_mr.world.base import ROLE_AV, ROLE_BACKGROUND, Snapshot, World
from carla_mr.world.maps import landmark_counts, landmarks_to_signs, map_from_text, signs_for_scenario
from carla_mr.world.rsu import RsuAssociator, make_rsus
from carla_mr.world.sumo_columns import SumoColumns
from carla_mr.world.sumo_net import build_net, cache_dir

if TYPE_CHECKING:  # pragma: no cover
    from carla_mr.config import Scenario

_LIVE: Optional["EmbeddedWorld"] = None
_LIBSUMO = None

#: SUMO options of every embedded simulation (quiet; jams resolve by teleporting after 120 s).
SUMO_OPTIONS = ("--no-step-log", "true", "--no-warnings", "true", "--duration-log.disable", "true",
                "--time-to-teleport", "120", "--ignore-route-errors", "true", "--collision.action", "warn",
                "--collision.check-junctions", "false")
#: How often (simulated seconds) routes about to end are extended.
ROUTE_CHECK_S = 1.0
#: An upper bound on any vehicle's speed as a multiple of its lane's limit: SUMO draws each
#: vehicle's speed factor from a distribution truncated at 2 (``normc(1, 0.1, 0.2, 2)``).
SPEED_FACTOR_MAX = 2.0


def import_libsumo():
    """Import libsumo without its import-time notes reaching stdout (``--json`` owns stdout)."""
    global _LIBSUMO
    if _LIBSUMO is None:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            import libsumo
        _LIBSUMO = libsumo
    return _LIBSUMO


#: Background traffic mix: (vehicle type of carla_mr.world.gl_scene.VEHICLE_TYPES, share).
TRAFFIC_MIX = (("car", 0.70), ("van", 0.12), ("truck", 0.07), ("bus", 0.05), ("motorcycle", 0.06))
#: SUMO maximum speed (m/s) per type where it differs from a car's.
_TYPE_SPEED = {"truck": 25.0, "bus": 22.0}


def define_vehicle_types(ls) -> None:
    """SUMO vehicle types ``cmr_bg_<type>`` with each type's length, width and height (the
    camera draws the same sizes); vClass stays passenger so every route stays valid."""
    from carla_mr.world.gl_scene import VEHICLE_TYPES

    for name, _share in TRAFFIC_MIX:
        tid = f"cmr_bg_{name}"
        ls.vehicletype.copy("DEFAULT_VEHTYPE", tid)
        length, width, height, _ = VEHICLE_TYPES[name]
        ls.vehicletype.setLength(tid, length)
        ls.vehicletype.setWidth(tid, width)
        ls.vehicletype.setHeight(tid, height)
        if name in _TYPE_SPEED:
            ls.vehicletype.setMaxSpeed(tid, _TYPE_SPEED[name])


def background_type(seed: int, vid: int) -> str:
    """The vehicle type of background vehicle ``vid`` (seeded, independent of the route RNG)."""
    u = (hashlib.sha256(f"{int(seed)}:{int(vid)}".encode()).digest()[0] + 0.5) / 256.0
    acc = 0.0
    for name, share in TRAFFIC_MIX:
        acc += share
        if u < acc:
            return name
    return TRAFFIC_MIX[0][0]


def live_world() -> Optional["EmbeddedWorld"]:
    """The EmbeddedWorld that holds this process's libsumo simulation, if any."""
    return _LIVE


def _new_snapshot(frame, time, ids, role, x, y, z, yaw, speed, rsu) -> Snapshot:
    """A Snapshot without the frozen dataclass's per-field ``object.__setattr__`` (hot path)."""
    snap = Snapshot.__new__(Snapshot)
    snap.__dict__.update(frame=frame, time=time, ids=ids, role=role, x=x, y=y, z=z, yaw=yaw, speed=speed, rsu=rsu)
    return snap


def stagger_traffic_lights(ls, seed: int) -> dict[str, float]:
    """Advance each traffic-light program to a seeded offset into its cycle (seconds).

    The offset of junction ``tls`` is uniform in [0, cycle) from a generator seeded with
    (``seed``, crc32(``tls``)): deterministic per seed and junction, independent of the order
    of junctions and of the route generator. Returns {tls id: offset in seconds}.
    """
    import zlib

    tl = ls.trafficlight
    offsets = {}
    for tls in tl.getIDList():
        logics = tl.getAllProgramLogics(tls)
        prog = tl.getProgram(tls)
        logic = next((lg for lg in logics if lg.programID == prog), logics[0] if logics else None)
        durations = [float(p.duration) for p in (logic.phases if logic is not None else ())]
        cycle = sum(durations)
        if cycle <= 0 or len(durations) < 2:
            continue
        rng = np.random.default_rng([int(seed) % (2 ** 32), zlib.crc32(str(tls).encode())])
        t = float(rng.uniform(0.0, cycle))
        ends = np.cumsum(durations)
        phase = int(np.searchsorted(ends, t, side="right"))
        phase = min(phase, len(durations) - 1)
        tl.setPhase(tls, phase)
        tl.setPhaseDuration(tls, max(0.1, float(ends[phase]) - t))
        offsets[str(tls)] = t
    return offsets


class EmbeddedWorld(World):
    """SUMO traffic on an OpenDRIVE map, no server. See the module docstring.

    Attributes (besides :class:`World`'s): ``map`` (carla.Map), ``xodr_path`` (the .xodr used,
    with injected signs), ``net_path``, ``seed``, ``sumo`` (the libsumo module, for read-only inspection),
    ``last`` (the latest Snapshot or None).
    """

    #: Start every traffic-light program at a seeded offset into its cycle, so that not all
    #: junctions switch together (issue 17); False: SUMO's default (all in phase at t = 0).
    stagger_signals: bool = True
    #: Convert SUMO's results with the compiled pass when it is built (False: the numpy pass,
    #: the same values bit for bit; see :mod:`carla_mr.world.sumo_columns`). Read at reset().
    c_pass: bool = True

    def __init__(self, scenario: "Scenario", *, seed: Optional[int] = None, traffic_mix: bool = True):
        if _LIVE is not None:
            raise RunError("another EmbeddedWorld is live in this process (libsumo runs one simulation per "
                           "process); close() it first")
        self.scenario = scenario
        self.seed = int(scenario.seed if seed is None else seed)
        #: Background vehicles of several types (TRAFFIC_MIX) or all cars (the CARLA co-simulation's
        #: mirror, whose blueprints follow a 5 m passenger car).
        self.traffic_mix = bool(traffic_mix)
        src = scenario.resolved_map_path()
        if src is None:
            raise InputError("the embedded backend needs an .xodr map", field="map", source=scenario.source_path)
        try:
            text = Path(src).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("not a UTF-8 OpenDRIVE text file", field="map", source=str(src)) from exc
        new_text, self.injected_sign_ids = signs_for_scenario(text, scenario.signs, self.seed, name=Path(src).stem)
        xodr_path = Path(src)
        if self.injected_sign_ids:
            key = hashlib.sha256(new_text.encode()).hexdigest()[:16]
            xodr_path = cache_dir() / "maps" / f"{Path(src).stem}-{key}.xodr"
            if not xodr_path.is_file():
                from carla_mr.io import atomic_write_text

                atomic_write_text(xodr_path, new_text)
        net = build_net(xodr_path)
        super().__init__(scenario.tick_s, xodr_path=xodr_path, net_offset=net.net_offset)
        self.net_path = net.path
        self.map = map_from_text(Path(src).stem, new_text)
        from carla_mr.world.scene import signs_as_rendered

        # One pose per sign: what world.json says is what the camera draws.
        self.signs = signs_as_rendered(self.map, landmarks_to_signs(self.map))
        self._landmarks = landmark_counts(self.map)
        self.rsus = make_rsus(scenario.rsus, self.map)
        self._assoc = RsuAssociator(self.rsus)
        self.n_avs = int(scenario.vehicles.avs)
        self.n_background = int(scenario.vehicles.background)
        self.sumo = None
        self.last: Optional[Snapshot] = None
        self._camera_rig = None
        self._columns: Optional[SumoColumns] = None
        self._closed = False
        self._started = False

    # -- lifecycle ----------------------------------------------------------------------------
    def _start(self) -> None:
        global _LIVE
        if _LIVE is not None and _LIVE is not self:
            raise RunError("another EmbeddedWorld is live in this process (libsumo runs one simulation per "
                           "process); close() it first")
        ls = import_libsumo()
        if ls.simulation.isLoaded():
            raise RunError("a libsumo simulation is already running in this process; close it first")
        cmd = ["sumo", "-n", str(self.net_path), "--step-length", repr(self.tick_s), "--seed",
               str(self.seed % (2 ** 31)), "--begin", "0", *SUMO_OPTIONS]
        try:
            ls.start(cmd)
        except BaseException as exc:  # libsumo raises its own types; SIGTERM/Ctrl-C may land here too
            if ls.simulation.isLoaded():
                ls.close()
            if isinstance(exc, (CarlaMrError, KeyboardInterrupt)) or not isinstance(exc, Exception):
                raise
            raise RunError(f"SUMO could not start on {self.net_path}: {exc}") from exc
        _LIVE = self
        self.sumo = ls
        self._started = True
        if self.stagger_signals:
            self.signal_offsets_s = stagger_traffic_lights(ls, self.seed)
        self._closed = False
        tc = ls.constants
        self._vars = (tc.VAR_POSITION3D, tc.VAR_ANGLE, tc.VAR_SPEED)
        self._columns = SumoColumns(self._vars, self.net_offset, self._assoc, use_c=self.c_pass)
        self._rng = np.random.default_rng(self.seed)
        self._next_id = 0
        self._next_route = 0
        self._role_by_id = np.zeros(max(16, 2 * (self.n_avs + self.n_background)), dtype=np.uint8)
        self._route_len: dict[str, int] = {}
        # frame before which a vehicle cannot be near its route's end (see _poll_frame)
        self._poll_at: dict[str, int] = {}
        self._edge_len: dict[str, float] = {}
        self._last_keys: list[str] = []
        self._ids = np.zeros(0, np.int64)
        self._role = np.zeros(0, np.uint8)
        self._frame = -1
        self._check_every = max(1, int(round(ROUTE_CHECK_S / self.tick_s)))
        ls.vehicletype.copy("DEFAULT_VEHTYPE", "cmr_av")
        ls.vehicletype.copy("DEFAULT_VEHTYPE", "cmr_bg")
        ls.vehicletype.setColor("cmr_av", (255, 60, 60, 255))
        self._vtype_of: dict[int, str] = {}
        define_vehicle_types(ls)
        self._edges = self._eligible_edges()
        if not self._edges:
            raise InputError("the SUMO net made from the map has no edge passenger cars may use", field="map",
                             source=str(self.xodr_path))
        self._edge_arr = np.array(self._edges, dtype=object)
        # metres per second no vehicle can exceed anywhere on the net (bounds how soon a route can end)
        self._v_bound = SPEED_FACTOR_MAX * max((ls.lane.getMaxSpeed(ln) for ln in ls.lane.getIDList()), default=50.0)
        self._respawn: list[int] = []  # roles still to add (no route found yet); retried every tick
        self._signal_links: Optional[dict[str, list[tuple[str, int]]]] = None
        for role, count in ((ROLE_AV, self.n_avs), (ROLE_BACKGROUND, self.n_background)):
            for _ in range(count):
                if not self._spawn(role):
                    raise InputError("no route between random edges of the SUMO net made from the map (is the "
                                     "road network connected?)", field="map", source=str(self.xodr_path))

    def _eligible_edges(self) -> list[str]:
        ls = self.sumo
        out = []
        for e in sorted(ls.edge.getIDList()):
            if e.startswith(":"):
                continue
            n = ls.edge.getLaneNumber(e)
            ok = False
            for i in range(n):
                lane = f"{e}_{i}"
                allowed = ls.lane.getAllowed(lane)
                disallowed = ls.lane.getDisallowed(lane)
                if (not allowed or "passenger" in allowed) and "passenger" not in disallowed:
                    ok = True
                    break
            if ok and ls.lane.getLength(f"{e}_0") > 8.0:
                out.append(e)
        return out

    def _random_route(self, origin: Optional[str] = None) -> Optional[tuple[str, ...]]:
        ls = self.sumo
        for _ in range(30):
            o = origin or self._edge_arr[int(self._rng.integers(len(self._edge_arr)))]
            d = self._edge_arr[int(self._rng.integers(len(self._edge_arr)))]
            if d == o:
                continue
            r = ls.simulation.findRoute(o, d, vType="cmr_bg")
            if r.edges and len(r.edges) >= 2:
                return tuple(r.edges)
        return None

    def _spawn(self, role: int) -> bool:
        """Add one vehicle of ``role`` on a random route; False if no route was found."""
        ls = self.sumo
        edges = self._random_route()
        if edges is None:
            return False
        vid_num = self._next_id
        self._next_id += 1
        if vid_num >= len(self._role_by_id):
            self._role_by_id = np.concatenate([self._role_by_id, np.zeros(len(self._role_by_id), np.uint8)])
        self._role_by_id[vid_num] = role
        rid = f"r{self._next_route}"
        self._next_route += 1
        ls.route.add(rid, list(edges))
        vid = str(vid_num)
        vtype = "car" if (role == ROLE_AV or not self.traffic_mix) else background_type(self.seed, vid_num)
        self._vtype_of[vid_num] = vtype
        ls.vehicle.add(vid, rid, typeID="cmr_av" if role == ROLE_AV else (f"cmr_bg_{vtype}" if self.traffic_mix else "cmr_bg"), depart="now",
                       departLane="best", departPos="random_free", departSpeed="0")
        self._route_len[vid] = len(edges)
        self._poll_at[vid] = self._poll_frame(edges, 0)
        return True

    def _poll_frame(self, edges, idx: int) -> int:
        """The first frame at which a vehicle now on ``edges[idx]`` could have reached
        ``edges[-2]`` (when its route gets extended): it must first drive every edge in between,
        at no more than ``_v_bound`` m/s. Until then :meth:`_extend_routes` need not ask SUMO
        where it is; the extensions made are the same as polling every vehicle every check."""
        length = self._edge_len
        ahead = 0.0
        for e in edges[idx + 1:len(edges) - 2]:
            m = length.get(e)
            if m is None:  # the shortest lane of the edge (lanes on a curve differ in length)
                lane = self.sumo.lane
                m = length[e] = min(float(lane.getLength(f"{e}_{i}")) for i in range(self.sumo.edge.getLaneNumber(e)))
            ahead += m
        return self._frame + int(ahead / (self._v_bound * self.tick_s))

    def reset(self) -> Snapshot:
        """(Re)start the simulation, spawn the vehicles, step once and return frame 0."""
        if self._started and not self._closed:
            self._shutdown()
        self._start()
        return self._step()

    def tick(self) -> Snapshot:
        """Advance one ``tick_s`` step and return the new Snapshot."""
        if not self._started or self._closed:
            raise RunError("EmbeddedWorld.tick() before reset() (or after close())")
        return self._step()

    # -- the hot path -------------------------------------------------------------------------
    def _step(self) -> Snapshot:
        ls = self.sumo
        ls.simulationStep()
        self._frame += 1
        veh = ls.vehicle
        for vid in ls.simulation.getDepartedIDList():
            veh.subscribe(vid, self._vars)
        arrived = ls.simulation.getArrivedIDList()
        if arrived or self._respawn:
            # replace leavers (same role) so the population stays constant
            roles = self._respawn + [int(self._role_by_id[int(vid)]) for vid in arrived]
            for vid in arrived:
                self._route_len.pop(vid, None)
                self._poll_at.pop(vid, None)
            self._respawn = [r for r in roles if not self._spawn(r)]
        for vid in ls.simulation.getEndingTeleportIDList():
            self._poll_at[vid] = 0  # a teleport moves a vehicle ahead on its route: ask again
        if self._frame % self._check_every == 0:
            self._extend_routes()
        keys, cols, rsu = self._columns(veh.getAllSubscriptionResults())
        if keys != self._last_keys:
            self._last_keys = keys
            self._ids = np.array(keys, dtype=np.int64) if keys else np.zeros(0, np.int64)
            self._role = self._role_by_id[self._ids]
            self._ids.flags.writeable = False  # shared by every Snapshot until the set changes
            self._role.flags.writeable = False
        snap = _new_snapshot(self._frame, round((self._frame + 1) * self.tick_s, 9), self._ids, self._role, cols[0],
                             cols[1], cols[2], cols[3], cols[4], rsu)
        self.last = snap
        return snap

    def _extend_routes(self) -> None:
        """Give every vehicle close to its route's end (on its last two edges) a continuation to
        a new random edge. Only vehicles whose :meth:`_poll_frame` has come are asked."""
        ls = self.sumo
        veh = ls.vehicle
        frame, poll_at = self._frame, self._poll_at
        for vid in self._last_keys:
            if poll_at.get(vid, 0) > frame:
                continue
            total = self._route_len.get(vid)
            if total is None:
                continue
            try:
                idx = veh.getRouteIndex(vid)
            except ls.TraCIException:
                continue
            if idx < total - 2:
                poll_at[vid] = self._poll_frame(veh.getRoute(vid), idx)
                continue
            route = veh.getRoute(vid)
            tail = list(route[max(idx, 0):])
            nxt = self._random_route(origin=tail[-1])
            if nxt is None:
                continue
            new = tail + list(nxt[1:])
            try:
                veh.setRoute(vid, new)
            except ls.TraCIException:
                continue
            # SUMO keeps the edges already driven in front of the new ones (the route index
            # stays where it was), so the route is now route[:idx] + new
            full = list(route[:max(idx, 0)]) + new
            self._route_len[vid] = len(full)
            poll_at[vid] = self._poll_frame(full, idx)

    # -- metadata -------------------------------------------------------------------------------
    def landmark_summary(self) -> dict[str, Any]:
        """The map's landmarks as libcarla lists them: total, by_type, unique_signs."""
        return dict(self._landmarks)

    def summary(self) -> dict[str, Any]:
        """Backend facts for a run summary: ``snapshot_pass`` ("c" or "numpy": which
        :class:`~carla_mr.world.sumo_columns.SumoColumns` pass converted SUMO's results; the
        values are the same, the C one is faster) and, once a camera is attached, ``scene``: the
        OpenGL town's prop counts (the map's own objects under ``map_objects``)."""
        out: dict[str, Any] = {}
        if self._columns is not None:  # set at reset()
            out["snapshot_pass"] = "c" if self._columns.uses_c else "numpy"
        rig = self._camera_rig
        if rig is not None and rig.scene_counts:
            out["scene"] = dict(rig.scene_counts)
        return out

    # -- cameras (rendered by carla_mr.world.render; the rig is built on first attach) ------------
    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        """Attach an RGB camera (CameraSpec) to a vehicle; see EmbeddedCameraRig."""
        if self._camera_rig is None:
            from carla_mr.world.render import EmbeddedCameraRig

            self._camera_rig = EmbeddedCameraRig(self.map, self.signs)
        self._camera_rig.attach(name, spec, vehicle_id)

    def read_camera(self, name: str):
        """The named camera's CameraFrame for the latest tick (rendered now, with sign labels)."""
        if self._camera_rig is None or self.last is None:
            raise RunError(f"read_camera({name!r}) needs attach_camera() and reset() first")
        # the texture store itself (keys are str ids; the renderer falls back to the original face)
        self._camera_rig.vehicle_types = self._vtype_of
        tl = None
        if self._camera_rig.is_gl and (self._camera_rig.geom.kind == "traffic_light").any():
            from carla_mr.world.gl_render import tl_state_of

            tl = {sig: tl_state_of(chars) for sig, chars in self.signal_link_states().items()}
        return self._camera_rig.render(name, self.last, self.texture_store, tl_state=tl)

    def traffic_light_ids(self) -> list[str]:
        """SUMO ids of the running traffic lights (empty before reset)."""
        return list(self.sumo.trafficlight.getIDList()) if self._started and not self._closed else []

    def traffic_light_states(self) -> dict[str, str]:
        """Each running traffic light's current signal string (SUMO: one char per controlled
        link, ``r``/``y``/``g``/``G``/...); empty before reset. Not part of the hot path."""
        if not self._started or self._closed:
            return {}
        tl = self.sumo.trafficlight
        return {t: tl.getRedYellowGreenState(t) for t in tl.getIDList()}

    def remove_vehicle(self, vehicle_id: int) -> None:
        """Take a vehicle out of the simulation now; as for any vehicle that leaves, a new one of
        the same role departs in its place (the population stays constant)."""
        if not self._started or self._closed:
            raise RunError("remove_vehicle() needs a reset() world")
        vid = str(int(vehicle_id))
        veh = self.sumo.vehicle
        veh.unsubscribe(vid)  # libsumo fails the next step for a removed vehicle still subscribed
        veh.remove(vid)
        self._route_len.pop(vid, None)
        self._poll_at.pop(vid, None)
        self._respawn.append(int(self._role_by_id[int(vid)]))

    # -- per-vehicle and signal facts for co-simulation (not part of the hot path) ---------------
    def vehicle_class(self, vehicle_id: int) -> tuple[str, float]:
        """(SUMO vehicle class, length in metres) of a vehicle in the simulation."""
        veh = self.sumo.vehicle
        vid = str(int(vehicle_id))
        return str(veh.getVehicleClass(vid)), float(veh.getLength(vid))

    def slopes(self, ids: np.ndarray) -> np.ndarray:
        """Each vehicle's slope (degrees, positive uphill: CARLA's pitch), 0 for unknown ids."""
        veh = self.sumo.vehicle
        out = np.zeros(len(ids))
        for k, vid in enumerate(np.asarray(ids).tolist()):
            try:
                out[k] = veh.getSlope(str(vid))
            except self.sumo.TraCIException:
                out[k] = 0.0
        return out

    def signal_link_states(self) -> dict[str, str]:
        """For each OpenDRIVE signal id the SUMO net's traffic lights control (netconvert keeps
        it as the ``linkSignalID:<i>`` parameter), the SUMO state characters of its links now."""
        tl = self.sumo.trafficlight
        if self._signal_links is None:
            links: dict[str, list[tuple[str, int]]] = {}
            for t in tl.getIDList():
                for i in range(len(tl.getRedYellowGreenState(t))):
                    for sig in tl.getParameter(t, f"linkSignalID:{i}").split():
                        links.setdefault(sig, []).append((t, i))
            self._signal_links = links
        states = {t: tl.getRedYellowGreenState(t) for t in {t for v in self._signal_links.values() for t, _ in v}}
        return {sig: "".join(states[t][i] for t, i in v) for sig, v in self._signal_links.items()}

    # -- shutdown -------------------------------------------------------------------------------
    def _shutdown(self) -> None:
        global _LIVE
        try:
            if self.sumo is not None and self.sumo.simulation.isLoaded():
                self.sumo.close()
        finally:
            if _LIVE is self:
                _LIVE = None
            self._closed = True

    def close(self) -> None:
        """Close the SUMO simulation (idempotent); another EmbeddedWorld may start afterwards."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._shutdown()

    def __del__(self):  # a forgotten world must not block the next one
        try:
            if _LIVE is self:
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
