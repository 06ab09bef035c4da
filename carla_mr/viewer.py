"""``carla-mr view RUN_DIR|SCENARIO``: a bird's-eye viewer in pygame.

It draws the map's lanes, the vehicles (AVs highlighted, the followed one ringed), the RSUs
with their radio ranges, the twin's predicted trajectories (``RUN_DIR/predictions.parquet``),
the latest auction round's winners (``RUN_DIR/market/ledger.sqlite``) and an inset with the
followed AV's camera (the embedded renderer, sign boxes drawn).

Sources: a run directory (``config.yaml`` + ``trajectories.parquet`` written by
``carla-mr run``) is replayed; a scenario file is simulated live (embedded backend).

Keys: space pause, right/n step one frame (paused), +/- or wheel zoom, f follow on/off,
tab next AV, c camera inset on/off, q/esc quit. Headless (``--headless``, or no display)
it renders to ``--out``: PNG frames (``--png-every K``) and/or an MP4 (``--mp4``).
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import click
import numpy as np

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir
from carla_mr.errors import InputError
from carla_mr.world.base import ROLE_AV, RsuTable, Snapshot

ROAD = (62, 62, 66)
GROUND = (36, 48, 34)
MARK = (200, 200, 200)
AV = (255, 140, 30)
BG = (120, 150, 200)
RSU = (80, 220, 140)
PRED = (255, 70, 200)
TEXT = (235, 235, 235)


def _pygame():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from carla_mr.errors import require

    return require("pygame", extra="viewer", feature="the viewer")


# -- sources ---------------------------------------------------------------------------------

@dataclass
class Source:
    """What the viewer shows: map scene, signs, RSUs, a snapshot iterator and overlays."""

    scene: Any
    carla_map: Any
    signs: Any
    rsus: Optional[RsuTable]
    snapshots: Iterator[Snapshot]
    predictions: Optional[dict] = None  # frame -> {id: (F, 2) array}
    winners: list[str] = field(default_factory=list)
    title: str = ""
    world: Any = None  # live world (closed by the viewer)
    textures: dict = field(default_factory=dict)  # replay: sign id -> SignTexture
    tick_s: float = 0.05


def _scenario_map(sc, seed: int):
    from carla_mr.world.maps import landmarks_to_signs, map_from_text, signs_for_scenario

    path = sc.resolved_map_path()
    text = Path(path).read_text(encoding="utf-8")
    new_text, _ = signs_for_scenario(text, sc.signs, seed, name=Path(path).stem)
    cmap = map_from_text(Path(path).stem, new_text)
    return cmap, landmarks_to_signs(cmap)


def _read_predictions(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["frame", "id", "step", "x", "y"]).to_pydict()
    frame = np.asarray(t["frame"], np.int64)
    vid = np.asarray(t["id"], np.int64)
    step = np.asarray(t["step"], np.int64)
    xy = np.stack([np.asarray(t["x"], float), np.asarray(t["y"], float)], 1)
    order = np.lexsort((step, vid, frame))
    out: dict[int, dict[int, np.ndarray]] = {}
    for f, v, p in zip(frame[order], vid[order], xy[order]):
        out.setdefault(int(f), {}).setdefault(int(v), []).append(p)
    return {f: {v: np.asarray(ps) for v, ps in d.items()} for f, d in out.items()}


def read_winners(run_dir: Path) -> list[str]:
    """The latest cleared auction round's winners from RUN_DIR/market/ledger.sqlite (read-only):
    one HUD line "round N: winner <AV> (pays <micro>), GPU windows: <simulators>"."""
    db = run_dir / "market" / "ledger.sqlite"
    if not db.is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
        try:
            row = con.execute("SELECT round_id, outcome FROM outcomes ORDER BY round_id DESC LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    if not row:
        return []
    try:
        outcome = json.loads(row[1])
    except (TypeError, ValueError):
        return [f"round {row[0]}"]
    win = outcome.get("winner_id")
    line = f"round {row[0]}: winner {win if win is not None else 'none'}"
    if outcome.get("payment_micro"):
        line += f" (pays {outcome['payment_micro']} micro)"
    core = outcome.get("core") or {}
    sims = outcome.get("sim_ids") or []
    wins = sorted({int(k) for k in core.get("offline_winner", []) if 0 <= int(k) < len(sims)})
    if wins:
        line += ", GPU windows: " + ", ".join(str(sims[k]) for k in wins)
    return [line]


def winner_vehicle(lines: list[str]) -> Optional[int]:
    """The vehicle id in the winner's name (``av-12`` -> 12), if any."""
    import re

    for line in lines:
        m = re.search(r"winner \D*?(\d+)\b", line)
        if m:
            return int(m.group(1))
    return None


def run_source(run_dir: Path, overrides=()) -> Source:
    from carla_mr.config import load_scenario
    from carla_mr.world.rsu import make_rsus
    from carla_mr.world.scene import build_road_scene

    cfg = run_dir / "config.yaml"
    traj = run_dir / "trajectories.parquet"
    if not cfg.is_file() or not traj.is_file():
        raise InputError(f"{run_dir} is not a run directory (needs config.yaml and trajectories.parquet from "
                         f"'carla-mr run'); pass a run directory or a scenario file", field="SOURCE")
    sc = load_scenario(cfg, list(overrides))
    cmap, signs = _scenario_map(sc, sc.seed)
    import pyarrow.parquet as pq

    t = pq.read_table(traj).to_pydict()
    cols = {k: np.asarray(v) for k, v in t.items()}
    order = np.argsort(cols["frame"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    frames, starts = np.unique(cols["frame"], return_index=True)
    ends = list(starts[1:]) + [len(cols["frame"])]

    def gen():
        for f, a, b in zip(frames, starts, ends):
            sl = slice(a, b)
            yield Snapshot(int(f), float(cols["time"][a]), cols["id"][sl].astype(np.int64),
                           cols["role"][sl].astype(np.uint8), cols["x"][sl].astype(float),
                           cols["y"][sl].astype(float), cols["z"][sl].astype(float), cols["yaw"][sl].astype(float),
                           cols["speed"][sl].astype(float), cols["rsu"][sl].astype(np.int32))

    src = Source(build_road_scene(cmap), cmap, signs, make_rsus(sc.rsus, cmap), gen(),
                 _read_predictions(run_dir / "predictions.parquet"), read_winners(run_dir),
                 title=f"run {run_dir.name}", tick_s=sc.tick_s)
    if sc.recorder.enabled and sc.recorder.swap_share > 0:
        # The recorder's swaps are a pure function of (config, signs, seed): show them again.
        from carla_mr.dataset.textures import swaps_for

        try:
            src.textures = swaps_for(sc.recorder, signs, sc.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. the genai model is not installed here
            log(f"view: showing original sign faces ({exc})")
    return src


def scenario_source(path: Path, overrides=(), seed: Optional[int] = None, frames: Optional[int] = None) -> Source:
    from carla_mr.config import load_scenario
    from carla_mr.world.factory import make_world
    from carla_mr.world.scene import build_road_scene

    sc = load_scenario(path, list(overrides))
    seed = sc.seed if seed is None else seed
    world = make_world(sc, seed=seed)
    if sc.recorder.swap_share > 0:  # show the signs as the recorder would
        from carla_mr.dataset.textures import swaps_for

        world.apply_sign_textures(swaps_for(sc.recorder, world.signs, seed))
    n = frames if frames is not None else sc.ticks

    def gen():
        yield world.reset()
        for _ in range(n - 1):
            yield world.tick()

    return Source(build_road_scene(world.map), world.map, world.signs, world.rsus, gen(), title=f"scenario {sc.name}",
                  world=world, tick_s=sc.tick_s)


# -- drawing ---------------------------------------------------------------------------------

class BirdsEye:
    """Draws one frame onto a pygame Surface. ``zoom`` is pixels per metre."""

    def __init__(self, source: Source, size=(960, 720), zoom: float = 2.0, camera: bool = True,
                 camera_size=(320, 240)):
        self.src = source
        self.size = size
        self.zoom = float(zoom)
        self.follow = True
        self.follow_index = 0
        self.camera = camera
        sc = source.scene
        self._road = sc.road[:, :, :2].copy()
        self._road_c = self._road.mean(axis=1)
        self._marks = sc.marks[:, :, :2].copy()
        self._marks_c = self._marks.mean(axis=1) if len(self._marks) else np.zeros((0, 2))
        x0, y0, x1, y1 = sc.extent
        self.centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        self._rig = None
        self._camera_size = camera_size
        if camera:
            from carla_mr.world.render import EmbeddedCameraRig

            self._rig = EmbeddedCameraRig(source.carla_map, source.signs, scene=source.scene)
        self.last_labels: list[dict] = []
        self._winner = winner_vehicle(source.winners)

    def fit(self) -> None:
        x0, y0, x1, y1 = self.src.scene.extent
        w, h = self.size
        self.zoom = 0.95 * min(w / max(1.0, x1 - x0), h / max(1.0, y1 - y0))

    def to_screen(self, xy: np.ndarray) -> np.ndarray:
        w, h = self.size
        return (xy - self.centre) * self.zoom + np.array([w / 2, h / 2])

    def followed(self, snap: Snapshot) -> Optional[int]:
        avs = np.sort(snap.ids[snap.av_mask]) if len(snap) else np.zeros(0, np.int64)
        if len(avs) == 0:
            return None
        return int(avs[self.follow_index % len(avs)])

    def draw(self, surf, snap: Snapshot, hud: list[str]) -> None:
        pg = _pygame()
        w, h = self.size
        ego = self.followed(snap)
        if self.follow and ego is not None:
            j = int(np.nonzero(snap.ids == ego)[0][0])
            self.centre = np.array([snap.x[j], snap.y[j]])
        surf.fill(GROUND)
        half = np.array([w, h]) / (2 * self.zoom) + 10
        for quads, centres, colour in ((self._road, self._road_c, ROAD), (self._marks, self._marks_c, MARK)):
            if len(quads) == 0:
                continue
            vis = np.all(np.abs(centres - self.centre) <= half, axis=1)
            pts = self.to_screen(quads[vis])
            for p in pts:
                pg.draw.polygon(surf, colour, p.tolist())
        # RSUs and their radio range.
        rs = self.src.rsus
        if rs is not None and len(rs):
            c = self.to_screen(np.stack([rs.x, rs.y], 1))
            for j in range(len(rs)):
                r = int(rs.range_m[j] * self.zoom)
                if r < 20000:
                    pg.draw.circle(surf, RSU, c[j].tolist(), max(1, r), width=1)
                pg.draw.rect(surf, RSU, pg.Rect(int(c[j, 0]) - 4, int(c[j, 1]) - 4, 9, 9))
        # Predicted trajectories (latest prediction made at or before this frame).
        preds = self.src.predictions
        if preds:
            keys = [f for f in preds if f <= snap.frame]
            if keys:
                latest = preds[max(keys)]
                pos = {int(v): (x, y) for v, x, y in zip(snap.ids, snap.x, snap.y)}
                for vid, path in latest.items():
                    pts = path if vid not in pos else np.vstack([pos[vid], path])
                    if len(pts) >= 2:
                        pg.draw.lines(surf, PRED, False, self.to_screen(pts).tolist(), 2)
        # Vehicles.
        if len(snap):
            t = np.deg2rad(snap.yaw)
            fwd = np.stack([np.cos(t), np.sin(t)], 1)
            right = np.stack([-np.sin(t), np.cos(t)], 1)
            ctr = np.stack([snap.x, snap.y], 1)
            L, W = 2.3, 0.95
            corners = np.stack([ctr + fwd * L - right * W, ctr + fwd * L + right * W, ctr - fwd * L + right * W,
                                ctr - fwd * L - right * W], 1)
            scr = self.to_screen(corners)
            for k in range(len(snap)):
                av = snap.role[k] == ROLE_AV
                pg.draw.polygon(surf, AV if av else BG, scr[k].tolist())
                if int(snap.ids[k]) == self._winner:
                    c = self.to_screen(ctr[k:k + 1])[0]
                    pg.draw.circle(surf, (255, 215, 0), c.tolist(), max(9, int(6 * self.zoom)), width=3)
                if int(snap.ids[k]) == ego:
                    c = self.to_screen(ctr[k:k + 1])[0]
                    pg.draw.circle(surf, (255, 255, 255), c.tolist(), max(6, int(4 * self.zoom)), width=2)
        # Camera inset.
        if self.camera and self._rig is not None and ego is not None:
            from carla_mr.config.camera import CameraSpec

            cw, ch = self._camera_size
            self._rig.attach("viewer", CameraSpec(width=cw, height=ch), ego)
            textures = self.src.world.sign_textures() if self.src.world is not None else self.src.textures
            fr = self._rig.render("viewer", snap, textures)
            self.last_labels = fr.labels
            img = pg.surfarray.make_surface(np.ascontiguousarray(fr.image.transpose(1, 0, 2)))
            for lab in fr.labels:
                x0, y0, x1, y1 = lab["box"]
                col = (255, 60, 60) if lab["source"] == "generated" else (60, 255, 60)
                pg.draw.rect(img, col, pg.Rect(x0, y0, max(1, x1 - x0), max(1, y1 - y0)), 1)
            surf.blit(img, (w - cw - 8, h - ch - 8))
            pg.draw.rect(surf, (255, 255, 255), pg.Rect(w - cw - 9, h - ch - 9, cw + 2, ch + 2), 1)
        # HUD.
        font = pg.font.Font(None, 20)
        lines = [self.src.title, f"frame {snap.frame}  t={snap.time:.2f}s  vehicles {len(snap)}  "
                 f"AVs {int(snap.av_mask.sum())}  zoom {self.zoom:.2f} px/m"] + list(self.src.winners) + hud
        for i, line in enumerate(lines):
            surf.blit(font.render(line, True, TEXT), (8, 8 + 18 * i))


def run_viewer(source: Source, *, out: Optional[Path], headless: bool, size=(960, 720), zoom: Optional[float] = None,
               png_every: int = 0, mp4: Optional[str] = None, fps: float = 20.0, camera: bool = True,
               max_frames: Optional[int] = None) -> dict[str, Any]:
    """Show (or, headless, render to files) the source's frames. Returns counts and paths."""
    pg = _pygame()
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    pg.display.init()  # display + fonts only: no audio device is opened
    pg.font.init()
    view = BirdsEye(source, size=size, zoom=zoom or 2.0, camera=camera)
    writer = None
    pngs: list[str] = []
    mp4_path = None
    frames = 0
    screen = None
    paused = False
    finished = False  # a video cut short by an error is removed, never renamed to its final name
    try:
        if not headless:
            screen = pg.display.set_mode(size)
            pg.display.set_caption("carla-mr view")
        surf = pg.Surface(size)
        clock = pg.time.Clock()
        snap = None
        quit_ = False
        it = iter(source.snapshots)
        while not quit_:
            step = False
            if screen is not None:
                for ev in pg.event.get():
                    if ev.type == pg.QUIT:
                        quit_ = True
                    elif ev.type == pg.KEYDOWN:
                        k = ev.key
                        if k in (pg.K_q, pg.K_ESCAPE):
                            quit_ = True
                        elif k == pg.K_SPACE:
                            paused = not paused
                        elif k in (pg.K_RIGHT, pg.K_n):
                            step = True
                        elif k in (pg.K_PLUS, pg.K_EQUALS, pg.K_KP_PLUS):
                            view.zoom *= 1.25
                        elif k in (pg.K_MINUS, pg.K_KP_MINUS):
                            view.zoom /= 1.25
                        elif k == pg.K_f:
                            view.follow = not view.follow
                        elif k == pg.K_TAB:
                            view.follow_index += 1
                        elif k == pg.K_c:
                            view.camera = not view.camera
                    elif ev.type == pg.MOUSEWHEEL:
                        view.zoom *= 1.25 ** ev.y
            if snap is None or not paused or step:
                try:
                    snap = next(it)
                except StopIteration:
                    if headless:
                        break
                    paused = True
                    if snap is None:
                        break
                else:
                    frames += 1
                    view.draw(surf, snap, ["paused" if paused else ""])
                    if headless and out is not None:
                        if png_every and (frames - 1) % png_every == 0:
                            p = out / "frames" / f"{snap.frame:06d}.png"
                            _save_png(pg, surf, p)
                            pngs.append(str(p))
                        if mp4:
                            writer, mp4_path = _mp4_frame(pg, surf, writer, out, mp4, fps, size)
            if screen is not None:
                screen.blit(surf, (0, 0))
                pg.display.flip()
                clock.tick(fps)
            if max_frames is not None and frames >= max_frames and headless:
                break
        finished = True
    finally:
        if writer is not None:
            writer.release()
            if mp4_path is not None:
                if finished:
                    os.replace(mp4_path[0], mp4_path[1])
                else:
                    Path(mp4_path[0]).unlink(missing_ok=True)
        if source.world is not None:
            source.world.close()
        pg.quit()
    return {"frames": frames, "pngs": len(pngs), "png_dir": str(out / "frames") if pngs else None,
            "mp4": str(mp4_path[1]) if mp4_path else None, "zoom": view.zoom, "follow": view.follow,
            "paused": paused}


def _save_png(pg, surf, path: Path) -> None:
    import cv2

    from carla_mr.io import atomic_write_bytes

    rgb = pg.surfarray.array3d(surf).transpose(1, 0, 2)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    atomic_write_bytes(path, buf.tobytes())


def _mp4_frame(pg, surf, writer, out: Path, name: str, fps: float, size):
    import cv2

    target = out / name
    tmp = out / f".{target.stem}.partial{target.suffix}"
    if writer is None:
        out.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), tuple(size))
        if not writer.isOpened():
            raise InputError(f"OpenCV cannot write MP4 to {target} (no mp4v encoder)", field="--mp4")
    rgb = pg.surfarray.array3d(surf).transpose(1, 0, 2)
    writer.write(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    return writer, (tmp, target)


# -- the verb --------------------------------------------------------------------------------

def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"'{text}' is not WIDTHxHEIGHT (e.g. 960x720)", field="--size") from None
    if not (64 <= w <= 8192 and 64 <= h <= 8192):
        raise InputError("width and height must be within 64..8192", field="--size")
    return w, h


@click.command(name="view")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a scenario key.")
@click.option("--frames", type=click.IntRange(min=1), default=None, help="Show at most this many frames.")
@click.option("--headless", is_flag=True, default=False,
              help="Render to files in --out instead of a window (automatic when there is no display).")
@click.option("--png-every", type=click.IntRange(min=0), default=None,
              help="Headless: save every k-th frame as PNG (default 1 unless --mp4 is given; 0 = none).")
@click.option("--mp4", default=None, help="Headless: also write an MP4 with this file name in --out (e.g. view.mp4).")
@click.option("--size", default="960x720", help="Window / frame size WIDTHxHEIGHT.")
@click.option("--zoom", type=click.FloatRange(min=0.01), default=None, help="Pixels per metre (default 2).")
@click.option("--fps", type=click.FloatRange(min=1), default=20.0, help="Frames per second (window and MP4).")
@click.option("--no-camera", is_flag=True, default=False, help="No ego camera inset.")
@common_options
@guarded
def view_cmd(source, overrides, frames, headless, png_every, mp4, size, zoom, fps, no_camera, out, seed, as_json):
    """Bird's-eye viewer of a run directory (replay) or a scenario (live)."""
    size_t = _parse_size(size)
    if not headless and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") \
            and os.environ.get("SDL_VIDEODRIVER") in (None, "", "dummy"):
        headless = True
        log("no display: rendering headless into --out")
    if source.is_dir():
        src = run_source(source, overrides)
    else:
        src = scenario_source(source, overrides, seed, frames)
    run_dir = make_run_dir(out, "view") if headless else (Path(out) if out else None)
    if png_every is None:
        png_every = 0 if mp4 else 1
    res = run_viewer(src, out=run_dir, headless=headless, size=size_t, zoom=zoom, png_every=png_every, mp4=mp4,
                     fps=fps, camera=not no_camera, max_frames=frames)
    res["dir"] = str(run_dir) if run_dir else None
    emit(res, as_json=as_json, title="view")
