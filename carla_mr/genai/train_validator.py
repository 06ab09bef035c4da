"""Train a validator on a BelgiumTS/GTSRB-layout set (default: a fresh procedural one)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from carla_mr.errors import InputError


def load_split_arrays(data: str | os.PathLike, split: str, size: int, *, margin: float = 0.12):
    """(images (N, size, size, 3) uint8, labels (N,), class names) of one split."""
    from carla_mr.genai.datasets import load_sign_dataset

    ds = load_sign_dataset(data, split)
    ids = sorted(ds.class_names)
    if ids != list(range(len(ids))):
        # compact class ids (GTSRB/BelgiumTS ids are already 0..C-1; be safe for subsets)
        remap = {c: i for i, c in enumerate(ids)}
    else:
        remap = {c: c for c in ids}
    names = [ds.class_names[c] for c in ids]
    labels = np.array([remap[r.class_id] for r in ds.records], np.int64)
    return ds.images(size, margin=margin), labels, names


def train_validator(out: str | os.PathLike, *, data: str | os.PathLike | None = None, arch: str = "small",
                    width: float | None = None, epochs: int = 15, per_class: int = 600, test_per_class: int = 200,
                    seed: int = 0, threads: int = 1, progress=None, log=None) -> dict:
    """Train a validator into ``out`` (a validator directory) and report its test accuracy.

    ``data``: a BelgiumTS/GTSRB-layout directory with Training/Testing (or GTSRB's
    Final_Training/Final_Test); None writes a procedural set (``per_class`` /
    ``test_per_class`` images per class, seed ``seed``) to ``out/data`` first.
    """
    from carla_mr.errors import require

    torch = require("torch", extra="genai", feature="training the validator")
    from carla_mr.genai.procedural import write_dataset
    from carla_mr.genai.validator import build_validator, fit

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if data is None:
        data = out / "data"
        if not (data / "classes.txt").is_file():
            if log:
                log(f"writing a procedural data set to {data}")
            write_dataset(data, per_class=per_class, test_per_class=test_per_class, seed=seed)
    v0 = build_validator(arch, ["?"], width=width)
    size = v0.input_size
    xtr, ytr, names = load_split_arrays(data, "train", size)
    xte, yte, names_te = load_split_arrays(data, "test", size)
    if names_te != names:
        raise InputError(f"the train and test splits of {data} have different classes", field="data")
    v = build_validator(arch, names, width=width, seed=seed)
    res = fit(v, xtr, ytr, epochs=epochs, seed=seed, progress=progress)
    acc = v.accuracy(xte, yte)
    per_class_acc = {names[c]: float((v.probs(xte[yte == c]).argmax(1) == c).mean()) for c in range(len(names))
                     if (yte == c).any()}
    summary = {"arch": arch, "test_accuracy": acc, "per_class_accuracy": per_class_acc, "train_images": len(xtr),
               "test_images": len(xte), "epochs": epochs, "seed": seed, "data": str(data),
               "train_s": round(time.time() - t0, 1), **res}
    v.save(out, extra={"test_accuracy": acc, "data": str(data), "epochs": epochs, "seed": seed})
    return summary


def template_arrays(per_class: int = 40, seed: int = 7, size: int = 32) -> tuple[np.ndarray, list[str]]:
    """The generator's own templates (:mod:`carla_mr.genai.procedural`, prompt-like clean
    pictures of a sign on a colour) with their validator class names (speed limits by value):
    the validator never trains on these; they are its second, separate test."""
    from carla_mr.config.vocab import COLOURS, SIGN_CLASSES, SPEED_VALUES
    from carla_mr.genai.procedural import BASE_JITTER, render_sample

    rng = np.random.default_rng(seed)
    xs, names = [], []
    cols = list(COLOURS)
    for kind in SIGN_CLASSES:
        for i in range(per_class):
            value = SPEED_VALUES[i % len(SPEED_VALUES)] if kind == "speed_limit" else None
            img, _ = render_sample(kind, rng, size=size, value=value, background=cols[i % len(cols)],
                                   jitter=BASE_JITTER)
            xs.append(img)
            names.append(f"speed_limit_{value}" if value is not None else kind)
    return np.stack(xs), names


def reject_rates(v, n: int = 200, seed: int = 11, size: int = 32) -> dict:
    """Share of no-sign inputs the validator rejects: uniform grey, uniform noise, and
    out-of-vocabulary signs (the independent painter, from a generator seeded ``seed``)."""
    from carla_mr.genai.validator_art import REJECT, junk_image, sign_crop

    rng = np.random.default_rng(seed)
    grey = np.stack([np.full((size, size, 3), int(g), np.uint8) for g in rng.integers(0, 256, n)])
    noise = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    oov = np.stack([sign_crop(REJECT, rng, size) for _ in range(n)])
    junk = np.stack([junk_image(rng, size) for _ in range(n)])
    return {name: float(np.mean([c == REJECT for c in v.read(x)[0]]))
            for name, x in (("blank", grey), ("noise", noise), ("out_of_vocabulary", oov), ("junk", junk))}


def _split_accuracy(v, x: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[float, dict, float]:
    """Accuracy of validator ``v`` on a labelled split: overall, per class, and over the speed
    value classes only."""
    pred = v.probs(x).argmax(1)
    speed = np.array([n.startswith("speed_limit_") for n in names])[y]
    per_class = {names[c]: float((pred[y == c] == c).mean()) for c in range(len(names)) if (y == c).any()}
    return float((pred == y).mean()), per_class, float((pred[speed] == y[speed]).mean())


def train_art_validator(out: str | os.PathLike, *, per_class: int = 500, test_per_class: int = 100,
                        epochs: int = 10, width: int = 24, seed: int = 0, threads: int = 1, progress=None,
                        log=None) -> dict:
    """Train the independent open-set validator on the independent painter's crops
    (:mod:`carla_mr.genai.validator_art`) and report: accuracy on its held-apart split (another
    seed stream), on a held-out type family (every text in fonts training never drew; stream 3,
    ``test_per_class`` crops per class), on the generator's templates, and reject rates on
    blank/noise/OOV."""
    from carla_mr.errors import require

    torch = require("torch", extra="genai", feature="training the validator")
    from carla_mr.genai.validator import build_validator, fit
    from carla_mr.genai.validator_art import HELD_OUT_FONTS, make_set

    if threads:
        torch.set_num_threads(int(threads))
    t0 = time.time()
    xtr, ytr, names = make_set(per_class, seed, 0)
    xte, yte, _ = make_set(test_per_class, seed, 1)
    if log:
        log(f"{len(xtr)} training and {len(xte)} held-apart crops of {len(names)} classes ({time.time() - t0:.0f} s)")
    v = build_validator("small", names, width=width, seed=seed)
    res = fit(v, xtr, ytr, epochs=epochs, seed=seed, progress=progress)
    acc, per_class_acc, _ = _split_accuracy(v, xte, yte, names)
    xf, yf, _ = make_set(test_per_class, seed, 3, fonts="held_out")
    acc_f, per_class_f, value_acc_f = _split_accuracy(v, xf, yf, names)
    held_out_fonts = {"accuracy": acc_f, "value_accuracy": value_acc_f, "per_class_accuracy": per_class_f,
                      "fonts": list(HELD_OUT_FONTS.ttf), "images": int(len(xf))}
    tx, tnames = template_arrays()
    tpred, _ = v.read(tx)
    kind = [n.split("_")[0] for n in tnames]
    summary = {"arch": "small", "width": width, "classes": names, "held_apart_accuracy": acc,
               "per_class_accuracy": per_class_acc, "held_out_fonts": held_out_fonts,
               "template_accuracy": float(np.mean(
                   [p == t for p, t in zip(tpred, tnames)])),
               "template_kind_accuracy": float(np.mean([p.split("_")[0] == k for p, k in zip(tpred, kind)])),
               "reject_rate": reject_rates(v), "threshold": v.threshold, "train_images": len(xtr),
               "test_images": len(xte), "epochs": epochs, "seed": seed,
               "data": f"carla_mr.genai.validator_art.make_set(per_class={per_class}, seed={seed})",
               "train_s": round(time.time() - t0, 1), **res}
    v.save(out, extra={k: summary[k] for k in ("held_apart_accuracy", "held_out_fonts", "template_accuracy",
                                               "reject_rate", "data",
                                               "epochs", "seed", "threshold")})
    return summary
