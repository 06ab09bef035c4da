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
