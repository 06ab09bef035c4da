"""Texture streaming to a CARLA server: images -> ``carla.TextureColor``, sign object names, checks.

- :func:`to_texture_color` turns an RGB(A) uint8 image into a ``TextureColor``. Colours are
  cast to ``int`` (Boost.Python rejects numpy integers) and the image orientation is fixed in
  this one place: CARLA's texture origin is the bottom-left corner, so row ``y`` of the image
  goes to texture row ``h - 1 - y`` (what CARLA's own texture example does).
- :class:`SignObjectIndex` discovers at run time which level objects belong to each sign
  (``World.get_names_of_all_objects`` joined through ``World.get_environment_objects``' boxes)
  and caches the result per town, in memory and optionally as JSON on disk.
- :func:`patch_changed` is the re-rendered pixel check: after a texture is applied, the sign's
  pixels in the next camera frame must differ from before, else the apply was a no-op.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from carla_mr.world.carla_signs import join_boxes_to_signs

#: Textures are resampled to at most this many pixels a side (per-pixel RPC payload).
MAX_TEXTURE_PX = 256
#: CARLA's texture rows run bottom-up: image row y is texture row h-1-y. Fixed here, once.
FLIP_ROWS = True


def prepare_image(image: np.ndarray, max_px: int = MAX_TEXTURE_PX) -> np.ndarray:
    """(H, W, 3|4) uint8 -> (h, w, 4) uint8 RGBA, resampled so the longer side is <= ``max_px``."""
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"texture must be a uint8 (H, W, 3|4) image, got {img.dtype} {img.shape}")
    if img.shape[2] == 3:
        img = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=2)
    h, w = img.shape[:2]
    scale = max_px / max(h, w)
    if scale < 1.0:
        import cv2

        img = cv2.resize(img, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def texture_rows(rgba: np.ndarray) -> np.ndarray:
    """The image as the texture stores it (rows flipped once, see :data:`FLIP_ROWS`)."""
    return rgba[::-1] if FLIP_ROWS else rgba


def to_texture_color(api: Any, image: np.ndarray, max_px: int = MAX_TEXTURE_PX):
    """An ``api.TextureColor`` holding ``image`` (``api`` is the ``carla`` module or a stand-in)."""
    rgba = prepare_image(image, max_px)
    h, w = rgba.shape[:2]
    tex = api.TextureColor(int(w), int(h))
    rows = texture_rows(rgba)
    color = api.Color
    for ty in range(h):
        row = rows[ty].tolist()  # python ints: Boost.Python needs int, not numpy.uint8
        for x in range(w):
            r, g, b, a = row[x]
            tex.set(x, ty, color(int(r), int(g), int(b), int(a)))
    return tex


def texture_to_array(tex: Any) -> np.ndarray:
    """Read a TextureColor back into an (h, w, 4) RGBA image in image orientation (for tests)."""
    w, h = int(tex.width), int(tex.height)
    out = np.zeros((h, w, 4), np.uint8)
    for ty in range(h):
        for x in range(w):
            c = tex.get(x, ty)
            out[ty, x] = (c.r, c.g, c.b, c.a)
    return out[::-1] if FLIP_ROWS else out


def empty_float_texture(api: Any):
    """A 0x0 ``TextureFloatColor``: CARLA skips a channel given an empty texture."""
    return api.TextureFloatColor(0, 0)


def apply_texture(world: Any, api: Any, names: Sequence[str], texture: Any) -> None:
    """Put ``texture`` on the diffuse channel of the named level objects, in one call where the
    server has ``apply_textures_to_objects``, else one ``apply_color_texture_to_object`` per name."""
    names = [str(n) for n in names]
    if not names:
        return
    if hasattr(world, "apply_textures_to_objects"):
        empty = empty_float_texture(api)
        world.apply_textures_to_objects(names, texture, empty, empty, empty)
    else:  # servers without the plural call
        for n in names:
            world.apply_color_texture_to_object(n, api.MaterialParameter.Diffuse, texture)


# -- object names -----------------------------------------------------------------------------

_SIGNISH = re.compile(r"sign|speed|stop|yield|limit|warning|parking|priority|entry|arrow", re.IGNORECASE)


def _related(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or a.startswith(b) or b.startswith(a)


def match_names(env_names: Iterable[str], all_names: Sequence[str]) -> list[list[str]]:
    """For each environment-object name, the texture-addressable object names that belong to it
    (equal, or one a prefix of the other: UE appends component and instance suffixes)."""
    all_names = [str(n) for n in all_names]
    out = []
    for e in env_names:
        hits = [n for n in all_names if _related(str(e), n)]
        out.append(sorted(set(hits)))
    return out


#: The in-process cache shared by every SignObjectIndex made without its own: town -> table.
_MEMORY: dict[str, dict[str, list[str]]] = {}


def clear_memory_cache() -> None:
    _MEMORY.clear()


class SignObjectIndex:
    """Which level objects carry each sign's face, discovered at run time and cached per town.

    ``discover(world, api, town, sign_ids, sign_xyz)`` asks the server once per town:
    ``get_names_of_all_objects()`` (what the texture calls accept) and
    ``get_environment_objects(TrafficSigns)`` (names with boxes), joins each sign to the nearest
    environment object, and keeps the names related to that object. Later calls for the same
    town are answered from the cache (``cache_dir`` adds a JSON file per town).
    """

    def __init__(self, cache_dir: str | Path | None = None, memory: dict | None = None):
        self._mem: dict[str, dict[str, list[str]]] = _MEMORY if memory is None else memory
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.server_queries = 0

    def _path(self, town: str) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", town) or "town"
        return self.cache_dir / f"sign_objects_{safe}.json"

    def cached(self, town: str) -> dict[str, list[str]] | None:
        if town in self._mem:
            return self._mem[town]
        p = self._path(town)
        if p is not None and p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
                table = {str(k): [str(x) for x in v] for k, v in data["signs"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
            self._mem[town] = table
            return table
        return None

    def discover(self, world: Any, api: Any, town: str, sign_ids: Sequence[str], sign_xyz: np.ndarray, *,
                 max_dist_m: float = 6.0) -> dict[str, list[str]]:
        hit = self.cached(town)
        if hit is not None:
            return hit
        self.server_queries += 1
        all_names = [str(n) for n in world.get_names_of_all_objects()]
        env = list(world.get_environment_objects(api.CityObjectLabel.TrafficSigns))
        env_xyz = np.array([[o.bounding_box.location.x, o.bounding_box.location.y, o.bounding_box.location.z]
                            for o in env], dtype=np.float64).reshape(-1, 3)
        env_names = [str(o.name) for o in env]
        related = match_names(env_names, all_names)
        j = join_boxes_to_signs(np.asarray(sign_xyz).reshape(-1, 3), env_xyz, max_dist_m=max_dist_m)
        table: dict[str, list[str]] = {}
        for sid, k in zip(sign_ids, j):
            names = related[k] if k >= 0 else []
            if k >= 0 and not names and _SIGNISH.search(env_names[k]):
                names = [env_names[k]]
            table[str(sid)] = names
        self._mem[town] = table
        p = self._path(town)
        if p is not None:
            from carla_mr.io import atomic_write_json

            atomic_write_json(p, {"town": town, "signs": table})
        return table


# -- the re-rendered pixel check --------------------------------------------------------------

def patch_mean(image: np.ndarray, box) -> np.ndarray | None:
    """Mean RGB of the pixels in ``box`` [x0, y0, x1, y1], None when the box is empty."""
    h, w = image.shape[:2]
    x0, y0 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
    x1, y1 = int(min(w, np.ceil(box[2]))), int(min(h, np.ceil(box[3])))
    if x1 <= x0 or y1 <= y0:
        return None
    return image[y0:y1, x0:x1, :3].reshape(-1, 3).astype(np.float64).mean(axis=0)


def patch_changed(before: np.ndarray | None, after: np.ndarray | None, *, tol: float = 2.0) -> bool | None:
    """True when the mean colour moved by more than ``tol`` (0..255 scale), None when unknown."""
    if before is None or after is None:
        return None
    return bool(np.max(np.abs(np.asarray(after) - np.asarray(before))) > tol)
