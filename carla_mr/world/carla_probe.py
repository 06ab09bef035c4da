"""Is a CARLA server ready for a run? A tiny probe for health checks and scripts.

``python -m carla_mr.world.carla_probe --host carla --port 2000`` exits 0 once the server
answers ``get_server_version()`` with a supported release equal to the client's (unless
``--allow-version-mismatch``) and its world answers ``get_map()`` (the episode is loaded),
else 1, printing one line either way. docker/docker-compose.yml uses it as the health check
that the client waits for (a port that accepts TCP is not a loaded episode).

``--texture-check SCENARIO --out PNG`` runs the texture test pattern on a real server (what
no stand-in can show): an AV drives until a speed-limit sign is near and in view, the sign
gets :func:`~carla_mr.world.carla_textures.orientation_pattern` (red top, blue bottom, green
left), and the camera frame is saved with the sign's box drawn; the printed report gives the
mean colours of the box's top/bottom thirds and left/right eighths, and the other meshes of
the sign's actor that the texture recoloured too (docs/carla.md says how to read it).
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Optional, Sequence

from carla_mr.errors import CarlaMrError
from carla_mr.world.carla_api import check_match, check_version, import_carla


def probe_server(host: str, port: int, *, timeout_s: float = 5.0, allow_version_mismatch: bool = False,
                 client_factory: Optional[Callable[[str, int], Any]] = None) -> str:
    """One line describing the ready server; RunError/InputError (or libcarla's RuntimeError,
    e.g. a time-out) when it is not ready. ``client_factory`` replaces ``carla.Client``."""
    factory = client_factory if client_factory is not None else import_carla().Client
    client = factory(host, int(port))
    client.set_timeout(float(timeout_s))
    server = str(client.get_server_version())
    check_version(server, "server")
    client_version = str(client.get_client_version())
    check_match(client_version, server, allow_mismatch=allow_version_mismatch)
    town = str(client.get_world().get_map().name).rsplit("/", 1)[-1]
    return f"CARLA {server} at {host}:{port} is ready (client {client_version}, map {town})"


def texture_check(world: Any, out_png: str, *, max_ticks: int = 3000, near_m: float = 25.0) -> dict[str, Any]:
    """Apply the orientation pattern to the first speed-limit sign seen within ``near_m`` metres
    by the camera ``"front"`` of a reset ``world``; save the next frame to ``out_png``; return
    the report (sign id, box, mean RGB of its top/bottom thirds and left/right eighths, the
    actor's other meshes). RunError when no sign came into view within ``max_ticks`` ticks."""
    import cv2
    import numpy as np

    from carla_mr.errors import RunError
    from carla_mr.world.base import FrameMissed
    from carla_mr.world.carla_textures import orientation_pattern

    label = None
    for _ in range(max_ticks):
        world.tick()
        try:
            fr = world.read_camera("front")
        except FrameMissed:
            continue
        label = next((l for l in fr.labels if l["kind"] == "speed_limit" and l["distance"] <= near_m
                      and l["visible"] > 0.8), None)
        if label is not None:
            break
    if label is None:
        raise RunError(f"no speed-limit sign came within {near_m:g} m of the camera in {max_ticks} ticks")
    sid = label["id"]
    world.apply_sign_textures({sid: orientation_pattern(128)})
    world.tick()
    fr = world.read_camera("front")
    lab = next((l for l in fr.labels if l["id"] == sid), label)
    x0, y0, x1, y1 = (int(round(v)) for v in lab["box"])
    patch = fr.image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)].astype(np.float64)
    h, w = patch.shape[:2]

    def mean(a):
        return [round(float(v), 1) for v in a.reshape(-1, 3).mean(axis=0)] if a.size else None

    img = np.ascontiguousarray(fr.image[:, :, ::-1])
    cv2.rectangle(img, (x0, y0), (x1, y1), (0, 255, 255), 1)
    cv2.imwrite(str(out_png), img)
    return {"sign": sid, "box": [x0, y0, x1, y1], "top": mean(patch[: max(1, h // 3)]),
            "bottom": mean(patch[h - max(1, h // 3):]), "left": mean(patch[:, : max(1, w // 8)]),
            "right": mean(patch[:, w - max(1, w // 8):]),
            "other_meshes": world.summary()["texture_other_meshes"].get(sid, {}).get("other_meshes", []),
            "expected": "top red, bottom blue, left green (see docs/carla.md)"}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m carla_mr.world.carla_probe", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=2000)
    ap.add_argument("--timeout-s", type=float, default=5.0, help="client time-out of each call, seconds")
    ap.add_argument("--allow-version-mismatch", action="store_true")
    ap.add_argument("--texture-check", metavar="SCENARIO", help="run the texture test pattern with this scenario")
    ap.add_argument("--out", default="texture_check.png", help="the --texture-check frame (PNG)")
    args = ap.parse_args(argv)
    if args.texture_check:
        return _texture_check_cli(args)
    try:
        print(probe_server(args.host, args.port, timeout_s=args.timeout_s,
                           allow_version_mismatch=args.allow_version_mismatch))
        return 0
    except (CarlaMrError, RuntimeError) as exc:
        print(f"CARLA at {args.host}:{args.port} is not ready: {exc}")
        return 1


def _texture_check_cli(args: argparse.Namespace) -> int:
    import json

    from carla_mr.config import load_scenario
    from carla_mr.config.camera import CameraSpec
    from carla_mr.world.carla_backend import CarlaWorld

    sc = load_scenario(args.texture_check, ["backend=carla", f"carla.host={args.host}", f"carla.port={args.port}",
                                            f"carla.allow_version_mismatch={str(args.allow_version_mismatch).lower()}"])
    try:
        with CarlaWorld(sc) as world:
            snap = world.reset()
            world.attach_camera("front", CameraSpec(width=800, height=600, fov_deg=60.0),
                                int(snap.ids[snap.av_mask][0]))
            print(json.dumps(texture_check(world, args.out), indent=1))
        return 0
    except (CarlaMrError, RuntimeError) as exc:
        print(f"texture check failed: {exc}")
        return 1


if __name__ == "__main__":  # pragma: no cover - the command line
    raise SystemExit(main())
