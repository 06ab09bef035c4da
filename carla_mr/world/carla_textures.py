"""Texture streaming to a CARLA server: images -> ``carla.TextureColor``, the exact object each
sign's texture goes to, and the checks around it.

- :func:`to_texture_color` turns an RGB(A) uint8 image into a ``TextureColor``. Colours are
  cast to ``int`` (Boost.Python rejects numpy integers) and the image orientation is fixed in
  this one place (:data:`FLIP_ROWS`: CARLA's texture example writes row ``y`` of an image to
  texture row ``h - 1 - y``). **Unverified on a real server**: docs/carla.md says how to check
  it with :func:`orientation_pattern`.
- :class:`SignObjectIndex` finds, once per town, the **actor** that carries each sign's
  face: the ``TrafficSigns`` environment object nearest the sign's level box is named
  ``<Actor>_SM_<n>`` or ``<Actor>_Inst_<n>``; the suffix is stripped (:func:`actor_name`) and
  the result must be, exactly, one of ``World.get_names_of_all_objects()``. The texture calls
  take actor names only; environment-object names are never sent. The texture call recolours
  every mesh of the actor: when the actor carries other meshes than the sign's face (a sign
  merged into a larger actor) the index lists them, and the run summary says so.
- :func:`patch_changed` is the re-rendered pixel check: after a texture is applied, the sign's
  pixels in the next camera frame must differ from before, else the apply was a no-op.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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


def apply_texture(world: Any, api: Any, actor: str, texture: Any) -> None:
    """Put ``texture`` on the diffuse channel of every mesh of the named actor (one call;
    empty emissive/normal/ORM textures leave those channels alone). Raises what the server
    raises for an unknown name (``RuntimeError``: "unable to find Actor to apply the texture")."""
    empty = empty_float_texture(api)
    world.apply_textures_to_objects([str(actor)], texture, empty, empty, empty)


def orientation_pattern(size: int = 128) -> np.ndarray:
    """An RGB test pattern whose orientation shows at a glance: top third red, bottom third
    blue, a green bar down the left edge, white elsewhere. Applied to a sign on a real server,
    a camera must show red at the top and green on the left (docs/carla.md)."""
    img = np.full((size, size, 3), 255, np.uint8)
    third = max(1, size // 3)
    img[:third] = (220, 20, 20)
    img[-third:] = (20, 40, 220)
    img[:, : max(1, size // 8)] = (20, 200, 40)
    return img


# -- which actor carries each sign ------------------------------------------------------------

_MESH_SUFFIX = re.compile(r"^(?P<actor>.+)_(?:SM|Inst)_\d+$")


def actor_name(env_object_name: str) -> str:
    """``BP_SpeedLimit30_20_SM_0`` -> ``BP_SpeedLimit30_20`` (an environment object's actor);
    a name without the ``_SM_<n>`` / ``_Inst_<n>`` suffix is returned unchanged."""
    m = _MESH_SUFFIX.match(str(env_object_name))
    return m.group("actor") if m else str(env_object_name)


@dataclass
class SignTarget:
    """Where one sign's texture goes: ``object`` (an actor name the texture calls accept) or
    None with the ``reason``; ``other_meshes``: the actor's meshes besides the sign's own
    (non-empty when the sign is merged into a larger actor, which the texture recolours too)."""

    object: str | None
    reason: str = ""
    other_meshes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"object": self.object, "reason": self.reason, "other_meshes": list(self.other_meshes)}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "SignTarget":
        return SignTarget(None if d["object"] is None else str(d["object"]), str(d["reason"]),
                          [str(x) for x in d["other_meshes"]])


#: The in-process cache shared by every SignObjectIndex made without its own: town -> table.
_MEMORY: dict[str, dict[str, SignTarget]] = {}
#: Version of the on-disk table (older files are rediscovered).
CACHE_FORMAT = 2


def clear_memory_cache() -> None:
    _MEMORY.clear()


class SignObjectIndex:
    """Which actor carries each sign's face, discovered at run time and cached per town.

    ``discover(world, api, town, sign_ids, sign_xyz)`` asks the server once per town:
    ``get_environment_objects(TrafficSigns)`` (mesh names with boxes; each sign is joined to
    the nearest within ``max_dist_m``), ``get_environment_objects(Any)`` (every mesh, to find
    the actor's other meshes) and ``get_names_of_all_objects()`` (the names the texture
    calls accept). Later calls for the same town are answered from the cache (``cache_dir``
    adds a JSON file per town).
    """

    def __init__(self, cache_dir: str | Path | None = None, memory: dict | None = None):
        self._mem: dict[str, dict[str, SignTarget]] = _MEMORY if memory is None else memory
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.server_queries = 0

    def _path(self, town: str) -> Path | None:
        if self.cache_dir is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", town) or "town"
        return self.cache_dir / f"sign_objects_{safe}.json"

    def cached(self, town: str) -> dict[str, SignTarget] | None:
        if town in self._mem:
            return self._mem[town]
        p = self._path(town)
        if p is not None and p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
                if data.get("format") != CACHE_FORMAT:
                    return None
                table = {str(k): SignTarget.from_json(v) for k, v in data["signs"].items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                return None
            self._mem[town] = table
            return table
        return None

    def discover(self, world: Any, api: Any, town: str, sign_ids: Sequence[str], sign_xyz: np.ndarray, *,
                 max_dist_m: float = 6.0) -> dict[str, SignTarget]:
        hit = self.cached(town)
        if hit is not None:
            return hit
        self.server_queries += 1
        names = {str(n) for n in world.get_names_of_all_objects()}
        signs_env = list(world.get_environment_objects(api.CityObjectLabel.TrafficSigns))
        meshes: dict[str, list[str]] = {}
        for o in world.get_environment_objects(api.CityObjectLabel.Any):
            meshes.setdefault(actor_name(str(o.name)), []).append(str(o.name))
        env_xyz = np.array([[o.bounding_box.location.x, o.bounding_box.location.y, o.bounding_box.location.z]
                            for o in signs_env], dtype=np.float64).reshape(-1, 3)
        j = join_boxes_to_signs(np.asarray(sign_xyz).reshape(-1, 3), env_xyz, max_dist_m=max_dist_m)
        table: dict[str, SignTarget] = {}
        for sid, k in zip(sign_ids, j):
            if k < 0:
                table[str(sid)] = SignTarget(None, f"no TrafficSigns object within {max_dist_m:g} m")
                continue
            env = str(signs_env[k].name)
            actor = actor_name(env)
            if actor not in names:
                table[str(sid)] = SignTarget(None, f"environment object '{env}': no object named '{actor}' on the "
                                                   f"server")
                continue
            others = sorted(m for m in meshes.get(actor, []) if m != env)
            table[str(sid)] = SignTarget(actor, "", others)
        self._mem[town] = table
        p = self._path(town)
        if p is not None:
            from carla_mr.io import atomic_write_json

            atomic_write_json(p, {"format": CACHE_FORMAT, "town": town,
                                  "signs": {k: v.to_json() for k, v in table.items()}})
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
