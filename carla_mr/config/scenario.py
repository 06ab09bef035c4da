"""The scenario schema: the world's sections and one section per stage, strict pydantic.

A scenario names the map, the backend, the seed, the tick length, the duration, the vehicles,
the RSUs and signs, and one section per later stage (twin, market, genai, recorder,
perception) that may be left empty. Reading files (``extends``, ``--set``) is
:mod:`carla_mr.config.loader`'s job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from carla_mr.config.dataset import PerceptionConfig, RecorderConfig
from carla_mr.config.genai import GenaiConfig
from carla_mr.config.market import MarketConfig
from carla_mr.config.twin import TwinConfig
from carla_mr.config.vocab import SignKind
from carla_mr.errors import InputError
from carla_mr.schema import StrictModel

#: The ``carla_mr`` package directory (maps and data are looked up beside it).
PACKAGE_DIR = Path(__file__).resolve().parent.parent
#: Directories searched for a map given by bare name (after the scenario's own directory).
MAP_SEARCH_ENV = "CARLA_MR_MAPS"


class VehiclesConfig(StrictModel):
    avs: int = Field(10, ge=0, le=5000, description="Autonomous vehicles (they stream trajectories and bid).")
    background: int = Field(20, ge=0, le=20000, description="Background traffic vehicles.")


class RsuSpec(StrictModel):
    x: float
    y: float
    z: float = 5.0
    range_m: Optional[float] = Field(None, gt=0)


class RsusConfig(StrictModel):
    """RSUs: ``mode: auto`` places them along roads; ``mode: explicit`` uses ``positions``.

    Resources default to the paper's: 20 MHz up/down, 3.6 GHz CPU, 19 GHz GPU.
    """

    mode: Literal["auto", "explicit"] = "auto"
    count: Optional[int] = Field(None, ge=1, le=1000, description="auto: how many (default: by spacing).")
    spacing_m: float = Field(200.0, gt=0, description="auto: distance between RSUs along roads, metres.")
    range_m: float = Field(250.0, gt=0, description="Radio range, metres.")
    height_m: float = Field(5.0, ge=0)
    bandwidth_up_hz: float = Field(20e6, gt=0)
    bandwidth_down_hz: float = Field(20e6, gt=0)
    cpu_hz: float = Field(3.6e9, gt=0)
    gpu_hz: float = Field(19e9, gt=0)
    positions: list[RsuSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _explicit_needs_positions(self):
        if self.mode == "explicit" and not self.positions:
            raise ValueError("mode 'explicit' needs a non-empty 'positions' list of {x, y[, z, range_m]}")
        return self


class SignSpec(StrictModel):
    """A static sign to inject into the map as an OpenDRIVE <signal> (see carla_mr.world.maps)."""

    kind: SignKind
    value: Optional[float] = Field(None, description="km/h for speed_limit.")
    road_id: Optional[int] = Field(None, description="OpenDRIVE road id; default: chosen by the seed.")
    s: Optional[float] = Field(None, ge=0, description="Distance along the road, metres.")


class SignsConfig(StrictModel):
    inject: list[SignSpec] = Field(default_factory=list)
    random_count: int = Field(0, ge=0, le=10000, description="Extra random signs injected on non-junction roads.")


class CarlaConfig(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(2000, ge=1, le=65535)
    tm_port: int = Field(8000, ge=1, le=65535)
    timeout_s: float = Field(20.0, gt=0)
    role_name_prefix: str = "carla_mr"
    cosim_sumo: bool = Field(False, description="Mirror SUMO background traffic into CARLA.")
    sensor_timeout_s: float = Field(2.0, gt=0, description="Wait per tick for a camera image of that frame.")
    depth_camera: bool = Field(True, description="Attach a depth camera beside each RGB camera (label occlusion).")
    rsu_props: bool = Field(True, description="Show RSUs as static props beside the road (else purely logical).")
    cosim_traffic_lights: bool = Field(False, description="With cosim_sumo: SUMO's signal states drive CARLA's "
                                       "traffic lights (frozen while synchronised).")
    allow_version_mismatch: bool = Field(False, description="Run although the carla client and server releases "
                                         "differ (otherwise an error).")
    heartbeat_s: float = Field(5.0, gt=0, description="Wall-clock seconds between this run's heartbeats (its "
                               "marker actor's pose).")
    heartbeat_stale_s: float = Field(60.0, ge=0, description="A session of the same role_name_prefix whose "
                                     "heartbeat is older than this is taken as crashed and swept at start.")


class Scenario(StrictModel):
    name: str = "scenario"
    backend: Literal["embedded", "carla"] = "embedded"
    map: str = Field(..., description="Path to an .xodr file, or a CARLA town name for the carla backend.")
    seed: int = 0
    tick_s: float = Field(0.05, gt=0, le=1.0, description="Fixed step, seconds.")
    duration_s: float = Field(60.0, gt=0, description="Simulated seconds to run.")
    vehicles: VehiclesConfig = Field(default_factory=VehiclesConfig)
    rsus: RsusConfig = Field(default_factory=RsusConfig)
    signs: SignsConfig = Field(default_factory=SignsConfig)
    carla: CarlaConfig = Field(default_factory=CarlaConfig)
    twin: TwinConfig = Field(default_factory=TwinConfig)
    market: MarketConfig = Field(default_factory=MarketConfig)
    genai: GenaiConfig = Field(default_factory=GenaiConfig)
    recorder: RecorderConfig = Field(default_factory=RecorderConfig)
    perception: PerceptionConfig = Field(default_factory=PerceptionConfig)

    #: Where the scenario came from (set by load_scenario; not a YAML key).
    source_path: Optional[str] = Field(None, exclude=True)

    @field_validator("map")
    @classmethod
    def _map_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name an .xodr file or a CARLA town")
        return v

    @property
    def ticks(self) -> int:
        return max(1, int(round(self.duration_s / self.tick_s)))

    def resolved_map_path(self) -> Optional[Path]:
        """The .xodr file for this scenario, or None for a town name on the carla backend."""
        return resolve_map(self.map, self.source_path, required=self.backend == "embedded")


def map_search_dirs(scenario_path: str | os.PathLike | None = None) -> list[Path]:
    dirs: list[Path] = []
    if scenario_path:
        dirs.append(Path(scenario_path).resolve().parent)
    dirs.append(Path.cwd())
    dirs.append(Path.cwd() / "maps")
    for extra in os.environ.get(MAP_SEARCH_ENV, "").split(os.pathsep):
        if extra:
            dirs.append(Path(extra))
    dirs.append(PACKAGE_DIR / "maps")
    repo_maps = PACKAGE_DIR.parent / "maps"
    dirs.append(repo_maps)
    shared = PACKAGE_DIR.parent.parent / "shared" / "maps"
    dirs.append(shared)
    seen, out = set(), []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            out.append(d)
    return out


def resolve_map(name: str, scenario_path: str | os.PathLike | None = None, *, required: bool = True) -> Optional[Path]:
    """Find the .xodr for ``name``: a path (relative to the scenario, then cwd) or a bare name
    looked up as ``<name>.xodr`` in the map search directories (scenario dir, cwd, ./maps,
    $CARLA_MR_MAPS, the package's and the repository's maps/, ../shared/maps)."""
    p = Path(name).expanduser()
    candidates: list[Path] = []
    if p.is_absolute():
        candidates.append(p)
    else:
        for d in map_search_dirs(scenario_path):
            candidates.append(d / p)
            if p.suffix != ".xodr":
                candidates.append(d / f"{name}.xodr")
    for c in candidates:
        if c.is_file():
            return c.resolve()
    if not required:
        return None
    where = ", ".join(str(d) for d in map_search_dirs(scenario_path)[:4])
    raise InputError(f"map '{name}' not found (looked for it as a path and as <name>.xodr in {where}, ...); "
                     f"give a path to an .xodr file, run 'carla-mr maps build', or set {MAP_SEARCH_ENV}",
                     field="map", source=str(scenario_path) if scenario_path else None)
