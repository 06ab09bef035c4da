"""Which signs show generated textures, and where those images come from.

A seeded choice of ``round(share * n)`` signs among the world's signs (traffic lights are
never swapped). Images come from a folder (``<kind>/*.png`` or ``<kind>_*.png``; any
other image in the folder serves every kind) or, without a folder or for a kind the folder
lacks, from procedural variants of the original face, labelled ``ref="procedural:<kind>:v<n>"``
so a dataset never passes them off as diffusion output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carla_mr.errors import InputError
from carla_mr.world.base import SignTable, SignTexture
from carla_mr.world.sign_geometry import KIND_GEOMETRY, procedural_face

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SWAPPABLE_EXCLUDED = ("traffic_light",)


def index_texture_dir(root: str | Path) -> dict[str, list[Path]]:
    """kind -> sorted image paths; the key ``"*"`` holds images that name no kind."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{root} is not a folder of sign images", field="recorder.texture_dir")
    kinds = sorted(KIND_GEOMETRY, key=len, reverse=True)
    out: dict[str, list[Path]] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = p.relative_to(root)
        kind = "*"
        if len(rel.parts) > 1 and rel.parts[0] in KIND_GEOMETRY:
            kind = rel.parts[0]
        else:
            for k in kinds:
                if p.stem == k or p.stem.startswith(k + "_") or p.stem.startswith(k + "-"):
                    kind = k
                    break
        out.setdefault(kind, []).append(p)
    if not out:
        raise InputError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)})", field="recorder.texture_dir")
    return out


def load_rgba(path: Path) -> np.ndarray:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(f"cannot read image {path}", field="recorder.texture_dir")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype != np.uint8:
        img = (img / max(1, img.max()) * 255).astype(np.uint8)
    return img


def choose_swaps(signs: SignTable, share: float, seed: int, texture_dir: str | Path | None = None
                 ) -> dict[str, SignTexture]:
    """The seeded set of sign swaps: sign id -> SignTexture(source="generated", ref, image)."""
    if not 0.0 <= share <= 1.0:
        raise InputError(f"must be within [0, 1], got {share}", field="recorder.swap_share")
    eligible = [i for i in range(len(signs)) if str(signs.kind[i]) not in SWAPPABLE_EXCLUDED]
    n = int(round(share * len(eligible)))
    if n == 0:
        return {}
    rng = np.random.default_rng([int(seed) % (2 ** 32), 0x5A1D])
    chosen = sorted(rng.choice(len(eligible), size=n, replace=False).tolist())
    index = index_texture_dir(texture_dir) if texture_dir else {}
    root = Path(texture_dir).expanduser() if texture_dir else None
    out: dict[str, SignTexture] = {}
    for c in chosen:
        i = eligible[c]
        kind = str(signs.kind[i])
        pool = index.get(kind) or index.get("*")
        if pool:
            p = pool[int(rng.integers(len(pool)))]
            out[str(signs.ids[i])] = SignTexture("generated", str(p.relative_to(root)), load_rgba(p))
        else:
            v = float(signs.value[i])
            variant = int(rng.integers(1, 1000))
            face = procedural_face(kind, v if np.isfinite(v) else None, 128, variant=variant)
            out[str(signs.ids[i])] = SignTexture("generated", f"procedural:{kind}:v{variant}", face)
    return out
