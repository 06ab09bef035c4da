"""``carla-mr view RUN_DIR|SCENARIO``: a bird's-eye viewer in pygame.

It draws the map's lanes, the vehicles (AVs highlighted, the followed one ringed), the RSUs
with their radio ranges, the twin's predicted trajectories (``RUN_DIR/predictions.parquet``),
the market round in effect (typed :class:`~carla_mr.stages.MarketRound` records from
``RUN_DIR/market/rounds.jsonl``: the winning vehicle is ringed in gold) and an inset with the
followed AV's camera (the embedded renderer, sign boxes drawn).

Sources: a run directory (``config.yaml`` + ``trajectories.parquet`` written by
``carla-mr run``) is replayed frame by frame; a scenario file is simulated live: the
:class:`~carla_mr.runner.Runner` ticks the world and :class:`ViewerStage` draws every tick.

Keys: space pause, right/n step one frame (paused), +/- or wheel zoom, f follow on/off,
tab next AV, c camera inset on/off, q/esc quit. Headless (``--headless``, or no display)
it renders to ``--out``: PNG frames (``--png-every K``) and/or an MP4 (``--mp4``).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import click
import numpy as np

from carla_mr.cli_common import common_options, emit, guarded, log, make_run_dir
from carla_mr.errors import InputError
from carla_mr.reporting import read_jsonl
from carla_mr.stages import BaseStage, MarketRound
from carla_mr.world.base import ROLE_AV, RsuTable, Snapshot

ROAD = (62, 62, 66)
GROUND = (36, 48, 34)
MARK = (200, 200, 200)
AV = (255, 140, 30)
BG = (120, 150, 200)
RSU = (80, 220, 140)
PRED = (255, 70, 200)
TEXT = (235, 235, 235)
WINNER = (255, 215, 0)


def _pygame():
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    from carla_mr.errors import require

    return require("pygame", extra="viewer", feature="the viewer")


# -- what is shown ---------------------------------------------------------------------------

class Predictions:
    """The twin's predictions by the frame they were made: ``latest(frame)`` is the newest set
    made at or before ``frame``, {vehicle id: (F, 2) x, y metres} (a binary search, so long
    replays stay fast)."""

    def __init__(self, by_frame: dict[int, dict[int, np.ndarray]]):
        self._frames = sorted(by_frame)
        self._by_frame = by_frame

    def __bool__(self) -> bool:
        return bool(self._frames)

    def latest(self, frame: int) -> dict[int, np.ndarray]:
        k = bisect.bisect_right(self._frames, int(frame))
        return self._by_frame[self._frames[k - 1]] if k else {}

    @staticmethod
    def read(path: Path) -> Optional["Predictions"]:
        """From ``predictions.parquet`` (frame, id, step, x, y); None when the file is absent."""
        if not path.is_file():
            return None
        import pyarrow.parquet as pq

        t = pq.read_table(path, columns=["frame", "id", "step", "x", "y"]).to_pydict()
        frame = np.asarray(t["frame"], np.int64)
        vid = np.asarray(t["id"], np.int64)
        step = np.asarray(t["step"], np.int64)
        xy = np.stack([np.asarray(t["x"], float), np.asarray(t["y"], float)], 1)
        order = np.lexsort((step, vid, frame))
        out: dict[int, dict[int, list]] = {}
        for f, v, p in zip(frame[order], vid[order], xy[order]):
            out.setdefault(int(f), {}).setdefault(int(v), []).append(p)
        return Predictions({f: {v: np.asarray(ps) for v, ps in d.items()} for f, d in out.items()})


class Rounds:
    """The market rounds of a run in frame order; ``at(frame)`` is the round in effect (the
    latest cleared at or before ``frame``), or None."""

    def __init__(self, rounds: list[MarketRound]):
        self.rounds = sorted(rounds, key=lambda r: (r.frame, r.round_id))
        self._frames = [r.frame for r in self.rounds]

    def at(self, frame: int) -> Optional[MarketRound]:
        k = bisect.bisect_right(self._frames, int(frame))
        return self.rounds[k - 1] if k else None

    @staticmethod
    def read(run_dir: Path) -> "Rounds":
        """From ``RUN_DIR/market/rounds.jsonl`` (empty without a market)."""
        return Rounds([MarketRound.from_record(r) for r in read_jsonl(run_dir / "market" / "rounds.jsonl")])


def round_line(rnd: Optional[MarketRound]) -> str:
    """The HUD line of a round: "round N: winner vehicle V (pays P micro), GPU windows: sims"."""
    if rnd is None:
        return ""
    who = f"vehicle {rnd.winner_vehicle_id}" if rnd.winner_vehicle_id is not None else "none"
    line = f"round {rnd.round_id}: winner {who}"
    if rnd.payment_micro:
        line += f" (pays {rnd.payment_micro} micro)"
    sims = sorted({rnd.sim_id[w] for w in range(len(rnd)) if rnd.sim_index[w] > 0})
    if sims:
        line += ", GPU windows: " + ", ".join(sims)
    return line


@dataclass
class Source:
    """A replay: map scene, signs, RSUs, a snapshot iterator and the run's overlays."""

    scene: Any
    carla_map: Any
    signs: Any
    rsus: Optional[RsuTable]
    snapshots: Iterator[Snapshot]
    predictions: Optional[Predictions] = None
    rounds: Rounds = field(default_factory=lambda: Rounds([]))
    title: str = ""
    textures: dict = field(default_factory=dict)  # sign id -> SignTexture
    tick_s: float = 0.05


def _scenario_map(sc, seed: int):
    from carla_mr.world.maps import landmarks_to_signs, map_from_text, signs_for_scenario

    path = sc.resolved_map_path()
    text = Path(path).read_text(encoding="utf-8")
    new_text, _ = signs_for_scenario(text, sc.signs, seed, name=Path(path).stem)
    cmap = map_from_text(Path(path).stem, new_text)
    return cmap, landmarks_to_signs(cmap)


def _read_snapshots(traj: Path) -> Iterator[Snapshot]:
    import pyarrow.parquet as pq

    t = pq.read_table(traj).to_pydict()
    cols = {k: np.asarray(v) for k, v in t.items()}
    order = np.argsort(cols["frame"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    frames, starts = np.unique(cols["frame"], return_index=True)
    ends = list(starts[1:]) + [len(cols["frame"])]
    for f, a, b in zip(frames, starts, ends):
        sl = slice(a, b)
        yield Snapshot(int(f), float(cols["time"][a]), cols["id"][sl].astype(np.int64),
                       cols["role"][sl].astype(np.uint8), cols["x"][sl].astype(float),
                       cols["y"][sl].astype(float), cols["z"][sl].astype(float), cols["yaw"][sl].astype(float),
                       cols["speed"][sl].astype(float), cols["rsu"][sl].astype(np.int32))


def run_source(run_dir: Path, overrides=()) -> Source:
    """A replay of a run directory written by ``carla-mr run``."""
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
    src = Source(build_road_scene(cmap), cmap, signs, make_rsus(sc.rsus, cmap), _read_snapshots(traj),
                 Predictions.read(run_dir / "predictions.parquet"), Rounds.read(run_dir),
                 title=f"run {run_dir.name}", tick_s=sc.tick_s)
    if sc.recorder.enabled and sc.recorder.swap_share > 0:
        # The recorder's swaps are a pure function of (config, signs, seed): show them again.
        from carla_mr.dataset.textures import swaps_for

        try:
            src.textures = swaps_for(sc.recorder, signs, sc.seed)
        except Exception as exc:  # noqa: BLE001 - e.g. the genai model is not installed here
            log(f"view: showing original sign faces ({exc})")
    return src


# -- drawing ---------------------------------------------------------------------------------

class BirdsEye:
    """Draws one frame onto a pygame Surface. ``zoom`` is pixels per metre."""

    def __init__(self, scene, carla_map, signs, rsus: Optional[RsuTable], *, title: str = "", size=(960, 720),
                 zoom: float = 2.0, camera: bool = True, camera_size=(320, 240)):
        self.scene = scene
        self.rsus = rsus
        self.title = title
        self.size = size
        self.zoom = float(zoom)
        self.follow = True
        self.follow_index = 0
        self.camera = camera
        self._road = scene.road[:, :, :2].copy()
        self._road_c = self._road.mean(axis=1)
        self._marks = scene.marks[:, :, :2].copy()
        self._marks_c = self._marks.mean(axis=1) if len(self._marks) else np.zeros((0, 2))
        x0, y0, x1, y1 = scene.extent
        self.centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        self._rig = None
        self._camera_size = camera_size
        if camera:
            from carla_mr.world.render import EmbeddedCameraRig

            self._rig = EmbeddedCameraRig(carla_map, signs, scene=scene)
        self.last_labels: list[dict] = []
        self._font = None

    def fit(self) -> None:
        x0, y0, x1, y1 = self.scene.extent
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

    def draw(self, surf, snap: Snapshot, *, hud: list[str], rnd: Optional[MarketRound] = None,
             predictions: Optional[dict[int, np.ndarray]] = None, textures: Optional[dict] = None) -> None:
        """One frame: roads, RSUs, predictions (made at or before this frame), vehicles (the
        round's winning vehicle ringed gold, the followed AV white), the camera inset, the HUD."""
        pg = _pygame()
        ego = self.followed(snap)
        if self.follow and ego is not None:
            j = int(np.nonzero(snap.ids == ego)[0][0])
            self.centre = np.array([snap.x[j], snap.y[j]])
        surf.fill(GROUND)
        self._draw_roads(pg, surf)
        self._draw_rsus(pg, surf)
        if predictions:
            self._draw_predictions(pg, surf, snap, predictions)
        winner = rnd.winner_vehicle_id if rnd is not None else None
        self._draw_vehicles(pg, surf, snap, ego, winner)
        if self.camera and self._rig is not None and ego is not None:
            self._draw_camera(pg, surf, snap, ego, textures or {})
        if self._font is None:
            self._font = pg.font.Font(None, 20)
        lines = [self.title, f"frame {snap.frame}  t={snap.time:.2f}s  vehicles {len(snap)}  "
                 f"AVs {int(snap.av_mask.sum())}  zoom {self.zoom:.2f} px/m", round_line(rnd)] + hud
        for i, line in enumerate(x for x in lines if x):
            surf.blit(self._font.render(line, True, TEXT), (8, 8 + 18 * i))

    def _draw_roads(self, pg, surf) -> None:
        w, h = self.size
        half = np.array([w, h]) / (2 * self.zoom) + 10
        for quads, centres, colour in ((self._road, self._road_c, ROAD), (self._marks, self._marks_c, MARK)):
            if len(quads) == 0:
                continue
            vis = np.all(np.abs(centres - self.centre) <= half, axis=1)
            for p in self.to_screen(quads[vis]):
                pg.draw.polygon(surf, colour, p.tolist())

    def _draw_rsus(self, pg, surf) -> None:
        rs = self.rsus
        if rs is None or not len(rs):
            return
        c = self.to_screen(np.stack([rs.x, rs.y], 1))
        for j in range(len(rs)):
            r = int(rs.range_m[j] * self.zoom)
            if r < 20000:
                pg.draw.circle(surf, RSU, c[j].tolist(), max(1, r), width=1)
            pg.draw.rect(surf, RSU, pg.Rect(int(c[j, 0]) - 4, int(c[j, 1]) - 4, 9, 9))

    def _draw_predictions(self, pg, surf, snap: Snapshot, predictions: dict[int, np.ndarray]) -> None:
        pos = {int(v): (x, y) for v, x, y in zip(snap.ids, snap.x, snap.y)}
        for vid, path in predictions.items():
            pts = path if vid not in pos else np.vstack([pos[vid], path])
            if len(pts) >= 2:
                pg.draw.lines(surf, PRED, False, self.to_screen(pts).tolist(), 2)

    def _draw_vehicles(self, pg, surf, snap: Snapshot, ego: Optional[int], winner: Optional[int]) -> None:
        if not len(snap):
            return
        t = np.deg2rad(snap.yaw)
        fwd = np.stack([np.cos(t), np.sin(t)], 1)
        right = np.stack([-np.sin(t), np.cos(t)], 1)
        ctr = np.stack([snap.x, snap.y], 1)
        L, W = 2.3, 0.95
        corners = np.stack([ctr + fwd * L - right * W, ctr + fwd * L + right * W, ctr - fwd * L + right * W,
                            ctr - fwd * L - right * W], 1)
        scr = self.to_screen(corners)
        for k in range(len(snap)):
            pg.draw.polygon(surf, AV if snap.role[k] == ROLE_AV else BG, scr[k].tolist())
            vid = int(snap.ids[k])
            if vid == winner:
                c = self.to_screen(ctr[k:k + 1])[0]
                pg.draw.circle(surf, WINNER, c.tolist(), max(9, int(6 * self.zoom)), width=3)
            if vid == ego:
                c = self.to_screen(ctr[k:k + 1])[0]
                pg.draw.circle(surf, (255, 255, 255), c.tolist(), max(6, int(4 * self.zoom)), width=2)

    def _draw_camera(self, pg, surf, snap: Snapshot, ego: int, textures: dict) -> None:
        from carla_mr.config.camera import CameraSpec

        w, h = self.size
        cw, ch = self._camera_size
        self._rig.attach("viewer", CameraSpec(width=cw, height=ch), ego)
        fr = self._rig.render("viewer", snap, textures)
        self.last_labels = fr.labels
        img = pg.surfarray.make_surface(np.ascontiguousarray(fr.image.transpose(1, 0, 2)))
        for lab in fr.labels:
            x0, y0, x1, y1 = lab["box"]
            col = (255, 60, 60) if lab["source"] == "generated" else (60, 255, 60)
            pg.draw.rect(img, col, pg.Rect(x0, y0, max(1, x1 - x0), max(1, y1 - y0)), 1)
        surf.blit(img, (w - cw - 8, h - ch - 8))
        pg.draw.rect(surf, (255, 255, 255), pg.Rect(w - cw - 9, h - ch - 9, cw + 2, ch + 2), 1)


# -- the window (or, headless, the files) ----------------------------------------------------

class ViewerWindow:
    """A pygame window (or a headless surface writing PNG/MP4 files) that shows frames.

    ``show(draw)`` handles the keys (space pause, right/n step, +/- and wheel zoom, f follow,
    tab next AV, c camera, q/esc quit), calls ``draw(surface, hud)`` to paint a new frame and
    returns whether to go on. While paused in a window it keeps handling keys until a step, an
    unpause or a quit. ``close()`` (idempotent) finishes the MP4 (a video cut short by an error
    is removed, never renamed to its final name) and quits pygame.
    """

    def __init__(self, view: BirdsEye, *, out: Optional[Path], headless: bool, png_every: int = 0,
                 mp4: Optional[str] = None, fps: float = 20.0, max_frames: Optional[int] = None):
        self.pg = pg = _pygame()
        if headless:
            os.environ["SDL_VIDEODRIVER"] = "dummy"
        pg.display.init()  # display + fonts only: no audio device is opened
        pg.font.init()
        self.view = view
        self.out, self.headless, self.png_every, self.mp4, self.fps = out, headless, png_every, mp4, fps
        self.max_frames = max_frames
        self.frames = 0
        self.pngs: list[str] = []
        self.paused = False
        self.quit = False
        self.finished = False
        self._writer = None
        self._mp4_path = None
        self._closed = False
        self.screen = None
        if not headless:
            self.screen = pg.display.set_mode(view.size)
            pg.display.set_caption("carla-mr view")
        self.surf = pg.Surface(view.size)
        self.clock = pg.time.Clock()

    def _events(self) -> bool:
        """Handle pending input; True when the user asked for one step."""
        pg, view, step = self.pg, self.view, False
        for ev in pg.event.get():
            if ev.type == pg.QUIT:
                self.quit = True
            elif ev.type == pg.KEYDOWN:
                k = ev.key
                if k in (pg.K_q, pg.K_ESCAPE):
                    self.quit = True
                elif k == pg.K_SPACE:
                    self.paused = not self.paused
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
        return step

    def _present(self) -> None:
        if self.screen is not None:
            self.screen.blit(self.surf, (0, 0))
            self.pg.display.flip()
            self.clock.tick(self.fps)

    def show(self, draw, frame: int) -> bool:
        """Draw one new frame (``draw(surface, hud)``) unless quit; False once the viewer is done."""
        if self.screen is not None:
            self._events()
        if self.quit and self.frames:  # a quit before the first frame still shows that frame
            return False
        self.frames += 1
        draw(self.surf, ["paused" if self.paused else ""])
        self._save(frame)
        self._present()
        while self.screen is not None and self.paused and not self.quit:
            if self._events():
                break
            self._present()
        if self.max_frames is not None and self.frames >= self.max_frames and self.headless:
            return False
        return not self.quit

    def wait(self) -> None:
        """After the last frame, a window stays open (paused) until the user quits."""
        self.paused = True
        while self.screen is not None and not self.quit:
            self._events()
            self._present()

    def _save(self, frame: int) -> None:
        if not self.headless or self.out is None:
            return
        if self.png_every and (self.frames - 1) % self.png_every == 0:
            p = self.out / "frames" / f"{frame:06d}.png"
            _save_png(self.pg, self.surf, p)
            self.pngs.append(str(p))
        if self.mp4:
            self._writer, self._mp4_path = _mp4_frame(self.pg, self.surf, self._writer, self.out, self.mp4,
                                                      self.fps, self.view.size)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.release()
            if self._mp4_path is not None:
                if self.finished:
                    os.replace(self._mp4_path[0], self._mp4_path[1])
                else:
                    Path(self._mp4_path[0]).unlink(missing_ok=True)
        self.pg.quit()

    def result(self) -> dict[str, Any]:
        return {"frames": self.frames, "pngs": len(self.pngs),
                "png_dir": str(self.out / "frames") if self.pngs else None,
                "mp4": str(self._mp4_path[1]) if self._mp4_path and self.finished else None,
                "zoom": self.view.zoom, "follow": self.view.follow, "paused": self.paused}


def run_viewer(source: Source, *, out: Optional[Path], headless: bool, size=(960, 720), zoom: Optional[float] = None,
               png_every: int = 0, mp4: Optional[str] = None, fps: float = 20.0, camera: bool = True,
               max_frames: Optional[int] = None) -> dict[str, Any]:
    """Replay the source's frames in a window (or, headless, to files). Returns counts and paths."""
    view = BirdsEye(source.scene, source.carla_map, source.signs, source.rsus, title=source.title, size=size,
                    zoom=zoom or 2.0, camera=camera)
    win = ViewerWindow(view, out=out, headless=headless, png_every=png_every, mp4=mp4, fps=fps,
                       max_frames=max_frames)
    try:
        for snap in source.snapshots:
            preds = source.predictions.latest(snap.frame) if source.predictions else None

            def draw(surf, hud, snap=snap, preds=preds):
                view.draw(surf, snap, hud=hud, rnd=source.rounds.at(snap.frame), predictions=preds,
                          textures=source.textures)

            if not win.show(draw, snap.frame):
                break
        else:
            if win.frames and not headless:
                win.wait()
        win.finished = True
    finally:
        win.close()
    return win.result()


class ViewerStage(BaseStage):
    """The live viewer as a stage: the Runner ticks the world, this draws every tick (the market
    round in effect from ``ctx.board.market_round`` when a market stage runs before it). Closing
    the window asks the runner to stop."""

    name = "viewer"

    def __init__(self, *, out: Optional[Path], headless: bool, size=(960, 720), zoom: Optional[float] = None,
                 png_every: int = 0, mp4: Optional[str] = None, fps: float = 20.0, camera: bool = True,
                 max_frames: Optional[int] = None):
        self.options = dict(out=out, headless=headless, png_every=png_every, mp4=mp4, fps=fps, max_frames=max_frames)
        self.size, self.zoom, self.camera = size, zoom, camera
        self.window: Optional[ViewerWindow] = None
        self._ctx = None
        self._result: dict[str, Any] = {}

    def start(self, ctx) -> None:
        from carla_mr.world.maps import map_from_text
        from carla_mr.world.scene import build_road_scene

        world = ctx.world
        if world.xodr_path is None:
            raise InputError("the live viewer needs the world's OpenDRIVE map file (embedded backend); replay a "
                             "run directory instead", field="SOURCE")
        cmap = map_from_text(Path(world.xodr_path).stem, Path(world.xodr_path).read_text(encoding="utf-8"))
        view = BirdsEye(build_road_scene(cmap), cmap, world.signs, world.rsus, title=f"scenario {ctx.scenario.name}",
                        size=self.size, zoom=self.zoom or 2.0, camera=self.camera)
        self.window = ViewerWindow(view, **self.options)
        self._ctx = ctx

    def on_tick(self, snapshot: Snapshot, ctx) -> None:
        view = self.window.view

        def draw(surf, hud):
            view.draw(surf, snapshot, hud=hud, rnd=ctx.board.market_round, textures=ctx.world.sign_textures())

        if not self.window.show(draw, snapshot.frame):
            ctx.request_stop("viewer closed")

    def close(self) -> None:
        if self.window is not None:
            if self._ctx is not None and self._ctx.completed:
                self.window.wait()  # the run ended: a window stays open until the user quits
            self.window.finished = True
            self.window.close()
            self._result = self.window.result()

    def summary(self) -> dict[str, Any]:
        return dict(self._result)


def view_scenario(path: Path, overrides=(), *, seed: Optional[int] = None, frames: Optional[int] = None,
                  **viewer_kw: Any) -> dict[str, Any]:
    """Simulate a scenario file live and show it: the world (with the recorder section's sign
    swaps) through the Runner, the viewer as its stage. Returns the viewer's counts."""
    from carla_mr.config import load_scenario
    from carla_mr.dataset.textures import RecorderSwapsStage
    from carla_mr.runner import Runner

    sc = load_scenario(path, list(overrides))
    viewer = ViewerStage(**viewer_kw, max_frames=frames)
    Runner(sc, Path("."), [RecorderSwapsStage(sc.recorder), viewer], seed, progress=False, ticks=frames or sc.ticks,
           run_files=False).run()
    return viewer.summary()


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
    run_dir = make_run_dir(out, "view") if headless else (Path(out) if out else None)
    if png_every is None:
        png_every = 0 if mp4 else 1
    kw = dict(out=run_dir, headless=headless, size=size_t, zoom=zoom, png_every=png_every, mp4=mp4, fps=fps,
              camera=not no_camera)
    if source.is_dir():
        res = run_viewer(run_source(source, overrides), max_frames=frames, **kw)
    else:
        res = view_scenario(source, overrides, seed=seed, frames=frames, **kw)
    res["dir"] = str(run_dir) if run_dir else None
    emit(res, as_json=as_json, title="view")
