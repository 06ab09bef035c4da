"""Trajectory data for the twin: load tracks (a run directory, parquet or CSV), resample them to
a fixed rate, cut them into (past, future) windows, and split them by vehicle.

Inputs
------
- A run directory (``RUN_DIR/trajectories.parquet`` written by ``carla-mr run``), a ``.parquet``
  file or a ``.csv`` file with one row per (vehicle, time).
- Columns are recognised by common names, case-insensitively (override any with the
  ``columns`` mapping, the CLI's ``--id-col`` ... flags):

  ===========  ==============================================================
  id           id, track_id, vehicle_id, trackid, vehicleid, vehicle, agent_id, object_id
  time         t, time, timestamp, time_s, ts, datetime
  x / y        x, y (metres) -- or, when absent --
  lon / lat    lon, lng, longitude / lat, latitude (degrees WGS84)
  ===========  ==============================================================

- Time is seconds (numeric; ``time_unit="ms"`` for milliseconds) or ISO-8601 timestamps.
- lon/lat are projected to a local metric frame: equirectangular about the data's mean point,
  x east and y SOUTH in metres (CARLA's left-handed convention, so models trained on simulator
  runs see the same handedness). Good to ~0.1% within a few tens of kilometres.

Every track is resampled at the data's own rate by default (never upsampled unless asked), each
on its own grid starting at its first sample, causally (:func:`resample`): no sample carries
information from after its time. Problems are never silent: rows with NaN/inf are dropped,
duplicate times are dropped, a time going backwards is an error (or, asked, sorted and
counted), single-sample vehicles are counted, tracks are split at gaps longer
than ``max_gap_s`` and at jumps faster than ``MAX_SPEED_MPS`` (teleports), and segments
shorter than ``min_samples`` are skipped -- each counted in :attr:`Tracks.report`. Unknown
columns, bad coordinates or no usable track raise :class:`~carla_mr.errors.InputError` naming
the field and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from carla_mr.errors import InputError

EARTH_RADIUS_M = 6371008.8

ID_NAMES = ("id", "track_id", "vehicle_id", "trackid", "vehicleid", "vehicle", "agent_id", "object_id")
TIME_NAMES = ("t", "time", "timestamp", "time_s", "ts", "datetime")
X_NAMES = ("x",)
Y_NAMES = ("y",)
LON_NAMES = ("lon", "lng", "longitude")
LAT_NAMES = ("lat", "latitude")
ROLES = ("all", "av", "background")
#: Consecutive samples implying a faster move split the track (m/s; 250 km/h).
MAX_SPEED_MPS = 70.0


@dataclass(frozen=True)
class Tracks:
    """Fixed-rate tracks, concatenated: track ``k`` is ``xy[offsets[k]:offsets[k+1]]``.

    ``vehicle[k]`` groups the segments of one vehicle (dense int, unique across sources) so a
    train/test split keeps a vehicle on one side; ``t`` is seconds; ``xy`` metres; ``dt`` the
    sample interval in seconds. ``report`` counts everything dropped, sorted or split.
    """

    dt: float
    vehicle: np.ndarray  # (K,) int64
    offsets: np.ndarray  # (K+1,) int64
    xy: np.ndarray  # (N, 2) float64 metres
    t: np.ndarray  # (N,) float64 seconds
    report: dict[str, int] = field(default_factory=dict)
    raw_vehicle: np.ndarray | None = None  # (K,) the ids given to resample, per track
    keys: np.ndarray | None = None  # (K,) str fingerprint of each track's vehicle (raw id + first position)

    @property
    def hz(self) -> float:
        return 1.0 / self.dt

    @property
    def n_tracks(self) -> int:
        return int(self.vehicle.shape[0])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def track(self, k: int) -> np.ndarray:
        return self.xy[self.offsets[k]:self.offsets[k + 1]]

    def subset(self, mask: np.ndarray) -> "Tracks":
        """The tracks where ``mask`` (K,) is true."""
        mask = np.asarray(mask, bool)
        lens = self.lengths[mask]
        rows = _ranges(self.offsets[:-1][mask], lens)
        offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        return Tracks(self.dt, self.vehicle[mask], offs, self.xy[rows], self.t[rows], dict(self.report),
                      None if self.raw_vehicle is None else self.raw_vehicle[mask],
                      None if self.keys is None else self.keys[mask])


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), vectorised."""
    lens = np.asarray(lens, np.int64)
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    rep = np.repeat(np.asarray(starts, np.int64) - np.concatenate([[0], np.cumsum(lens)[:-1]]), lens)
    return rep + np.arange(total, dtype=np.int64)


def concat(parts: list[Tracks]) -> Tracks:
    """Concatenate tracks of several sources (same ``dt``); vehicle ids stay distinct."""
    if not parts:
        raise InputError("no trajectory data given", field="DATA")
    dts = {round(p.dt, 9) for p in parts}
    if len(dts) != 1:
        raise InputError(f"sources have different sample intervals {sorted(dts)}", field="sample_hz")
    veh, offs, xy, t, rep = [], [0], [], [], {}
    base, row = 0, 0
    for p in parts:
        veh.append(p.vehicle + base)
        base += int(p.vehicle.max()) + 1 if p.n_tracks else 0
        offs.extend((p.offsets[1:] + row).tolist())
        row += int(p.offsets[-1])
        xy.append(p.xy)
        t.append(p.t)
        for k, v in p.report.items():
            rep[k] = rep.get(k, 0) + v
    keys = (np.concatenate([p.keys for p in parts]) if all(p.keys is not None for p in parts) else None)
    return Tracks(parts[0].dt, np.concatenate(veh).astype(np.int64), np.asarray(offs, np.int64),
                  np.concatenate(xy), np.concatenate(t), rep, keys=keys)


# -- reading ----------------------------------------------------------------------------------

def _read_table(path: Path):
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            return pcsv.read_csv(str(path))
        import pyarrow.parquet as pq

        return pq.read_table(str(path))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InputError(f"cannot read it as {path.suffix.lstrip('.') or 'a table'}: {exc}",
                         source=str(path)) from exc


def resolve_source(path: str | os.PathLike) -> Path:
    """A run directory -> its trajectories.parquet; a .csv/.parquet file as is."""
    p = Path(path)
    if p.is_dir():
        f = p / "trajectories.parquet"
        if not f.is_file():
            raise InputError("the directory has no trajectories.parquet; give a run directory written by "
                             "'carla-mr run', a .parquet or a .csv file", source=str(p))
        return f
    if not p.is_file():
        raise InputError("not found; give a run directory, a .parquet or a .csv file", source=str(p))
    if p.suffix.lower() not in (".csv", ".parquet"):
        raise InputError(f"unknown file type '{p.suffix}'; give a .csv or .parquet file", source=str(p))
    return p


def _pick(names: list[str], wanted: tuple[str, ...], override: str | None, role: str, source: str) -> str | None:
    lower = {n.lower(): n for n in names}
    if override:
        if override in names:
            return override
        if override.lower() in lower:
            return lower[override.lower()]
        raise InputError(f"column '{override}' is not in the file (columns: {', '.join(names)})",
                         field=f"--{role}-col", source=source)
    for w in wanted:
        if w in lower:
            return lower[w]
    return None


def _times_seconds(col, unit: str, source: str, name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    typ = col.type
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        ns = pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64()).to_numpy(zero_copy_only=False)
        return ns.astype(np.float64) / 1e9
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        try:
            return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)) * _unit(unit, source)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            ts = pc.cast(col, pa.timestamp("ns", tz="UTC"))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            try:
                ts = pc.cast(col, pa.timestamp("ns"))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError("times must be numbers (seconds) or ISO-8601 timestamps "
                                 "(e.g. 2024-05-01T12:00:00.5Z)", field=name, source=source) from exc
        ns = pc.cast(ts, pa.int64()).to_numpy(zero_copy_only=False)
        return ns.astype(np.float64) / 1e9
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return np.asarray(col.to_numpy(zero_copy_only=False), np.float64) * _unit(unit, source)
    raise InputError(f"times must be numbers or ISO-8601 timestamps, got type {typ}", field=name, source=source)


def _unit(unit: str, source: str) -> float:
    table = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    if unit not in table:
        raise InputError(f"unknown time unit '{unit}'; use one of {sorted(table)}", field="--time-unit",
                         source=source)
    return table[unit]


def _numeric(col, name: str, source: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pc.cast(col, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InputError(f"column must be numeric, got {col.type}", field=name, source=source) from exc
    return np.asarray(arr.to_numpy(zero_copy_only=False), np.float64)  # nulls -> NaN


def project_lonlat(lon: np.ndarray, lat: np.ndarray, origin: tuple[float, float] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Degrees WGS84 -> metres, equirectangular about ``origin`` (lon0, lat0; default the mean).

    Returns (x east, y SOUTH, origin): CARLA's left-handed convention.
    """
    lon = np.asarray(lon, np.float64)
    lat = np.asarray(lat, np.float64)
    if origin is None:
        origin = (float(np.nanmean(lon)), float(np.nanmean(lat)))
    lon0, lat0 = origin
    x = EARTH_RADIUS_M * math.cos(math.radians(lat0)) * np.radians(lon - lon0)
    y = -EARTH_RADIUS_M * np.radians(lat - lat0)
    return x, y, origin


def read_rows(path: str | os.PathLike, *, columns: Mapping[str, str | None] | None = None, time_unit: str = "s",
              role: str = "all") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Read (ids, t seconds, x metres, y metres, info) from a run directory, parquet or CSV."""
    import pyarrow as pa

    src = resolve_source(path)
    source = str(src)
    columns = dict(columns or {})
    bad = set(columns) - {"id", "time", "x", "y", "lon", "lat"}
    if bad:
        raise InputError(f"unknown column role(s) {sorted(bad)}; use id, time, x, y, lon, lat", field="columns")
    if role not in ROLES:
        raise InputError(f"unknown role '{role}'; use one of {ROLES}", field="--role")
    table = _read_table(src)
    names = list(table.column_names)
    hint = ("name it with --id-col/--time-col/--x-col/--y-col (or --lon-col/--lat-col)")
    id_c = _pick(names, ID_NAMES, columns.get("id"), "id", source)
    t_c = _pick(names, TIME_NAMES, columns.get("time"), "time", source)
    x_c = _pick(names, X_NAMES, columns.get("x"), "x", source)
    y_c = _pick(names, Y_NAMES, columns.get("y"), "y", source)
    lon_c = _pick(names, LON_NAMES, columns.get("lon"), "lon", source)
    lat_c = _pick(names, LAT_NAMES, columns.get("lat"), "lat", source)
    if id_c is None:
        raise InputError(f"no vehicle id column among {names}; expected one of {ID_NAMES}; {hint}", field="id",
                         source=source)
    if t_c is None:
        raise InputError(f"no time column among {names}; expected one of {TIME_NAMES}; {hint}", field="time",
                         source=source)
    info: dict = {"source": source, "id_col": id_c, "time_col": t_c}
    if x_c is not None and y_c is not None and not (columns.get("lon") or columns.get("lat")):
        x = _numeric(table.column(x_c), x_c, source)
        y = _numeric(table.column(y_c), y_c, source)
        raw_c1, raw_c2 = x, y
        info.update(x_col=x_c, y_col=y_c, coords="metres")
    elif lon_c is not None and lat_c is not None:
        lon = _numeric(table.column(lon_c), lon_c, source)
        lat = _numeric(table.column(lat_c), lat_c, source)
        fin = np.isfinite(lon) & np.isfinite(lat)
        if np.any(np.abs(lat[fin]) > 90) or np.any(np.abs(lon[fin]) > 180):
            raise InputError("latitudes must lie in [-90, 90] and longitudes in [-180, 180] degrees; are these "
                             "metres? then name them with --x-col/--y-col", field=f"{lon_c}/{lat_c}", source=source)
        x, y, origin = project_lonlat(lon, lat)
        raw_c1, raw_c2 = lon, lat
        info.update(lon_col=lon_c, lat_col=lat_c, coords="lonlat", origin_lonlat=list(origin))
    else:
        raise InputError(f"no position columns among {names}; expected x/y (metres) or lon/lat (degrees); {hint}",
                         field="x/y", source=source)
    t = _times_seconds(table.column(t_c), time_unit, source, t_c)
    if not (pa.types.is_integer(table.column(t_c).type) or pa.types.is_floating(table.column(t_c).type)):
        # absolute timestamps: count seconds from the first one (keeps float64 precision)
        fin = np.isfinite(t)
        origin = float(t[fin].min()) if fin.any() else 0.0
        t = t - origin
        info["time_origin_unix_s"] = origin
    id_col = table.column(id_c)
    null_id = np.asarray(id_col.is_null().to_numpy(zero_copy_only=False), bool)
    if pa.types.is_integer(id_col.type):
        raw_ids = np.asarray(id_col.fill_null(0).to_numpy(zero_copy_only=False))
    else:
        raw_ids = np.asarray(id_col.cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False)).astype(str)
    info["null_id_rows"] = int(null_id.sum())
    if null_id.any():  # rows without a vehicle id belong to no track: dropped and counted
        keep = ~null_id
        raw_ids, t, x, y = raw_ids[keep], t[keep], x[keep], y[keep]
        raw_c1, raw_c2 = raw_c1[keep], raw_c2[keep]
        if "role" in names:
            table = table.filter(pa.array(keep))
    if role != "all":
        if "role" not in names:
            raise InputError("the data has no 'role' column; use --role all", field="--role", source=source)
        r = np.asarray(table.column("role").to_numpy(zero_copy_only=False))
        keep = (r == 1) if role == "av" else (r != 1)
        raw_ids, t, x, y = raw_ids[keep], t[keep], x[keep], y[keep]
        raw_c1, raw_c2 = raw_c1[keep], raw_c2[keep]
    names, ids = np.unique(raw_ids, return_inverse=True)
    ids = ids.astype(np.int64).reshape(-1)
    info["id_names"] = [str(n) for n in names.tolist()]
    t_abs = t + info.get("time_origin_unix_s", 0.0)
    info["vehicle_keys"] = vehicle_keys(ids, t_abs, raw_c1, raw_c2, info["id_names"])
    return ids, t, x, y, info


def vehicle_keys(ids: np.ndarray, t: np.ndarray, c1: np.ndarray, c2: np.ndarray, names: list[str]) -> list[str]:
    """One fingerprint per dense vehicle id: a hash of its raw id, its first (earliest finite)
    time (absolute) and its raw position then, as written in the file. The same vehicle of the
    same data gives the same key whatever the rate, split or subset; another data set's vehicle
    7 does not (even one that starts at the same place)."""
    import hashlib

    ok = np.isfinite(t) & np.isfinite(c1) & np.isfinite(c2)
    order = np.lexsort((t[ok], ids[ok]))
    iv, tt, a, b = ids[ok][order], t[ok][order], c1[ok][order], c2[ok][order]
    first = np.concatenate([[True], iv[1:] != iv[:-1]]) if iv.size else np.zeros(0, bool)
    pos = {int(v): (float(s), float(p), float(q)) for v, s, p, q in zip(iv[first], tt[first], a[first], b[first])}
    out = []
    for k, n in enumerate(names):
        s, p, q = pos.get(k, (float("nan"),) * 3)
        out.append(hashlib.sha1(f"{n}|{s:.3f}|{p:.6g}|{q:.6g}".encode()).hexdigest()[:16])
    return out


# -- resampling ---------------------------------------------------------------------------------

#: Rates the twin serves (Hz): the default model is trained across this range.
MIN_HZ, MAX_HZ = 1.0, 25.0


def native_rate(ids: np.ndarray, t: np.ndarray) -> float:
    """The data's own sample rate (Hz): 1 / the median interval between a vehicle's consecutive
    samples (rows sorted by id then time). Snapped to a whole number of Hz within 2 %."""
    same = ids[1:] == ids[:-1]
    d = np.diff(t)[same]
    d = d[d > 0]
    if d.size == 0:
        raise InputError("no vehicle has two samples at different times: cannot tell the data's rate",
                         field="time")
    hz = 1.0 / float(np.median(d))
    return float(round(hz)) if round(hz) >= 1 and abs(hz - round(hz)) <= 0.02 * hz else hz


def _check_order(ids, t, sort_time: bool, time_col: str, names, report: dict):
    """Rows grouped by vehicle (stable); a time that goes backwards within a vehicle is an error
    naming the column and the vehicle (or, with ``sort_time``, sorted and counted)."""
    order_file = np.argsort(ids, kind="stable")
    ti, tt = ids[order_file], t[order_file]
    back = (ti[1:] == ti[:-1]) & (tt[1:] < tt[:-1])
    report["unsorted_tracks"] = int(np.unique(ti[1:][back]).size)
    if back.any() and not sort_time:
        j = int(np.flatnonzero(back)[0])
        who = names[int(ti[j])] if names is not None else int(ti[j])
        raise InputError(f"time is not increasing for vehicle {who}: {tt[j + 1]:g} s after {tt[j]:g} s "
                         f"({report['unsorted_tracks']} vehicle(s) affected); sort the rows by time per "
                         f"vehicle, or pass --sort-time to sort them (counted as repaired)", field=time_col)


def _causal_grid(ts: np.ndarray, vals: np.ndarray, dt: float, tol: float = 1e-6):
    """One segment's own grid ``ts[0] + k * dt`` (k = 0.. while <= ts[-1]) and its (n, 2) values.

    Causal: a grid point takes the newest raw sample at or before it, carried forward at the
    velocity of the last two raw samples at or before it; it never looks at a later sample.
    On a grid that hits raw samples (native rate, or an integer downsampling) it is exact.
    """
    n = int(math.floor((ts[-1] - ts[0]) / dt + 1e-6)) + 1
    grid = ts[0] + dt * np.arange(n)
    i = np.searchsorted(ts, grid + tol, side="right") - 1
    i = np.clip(i, 0, ts.size - 1)
    j = np.maximum(i - 1, 0)
    span = ts[i] - ts[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        vel = np.where(span[:, None] > 0, (vals[i] - vals[j]) / span[:, None], 0.0)
    return grid, vals[i] + (grid - ts[i])[:, None] * vel


def resample(ids: np.ndarray, t: np.ndarray, x: np.ndarray, y: np.ndarray, *, sample_hz: float | None = None,
             max_gap_s: float | None = None, min_samples: int = 2, allow_upsample: bool = False,
             sort_time: bool = False, time_col: str = "time", names=None,
             max_speed_mps: float = MAX_SPEED_MPS, rate_range: tuple[float, float] = (MIN_HZ, MAX_HZ)) -> Tracks:
    """Rows (vehicles in any order) -> fixed-rate tracks, each on its own causal grid.

    ``sample_hz`` None: the data's own rate (:func:`native_rate`). A rate above the data's own
    is refused unless ``allow_upsample`` (then ``report["upsampled"]`` says so); a rate outside
    ``rate_range`` (1-25 Hz) is refused. Each segment's grid starts at its first sample
    (:func:`_causal_grid`): no sample ever carries information from after its own time.
    A time going backwards within a vehicle raises (``sort_time``: sorted and counted).

    ``max_gap_s`` (default ``max(1 s, 2.5 / sample_hz)``): a track is split where two raw
    samples are further apart in time. It is also split where consecutive raw samples imply
    more than ``max_speed_mps`` (a teleport or an id reused by another vehicle). Segments with
    fewer than ``min_samples`` samples are skipped, vehicles with a single row counted apart.
    """
    ids = np.asarray(ids, np.int64)
    t = np.asarray(t, np.float64)
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    report = {"rows_in": int(ids.shape[0]), "nan_rows": 0, "duplicate_time_rows": 0, "unsorted_tracks": 0,
              "single_sample_tracks": 0, "gap_splits": 0, "jump_splits": 0, "short_segments": 0}
    ids, t, x, y = _clean_rows(ids, t, x, y, sort_time, time_col, names, report)
    native = native_rate(ids, t)
    hz = _sample_rate(native, sample_hz, allow_upsample, rate_range, report)
    dt = 1.0 / hz
    max_gap = float(max_gap_s) if max_gap_s is not None else max(1.0, 2.5 * dt, 2.5 / native)
    starts = _segment_starts(ids, t, x, y, max_gap, max_speed_mps, report)
    ends = np.concatenate([starts[1:], [ids.size]])
    xy = np.stack([x, y], axis=1)
    veh_out, xy_out, t_out, lens = [], [], [], []
    for s, e in zip(starts.tolist(), ends.tolist()):
        if e - s < 2 or (t[e - 1] - t[s]) / dt + 1e-6 < max(min_samples, 1) - 1:
            report["short_segments"] += 1
            continue
        grid, vals = _causal_grid(t[s:e], xy[s:e], dt)
        veh_out.append(ids[s])
        xy_out.append(vals)
        t_out.append(grid)
        lens.append(grid.size)
    report["tracks"] = len(lens)
    report["samples"] = int(sum(lens))
    if not lens:
        raise InputError(f"no track has {min_samples} samples at {hz:g} Hz "
                         f"({report['short_segments']} too-short segments skipped, "
                         f"{report['single_sample_tracks']} single-sample vehicles); give longer tracks, a lower "
                         f"past/future length or a higher --sample-hz", field="DATA")
    offs = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    raw = np.asarray(veh_out, np.int64)
    _, veh_dense = np.unique(raw, return_inverse=True)
    return Tracks(dt, veh_dense.astype(np.int64).reshape(-1), offs, np.concatenate(xy_out), np.concatenate(t_out),
                  report, raw_vehicle=raw)


def _clean_rows(ids, t, x, y, sort_time: bool, time_col: str, names, report: dict):
    """Rows without a finite time or position dropped, sorted by (vehicle, time), repeated
    (vehicle, time) rows dropped; counts into ``report``."""
    ok = np.isfinite(t) & np.isfinite(x) & np.isfinite(y)
    report["nan_rows"] = int((~ok).sum())
    ids, t, x, y = ids[ok], t[ok], x[ok], y[ok]
    if ids.size == 0:
        raise InputError("no rows with finite time and position", field="DATA")
    _check_order(ids, t, sort_time, time_col, names, report)
    order = np.lexsort((t, ids))
    ids, t, x, y = ids[order], t[order], x[order], y[order]
    dup = np.concatenate([[False], (ids[1:] == ids[:-1]) & (t[1:] == t[:-1])])
    report["duplicate_time_rows"] = int(dup.sum())
    ids, t, x, y = ids[~dup], t[~dup], x[~dup], y[~dup]
    _, counts = np.unique(ids, return_counts=True)
    report["single_sample_tracks"] = int((counts == 1).sum())
    return ids, t, x, y


def _sample_rate(native: float, sample_hz, allow_upsample: bool, rate_range: tuple[float, float], report: dict) -> float:
    """The rate to resample at (Hz): ``sample_hz`` or the data's own, checked against
    ``rate_range`` and, unless ``allow_upsample``, against the data's own rate."""
    hz = native if sample_hz is None else float(sample_hz)
    if not (math.isfinite(hz) and rate_range[0] - 1e-9 <= hz <= rate_range[1] + 1e-9):
        what = "the data's own rate" if sample_hz is None else "the requested rate"
        raise InputError(f"{what} {hz:g} Hz is outside {rate_range[0]:g}-{rate_range[1]:g} Hz; "
                         f"give --sample-hz within that range (at most the data's {native:g} Hz)", field="sample_hz")
    upsampled = hz > native * 1.01
    if upsampled and not allow_upsample:
        raise InputError(f"{hz:g} Hz is above the data's own rate ({native:g} Hz): upsampling invents samples; "
                         f"give --sample-hz <= {native:g} or pass --allow-upsample", field="sample_hz")
    report["native_hz"] = native
    report["sample_hz"] = hz
    report["upsampled"] = bool(upsampled)
    return hz


def _segment_starts(ids, t, x, y, max_gap: float, max_speed_mps: float, report: dict) -> np.ndarray:
    """Row indices where a segment starts (rows sorted by vehicle and time): a new vehicle, a
    time gap over ``max_gap`` seconds, or a step implying more than ``max_speed_mps``."""
    new_veh = np.concatenate([[True], ids[1:] != ids[:-1]])
    same = ~new_veh[1:]
    dt_raw = np.diff(t)
    gap = np.concatenate([[False], same & (dt_raw > max_gap)])
    with np.errstate(divide="ignore", invalid="ignore"):
        speed = np.hypot(np.diff(x), np.diff(y)) / dt_raw
    jump = np.concatenate([[False], same & ~gap[1:] & (speed > max_speed_mps)])
    report["gap_splits"] = int(gap.sum())
    report["jump_splits"] = int(jump.sum())
    return np.flatnonzero(new_veh | gap | jump)


def load_tracks(path: str | os.PathLike, *, sample_hz: float | None = None, min_samples: int = 2,
                columns: Mapping[str, str | None] | None = None, time_unit: str = "s", role: str = "all",
                max_gap_s: float | None = None, allow_upsample: bool = False, sort_time: bool = False
                ) -> tuple[Tracks, dict]:
    """Read and resample one source (default: at its own rate); returns (tracks, info)."""
    rows = read_rows(path, columns=columns, time_unit=time_unit, role=role)
    tr = tracks_from_rows(rows, sample_hz=sample_hz, min_samples=min_samples, max_gap_s=max_gap_s,
                          allow_upsample=allow_upsample, sort_time=sort_time)
    return tr, rows[4]


def tracks_from_rows(rows: tuple, *, sample_hz: float | None = None, min_samples: int = 2,
                     max_gap_s: float | None = None, allow_upsample: bool = False, sort_time: bool = False) -> Tracks:
    """:func:`resample` the rows of :func:`read_rows`; ``tracks.keys`` holds one fingerprint per
    segment (its vehicle's raw id and first raw position, :func:`vehicle_keys`), so a model can
    remember which vehicles it was trained on."""
    ids, t, x, y, info = rows
    try:
        tr = resample(ids, t, x, y, sample_hz=sample_hz, max_gap_s=max_gap_s, min_samples=min_samples,
                      allow_upsample=allow_upsample, sort_time=sort_time, time_col=info["time_col"],
                      names=info.get("id_names"))
    except InputError as exc:
        raise InputError(str(exc), source=info["source"]) from None
    tr.report["null_id_rows"] = info.get("null_id_rows", 0)
    keys = np.asarray(info["vehicle_keys"])[tr.raw_vehicle]
    return Tracks(tr.dt, tr.vehicle, tr.offsets, tr.xy, tr.t, tr.report, raw_vehicle=tr.raw_vehicle, keys=keys)


def split_by_key(tracks: Tracks, test_fraction: float, seed: int = 0) -> np.ndarray:
    """(K,) bool: the tracks whose vehicle is held apart for testing. Decided by a hash of the
    vehicle's key and the seed, so a vehicle lands on the same side at every rate."""
    import hashlib

    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test fraction must lie in (0, 1), got {test_fraction}", field="--test-fraction")
    u = np.array([int(hashlib.sha1(f"{seed}:{k}".encode()).hexdigest()[:8], 16) / 2 ** 32 for k in tracks.keys])
    return u < test_fraction


# -- windows and splits ---------------------------------------------------------------------------

def window_starts(tracks: Tracks, past: int, future: int, step: int = 1) -> np.ndarray:
    """Row index of the first past sample of every (past + future) window, every ``step`` samples."""
    if past < 2 or future < 1 or step < 1:
        raise InputError(f"need past >= 2, future >= 1, step >= 1 (got {past}, {future}, {step})", field="past")
    span = past + future
    n_per = np.maximum(0, (tracks.lengths - span) // step + 1)
    local = _ranges(np.zeros_like(n_per), n_per) * step
    return np.repeat(tracks.offsets[:-1], n_per) + local


def windows(tracks: Tracks, past: int, future: int, *, step: int = 1, max_windows: int | None = None,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut tracks into windows: (past (W, P, 2), future (W, F, 2), vehicle (W,)), metres.

    ``max_windows`` keeps a random subset (seeded) when there are more.
    """
    starts = window_starts(tracks, past, future, step)
    if max_windows is not None and starts.size > max_windows:
        rng = np.random.default_rng(seed)
        starts = np.sort(rng.choice(starts, size=int(max_windows), replace=False))
    idx = starts[:, None] + np.arange(past + future)
    seg = tracks.xy[idx]
    track_of_row = np.repeat(np.arange(tracks.n_tracks), tracks.lengths)
    return seg[:, :past], seg[:, past:], tracks.vehicle[track_of_row[starts]]


def split_by_vehicle(tracks: Tracks, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tracks, Tracks]:
    """Split tracks into (train, test) by vehicle: all segments of a vehicle land on one side."""
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test fraction must lie in (0, 1), got {test_fraction}", field="--test-fraction")
    veh = np.unique(tracks.vehicle)
    if veh.size < 2:
        raise InputError("need at least two vehicles to hold some apart for testing", field="DATA")
    rng = np.random.default_rng(seed)
    n_test = min(veh.size - 1, max(1, int(round(test_fraction * veh.size))))
    test_veh = rng.permutation(veh)[:n_test]
    is_test = np.isin(tracks.vehicle, test_veh)
    return tracks.subset(~is_test), tracks.subset(is_test)
