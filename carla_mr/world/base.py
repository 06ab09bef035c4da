"""The world interface every backend implements, and the arrays it returns.

Frames and units (both backends agree, so everything downstream is backend-agnostic):

- Positions are metres in CARLA's world frame, which is left-handed: x forward/east,
  y to the right (south on a map drawn north-up), z up.
- Yaw is degrees in CARLA's convention (clockwise seen from above, 0 along +x).
- Speed is metres per second; time is seconds of simulation time.

A backend is a small gymnasium-like core: ``reset()`` then ``tick()`` repeatedly, and one
idempotent ``close()`` reached from every exit path (context manager included).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from carla_mr.errors import RunError

ROLE_BACKGROUND = 0
ROLE_AV = 1


@dataclass(frozen=True)
class Snapshot:
    """The state of every vehicle at one tick, as parallel numpy arrays of length N.

    ``rsu`` is the index into :attr:`World.rsus` of the RSU serving the vehicle (nearest RSU
    whose radio range covers it), or -1 when none does.
    """

    frame: int
    time: float  # seconds of simulation time
    ids: np.ndarray  # (N,) int64, stable across ticks for one vehicle
    role: np.ndarray  # (N,) uint8, ROLE_AV or ROLE_BACKGROUND
    x: np.ndarray  # (N,) float64 metres, CARLA frame
    y: np.ndarray  # (N,) float64 metres, CARLA frame
    z: np.ndarray  # (N,) float64 metres
    yaw: np.ndarray  # (N,) float64 degrees, CARLA convention
    speed: np.ndarray  # (N,) float64 m/s
    rsu: np.ndarray  # (N,) int32, serving RSU index or -1

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def av_mask(self) -> np.ndarray:
        return self.role == ROLE_AV

    def select(self, mask: np.ndarray) -> "Snapshot":
        """A Snapshot of the vehicles where ``mask`` is true (same frame and time)."""
        return Snapshot(self.frame, self.time, self.ids[mask], self.role[mask], self.x[mask], self.y[mask],
                        self.z[mask], self.yaw[mask], self.speed[mask], self.rsu[mask])

    @staticmethod
    def empty(frame: int = 0, time: float = 0.0) -> "Snapshot":
        f = np.zeros(0, dtype=np.float64)
        return Snapshot(frame, time, np.zeros(0, np.int64), np.zeros(0, np.uint8), f, f.copy(), f.copy(),
                        f.copy(), f.copy(), np.zeros(0, np.int32))


@dataclass(frozen=True)
class RsuTable:
    """Roadside units: positions (metres, CARLA frame), radio range and compute resources.

    Defaults follow the paper: 20 MHz up/down bandwidth, 3.6 GHz CPU, 19 GHz GPU.
    """

    x: np.ndarray  # (J,) metres
    y: np.ndarray  # (J,) metres
    z: np.ndarray  # (J,) metres
    range_m: np.ndarray  # (J,) metres
    bandwidth_up_hz: np.ndarray  # (J,) Hz
    bandwidth_down_hz: np.ndarray  # (J,) Hz
    cpu_hz: np.ndarray  # (J,) cycles/s
    gpu_hz: np.ndarray  # (J,) cycles/s

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def to_records(self) -> list[dict[str, float]]:
        return [
            {"index": j, "x": float(self.x[j]), "y": float(self.y[j]), "z": float(self.z[j]),
             "range_m": float(self.range_m[j]), "bandwidth_up_hz": float(self.bandwidth_up_hz[j]),
             "bandwidth_down_hz": float(self.bandwidth_down_hz[j]), "cpu_hz": float(self.cpu_hz[j]),
             "gpu_hz": float(self.gpu_hz[j])}
            for j in range(len(self))
        ]

    @staticmethod
    def empty() -> "RsuTable":
        """A table with no RSU (a world before ``reset()``, or one without roadside units)."""
        return RsuTable(*(np.zeros(0, dtype=np.float64) for _ in range(8)))


@dataclass(frozen=True)
class SignTable:
    """Static traffic signs and signals from the map's landmarks (OpenDRIVE ``<signal>``).

    ``kind`` is a short class name (``stop``, ``yield``, ``speed_limit``, ``traffic_light``,
    ...); ``value`` the numeric value where one applies (km/h for speed limits, else NaN);
    ``yaw`` the direction the sign face points to (degrees, CARLA convention); ``width`` and
    ``height`` the face size in metres; ``z`` the height of the face centre above ground.
    """

    ids: np.ndarray  # (S,) str, the OpenDRIVE signal id
    kind: np.ndarray  # (S,) str
    value: np.ndarray  # (S,) float64
    odr_type: np.ndarray  # (S,) str, OpenDRIVE type code (e.g. "206", "274", "1000001")
    x: np.ndarray  # (S,) metres
    y: np.ndarray  # (S,) metres
    z: np.ndarray  # (S,) metres
    yaw: np.ndarray  # (S,) degrees
    width: np.ndarray  # (S,) metres
    height: np.ndarray  # (S,) metres
    road_id: np.ndarray  # (S,) int64

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def counts_by_kind(self) -> dict[str, int]:
        kinds, counts = np.unique(self.kind.astype(str), return_counts=True)
        return {str(k): int(c) for k, c in zip(kinds, counts)}

    @staticmethod
    def empty() -> "SignTable":
        s = np.zeros(0, dtype=object)
        f = np.zeros(0, dtype=np.float64)
        return SignTable(s, s.copy(), f, s.copy(), f.copy(), f.copy(), f.copy(), f.copy(), f.copy(), f.copy(),
                         np.zeros(0, np.int64))


@dataclass
class SignTexture:
    """What one sign shows: ``source`` is "original" or "generated"; ``ref`` names the image.

    ``label_class`` is the class a dataset label must carry for this face when it differs from
    the sign's own (kind, value): for a generated face, what the independent validator read on
    it (``speed_limit_30``), or the generic kind (``speed_limit``) when no value could be read,
    so a label never names a value the face does not show. None: the sign's own class.
    """

    source: str = "original"
    ref: str | None = None
    image: Any = field(default=None, repr=False)  # (H, W, 3|4) uint8 RGB(A), None for the original
    label_class: str | None = None


class FrameMissed(RunError):
    """``read_camera()``: this tick's image did not arrive in time (a server backend's sensor
    stream); skip the frame, the next tick can be read again."""


@dataclass
class CameraFrame:
    """One camera image matched to a tick, with exact labels for every sign in view.

    ``labels`` holds one dict per visible sign: ``id`` (str), ``kind`` (str), ``value``
    (float or None), ``box`` [x0, y0, x1, y1] pixels clipped to the image, ``visible`` (share
    of the sign's face not occluded, 0..1), ``distance`` (metres, camera to sign centre),
    ``source`` ("original" | "generated") and ``ref`` (which generated image, or None).
    """

    frame: int
    time: float
    image: np.ndarray  # (H, W, 3) uint8 RGB
    intrinsics: np.ndarray  # (3, 3) pixels, CARLA convention
    cam_to_world: np.ndarray  # (4, 4) camera pose in CARLA's world frame (x fwd, y right, z up axes)
    ego: tuple[float, float, float, float]  # vehicle x, y, z (m) and yaw (deg)
    labels: list[dict] = field(default_factory=list)
    #: (H, W) float32 metres along the camera's forward axis (0 = sky), where the backend has one.
    depth: Optional[np.ndarray] = None
    #: (H, W) int32 instance ids: a label's ``instance`` on its visible pixels, where the backend has one.
    instance: Optional[np.ndarray] = None


class World(abc.ABC):
    """A world backend. Subclasses: EmbeddedWorld (default), CarlaWorld, and the test doubles
    in :mod:`carla_mr.testing`.

    Lifecycle: ``reset()`` loads the world (signs, RSUs, landmarks) and spawns actors and
    returns the first Snapshot; ``tick()`` advances one fixed step (``tick_s`` seconds);
    ``close()`` is idempotent and restores whatever the backend changed. Use as a context
    manager so close() runs on every exit path.

    The declared surface (every backend has all of it, so callers never probe with
    ``getattr``/``hasattr``):

    - ``tick_s`` (s), ``xodr_path`` (the OpenDRIVE file the world runs on, or None when the
      map lives on a server), ``net_offset`` (metres, SUMO's netOffset; (0, 0) without SUMO),
      ``map`` (the ``carla.Map``, or None before ``reset()`` on a server backend);
    - ``signs`` (:class:`SignTable`) and ``rsus`` (:class:`RsuTable`): empty until the world is
      loaded; complete after ``reset()`` on every backend (a server backend learns them from
      the server's map);
    - :meth:`map_info`, :meth:`landmark_summary` and :meth:`summary` for ``world.json`` and
      the run summary;
    - the sign-texture store (:meth:`apply_sign_textures`, :meth:`sign_textures`).

    **Signal ownership.** ``owns_signals`` (default True: standalone use) says whether the
    world may install SIGINT/SIGTERM handlers to close itself. A driver that owns the signals
    (the :class:`~carla_mr.runner.Runner`) sets ``world.owns_signals = False`` *before*
    calling ``reset()``; a world that installs handlers (CarlaWorld) does so only when
    ``owns_signals`` is True, and never before ``reset()``.
    """

    #: Class-level defaults of the immutable parts of the surface (a subclass that does not call
    #: ``World.__init__`` still has them); ``__init__`` sets every attribute per instance.
    xodr_path: Optional[Path] = None
    net_offset: tuple[float, float] = (0.0, 0.0)
    map: Any = None
    owns_signals: bool = True

    def __init__(self, tick_s: float, *, xodr_path: Optional[Path] = None,
                 net_offset: tuple[float, float] = (0.0, 0.0)):
        self.tick_s = float(tick_s)
        self.xodr_path: Optional[Path] = Path(xodr_path) if xodr_path is not None else None
        self.net_offset: tuple[float, float] = (float(net_offset[0]), float(net_offset[1]))
        self.map: Any = None
        self.rsus: RsuTable = RsuTable.empty()
        self.signs: SignTable = SignTable.empty()
        self.owns_signals: bool = True
        #: What each sign shows, by sign id (only signs that were ever given a texture).
        self.texture_store: dict[str, SignTexture] = {}

    @abc.abstractmethod
    def reset(self) -> Snapshot: ...

    @abc.abstractmethod
    def tick(self) -> Snapshot: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- signs ------------------------------------------------------------------------------
    def apply_sign_textures(self, textures: Mapping[str, Any]) -> None:
        """Show ``textures[sign_id]`` on each named sign.

        A value is an RGB(A) uint8 image (H, W, 3|4), a :class:`SignTexture`, or None to restore
        the original face. Unknown sign ids raise ``KeyError`` naming them; nothing is applied
        then. Backends that must push pixels somewhere (the CARLA server) override
        :meth:`_push_textures`; it may replace an entry by what the sign really shows.
        """
        known = set(map(str, self.signs.ids))
        unknown = [k for k in textures if str(k) not in known]
        if unknown:
            raise KeyError(f"unknown sign id(s) {unknown[:5]}; known ids come from world.signs.ids")
        staged: dict[str, SignTexture] = {}
        for sid, tex in textures.items():
            if tex is None:
                staged[str(sid)] = SignTexture()
            elif isinstance(tex, SignTexture):
                staged[str(sid)] = tex
            else:
                img = np.asarray(tex)
                if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
                    raise ValueError(f"sign {sid}: texture must be a uint8 (H, W, 3|4) image, got "
                                     f"{img.dtype} {img.shape}")
                staged[str(sid)] = SignTexture(source="generated", ref=None, image=img)
        self._push_textures(staged)
        self.texture_store.update(staged)

    def _push_textures(self, textures: dict[str, SignTexture]) -> None:
        """Backend hook: make ``textures`` visible in the simulator (no-op for in-process renderers)."""

    def sign_textures(self) -> dict[str, SignTexture]:
        """What each sign shows now (original, or which generated image), for every sign."""
        store = self.texture_store
        return {str(sid): store.get(str(sid), SignTexture()) for sid in self.signs.ids}

    # -- cameras ----------------------------------------------------------------------------
    def attach_camera(self, name: str, spec: Any, vehicle_id: int) -> None:
        """Attach an RGB camera (a :class:`~carla_mr.config.camera.CameraSpec`) to a vehicle."""
        raise NotImplementedError(f"{type(self).__name__} has no cameras")

    def read_camera(self, name: str) -> CameraFrame:
        """The named camera's image for the latest tick, with sign labels."""
        raise NotImplementedError(f"{type(self).__name__} has no cameras")

    # -- metadata ---------------------------------------------------------------------------
    def map_info(self) -> dict[str, Any]:
        """The static map facts of ``world.json``: ``xodr_path`` (str or None), ``net_offset``
        [x, y] metres, ``frame`` (the coordinate convention)."""
        return {"xodr_path": None if self.xodr_path is None else str(self.xodr_path),
                "net_offset": [float(self.net_offset[0]), float(self.net_offset[1])],
                "frame": "CARLA (left-handed: x east, y south, z up, yaw clockwise, deg)"}

    def landmark_summary(self) -> dict[str, Any]:
        """The map's signs for a run summary: ``total`` and ``by_type`` (kind -> count)."""
        return {"total": len(self.signs), "by_type": self.signs.counts_by_kind()}

    def summary(self) -> dict[str, Any]:
        """Backend facts for a run summary (server version, spawn and camera figures, ...); {} here."""
        return {}

    def __enter__(self) -> "World":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
