"""Which signs show generated textures, and where those images come from.

A seeded choice of ``round(share * n)`` signs among the world's signs (traffic lights are
never swapped). Images come from a folder (``<kind>/*.png`` or ``<kind>_*.png``; any
other image in the folder serves every kind), else from a trained TSDreamBooth model
(``recorder.genai_model``; ref ``genai:<model>:<kind>:seed<n>``), else from procedural
variants of the original face, labelled ``ref="procedural:<kind>:v<n>"`` so a dataset never
passes them off as diffusion output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carla_mr.errors import InputError
from carla_mr.stages import BaseStage
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


def default_genai_model() -> Path | None:
    """The committed TSDreamBooth base model folder when this install has it and torch, else None."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    try:
        from carla_mr.genai.api import default_model_path
    except ImportError:
        return None
    p = Path(default_model_path())
    return p if p.is_dir() and any(p.iterdir()) else None


def genai_generator(model_dir: str | Path | None = None, *, steps: int = 20):
    """A generator ``(kinds, seeds) -> [(RGB image, ref)]`` from a trained TSDreamBooth model
    folder (default: the committed base model); needs the ``genai`` extra."""
    try:
        from carla_mr.genai.api import load_default_generator
        from carla_mr.genai.prompts import prompt_for
        from carla_mr.genai.sample import sample
    except ImportError as exc:
        raise InputError(f"generated textures need the genai extra (pip install 'carla-mr[genai]'): {exc}",
                         field="recorder.texture_source") from exc
    path = Path(model_dir) if model_dir else default_genai_model()
    if path is None or not path.is_dir():
        raise InputError(f"no TSDreamBooth model at {model_dir or 'the default location'}; train one with "
                         f"'carla-mr genai train-base' or use texture_source: procedural",
                         field="recorder.genai_model")
    model = load_default_generator(path)
    name = path.name
    reader = []  # the independent validator, loaded on first use

    def gen(kinds: list[str], seeds: list[int]) -> list[tuple[np.ndarray, str, str | None]]:
        imgs = sample(model, [prompt_for(k) for k in kinds], seeds=seeds, steps=steps)
        return [(img, f"genai:{name}:{k}:seed{s}", lab)
                for img, k, s, lab in zip(imgs, kinds, seeds, _read_labels(reader, imgs, kinds))]

    return gen


def _read_labels(reader: list, images, kinds: list[str]) -> list[str | None]:
    """The label class of each generated face (SignTexture.label_class): for a speed limit, the
    value class the independent validator read on it with probability >= 0.9 (``speed_limit_30``),
    else the generic
    ``speed_limit``; None (the sign's own class) for kinds without a value."""
    if "speed_limit" not in kinds:
        return [None] * len(kinds)
    if not reader:
        from carla_mr.genai.api import load_default_validator

        reader.append(load_default_validator())
    read, conf = reader[0].read(np.asarray(images))
    return [(r if r.startswith("speed_limit_") and c >= 0.9 else "speed_limit") if k == "speed_limit" else None
            for r, c, k in zip(read, conf, kinds)]


def choose_swaps(signs: SignTable, share: float, seed: int, texture_dir: str | Path | None = None,
                 generator=None) -> dict[str, SignTexture]:
    """The seeded set of sign swaps: sign id -> SignTexture(source="generated", ref, image).

    Image sources in order: ``texture_dir``; ``generator(kinds, seeds) -> [(image, ref[,
    label_class])]`` (e.g. :func:`genai_generator`) for kinds the folder lacks; procedural
    variants (which draw the sign's own value). A generated or folder speed-limit face carries
    ``label_class``: the value the validator read, or the generic ``speed_limit``.
    """
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
    todo: list[tuple[str, str, int]] = []  # (sign id, kind, seed) for the generator
    for c in chosen:
        i = eligible[c]
        kind = str(signs.kind[i])
        pool = index.get(kind) or index.get("*")
        if pool:
            p = pool[int(rng.integers(len(pool)))]
            # a folder image shows a value nobody read: the generic class for speed limits
            out[str(signs.ids[i])] = SignTexture("generated", str(p.relative_to(root)), load_rgba(p),
                                                 label_class="speed_limit" if kind == "speed_limit" else None)
        elif generator is not None:
            todo.append((str(signs.ids[i]), kind, int(rng.integers(0, 2 ** 31))))
        else:
            v = float(signs.value[i])
            variant = int(rng.integers(1, 1000))
            face = procedural_face(kind, v if np.isfinite(v) else None, 128, variant=variant)
            out[str(signs.ids[i])] = SignTexture("generated", f"procedural:{kind}:v{variant}", face)
    if todo:
        made = generator([k for _, k, _ in todo], [sd for _, _, sd in todo])
        for (sid, k, _sd), item in zip(todo, made):
            img, ref = item[0], item[1]
            label = item[2] if len(item) > 2 else ("speed_limit" if k == "speed_limit" else None)
            out[sid] = SignTexture("generated", str(ref), np.ascontiguousarray(np.asarray(img, np.uint8)),
                                   label_class=label)
    return {k: out[k] for k in sorted(out)}


def swaps_for(cfg, signs: SignTable, seed: int) -> dict[str, SignTexture]:
    """The swaps a :class:`~carla_mr.config.dataset.RecorderConfig` asks for on ``signs``.

    ``texture_source``: ``auto`` = ``texture_dir`` if given, then the genai model (``genai_model``
    or the committed one) when available, then procedural; ``folder`` needs ``texture_dir``;
    ``genai`` needs a model; ``procedural`` uses procedural variants only.
    """
    if cfg.swap_share <= 0:
        return {}
    src = cfg.texture_source
    if src == "folder" and not cfg.texture_dir:
        raise InputError("texture_source 'folder' needs texture_dir", field="recorder.texture_dir")
    folder = cfg.texture_dir if src in ("auto", "folder", "genai") else None
    gen = None
    if src == "genai":
        gen = genai_generator(cfg.genai_model, steps=cfg.genai_steps)  # fail early when missing
    elif src == "auto" and (cfg.genai_model or default_genai_model() is not None):
        def gen(kinds, seeds):  # loaded only if the folder leaves signs without an image
            return genai_generator(cfg.genai_model, steps=cfg.genai_steps)(kinds, seeds)
    return choose_swaps(signs, cfg.swap_share, seed, folder, generator=gen)


class RecorderSwapsStage(BaseStage):
    """Shows the recorder section's sign swaps (generated textures) from the first tick on, for
    runs that do not record (perception evaluation, the live viewer)."""

    name = "swaps"

    def __init__(self, recorder_cfg):
        self.recorder_cfg = recorder_cfg
        self.swapped = 0

    def start(self, ctx) -> None:
        swaps = swaps_for(self.recorder_cfg, ctx.world.signs, ctx.seed)
        if swaps:
            ctx.world.apply_sign_textures(swaps)
        self.swapped = len(swaps)

    def summary(self) -> dict:
        return {"signs_swapped": self.swapped}
