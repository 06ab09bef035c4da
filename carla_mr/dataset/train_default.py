"""Train (and honestly test) the default model under test, in one command:

    carla-mr dataset train-default --out runs/crop_net      (~5-10 min on 2 CPU cores)

1. Record paired datasets with the embedded world (SUMO traffic, ``signs.random_count``
   random signs): for each (map, seed) one recording with *original* textures
   (``swap_share 0``) and one with *generated* textures on every sign (``swap_share 1``,
   ``texture_source`` procedural by default), same seed, so both hold the same frames and
   differ only in the textures. Training maps: Town01 and mr_town; test map: Town02 (never
   seen in training).
2. Cut the crops of signs (box side >= ``min_box_px``, visibility >= 0.5, traffic lights
   excluded) with the evaluation's margin.
3. Train :mod:`carla_mr.dataset.crop_net` on the *original* crops of the training maps; test it
   on Town02 with original and with generated textures; and the reverse (train on generated,
   test on both), with the template matcher on the same test crops as the simple baseline.
   Accuracies come with 95% Wilson intervals.

Writes ``--out/crop_net`` (the model trained on originals: copy it to
``carla_mr/data/perception/crop_net`` to make it the default), ``train_log.csv``,
``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

TRAIN_MAPS = ("Town01", "mr_town")
TEST_MAPS = ("Town02",)


def record_pair(map_name: str, seed: int, root: Path, *, frames: int, cameras: int, every_k: int, signs: int,
                texture_source: str) -> dict[str, Path]:
    """Record ``map_name`` twice with one seed: original textures and generated ones."""
    from carla_mr.config import scenario_from_dict
    from carla_mr.dataset.recorder import record

    out = {}
    for source, share in (("original", 0.0), ("generated", 1.0)):
        sc = scenario_from_dict({
            "name": f"train-{map_name}-{source}", "map": map_name, "backend": "embedded", "seed": seed,
            "duration_s": 600.0, "vehicles": {"avs": cameras, "background": 40},
            "signs": {"random_count": signs},
            "recorder": {"enabled": True, "cameras": cameras, "every_k": every_k, "max_frames": frames,
                         "warmup_s": 2.0, "min_box_px": 4, "swap_share": share, "texture_source": texture_source}})
        out[source] = root / f"{map_name}-s{seed}-{source}"
        record(sc, out[source], seed=seed)
    return out


def collect_crops(root: Path, *, min_box_px: int = 8, min_visible: float = 0.5, margin: float = 0.1,
                  size: int = 32) -> dict[str, Any]:
    """The sign crops of a recording, resized to ``size``: images (N, size, size, 3) uint8,
    ``cls``, ``kind``, ``source`` lists and ``box_px`` (N,)."""
    import cv2

    from carla_mr.dataset.formats import iter_meta
    from carla_mr.dataset.model_io import resize as _resize
    from carla_mr.dataset.perception import crop

    imgs, cls, kind, src, px = [], [], [], [], []
    for rec in iter_meta(root):
        labs = [lab for lab in rec["labels"] if lab["kind"] != "traffic_light" and lab["visible"] >= min_visible
                and min(lab["box"][2] - lab["box"][0], lab["box"][3] - lab["box"][1]) >= min_box_px]
        if not labs:
            continue
        image = cv2.imread(str(root / rec["image"]), cv2.IMREAD_COLOR)[:, :, ::-1]
        for lab in labs:
            imgs.append(_resize(crop(image, lab["box"], margin), size))
            cls.append(lab["class"])
            kind.append(lab["kind"])
            src.append(lab["source"])
            px.append(min(lab["box"][2] - lab["box"][0], lab["box"][3] - lab["box"][1]))
    return {"images": np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8), "cls": cls, "kind": kind,
            "source": src, "box_px": np.array(px)}


def _merge(sets: list[dict]) -> dict:
    return {"images": np.concatenate([s["images"] for s in sets]), "cls": sum((s["cls"] for s in sets), []),
            "kind": sum((s["kind"] for s in sets), []), "source": sum((s["source"] for s in sets), []),
            "box_px": np.concatenate([s["box_px"] for s in sets])}


def _augment(x, gen):
    """Random shifts (replicate-pad 3 + crop) and brightness / contrast jitter of a (B, 3, S, S) batch."""
    import torch

    b, _, h, w = x.shape
    xp = torch.nn.functional.pad(x, (3, 3, 3, 3), mode="replicate")
    dx, dy = torch.randint(0, 7, (2,), generator=gen).tolist()
    x = xp[:, :, dy:dy + h, dx:dx + w]
    gain = 1 + 0.3 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    bias = 0.15 * (torch.rand(b, 1, 1, 1, generator=gen) - 0.5)
    return (x * gain + bias).clamp(0, 1)


def train(data: dict, classes: list[str], *, epochs: int, seed: int, log: Optional[Callable[[dict], None]] = None):
    """Train a crop net on ``data`` (class-balanced sampling, AdamW, cosine schedule); returns the CropNet."""
    import torch

    from carla_mr.dataset.crop_net import CropNet, build_net, to_batch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_net(len(classes))
    x = torch.from_numpy(to_batch(list(data["images"]), 32))
    y = torch.tensor([classes.index(c) for c in data["cls"]])
    counts = torch.bincount(y, minlength=len(classes)).float()
    weights = (1.0 / counts.clamp(min=1))[y]
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    steps_per_epoch = max(1, len(y) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * steps_per_epoch)
    for epoch in range(epochs):
        net.train()
        tot, correct, n = 0.0, 0, 0
        for _ in range(steps_per_epoch):
            idx = torch.multinomial(weights, 64, replacement=True, generator=gen)
            xb, yb = _augment(x[idx], gen), y[idx]
            logits = net(xb)
            loss = torch.nn.functional.cross_entropy(logits, yb, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(yb)
            correct += int((logits.argmax(1) == yb).sum())
            n += len(yb)
        if log is not None:
            log({"epoch": epoch + 1, "loss": tot / n, "train_acc": correct / n})
    net.eval()
    return CropNet(net, classes, 32, "crop_net", meta={"widths": [16, 32, 64]})


def score(model, data: dict) -> dict[str, Any]:
    """Accuracy (answer == class or kind) with a 95% Wilson interval, overall and by box size."""
    from carla_mr.dataset.perception import wilson

    preds = model.predict(list(data["images"])) if len(data["cls"]) else []
    ok = np.array([p == c or p == k for p, c, k in zip(preds, data["cls"], data["kind"])], bool)
    out = {"n": int(ok.size), "accuracy": float(ok.mean()) if ok.size else float("nan"),
           "ci95": list(wilson(int(ok.sum()), int(ok.size)))}
    for lo, hi in ((8, 16), (16, 32), (32, 10 ** 6)):
        m = (data["box_px"] >= lo) & (data["box_px"] < hi)
        out[f"box_{lo}-{hi if hi < 10 ** 6 else 'up'}px"] = {"n": int(m.sum()),
                                                               "accuracy": float(ok[m].mean()) if m.any() else None}
    return out


def run(out: Path, *, seed: int = 0, frames: int = 75, cameras: int = 6, every_k: int = 5, signs: int = 400,
        epochs: int = 30, texture_source: str = "procedural", reverse: bool = True,
        progress: Callable[[str], None] = print) -> dict:
    """The whole pipeline (see the module docstring); returns the results written to results.json."""
    from carla_mr.dataset.crop_net import CropNet  # noqa: F401 - fail early without torch
    from carla_mr.dataset.models import TemplateMatcher
    from carla_mr.io import atomic_write_json, atomic_write_text

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    crops: dict[tuple[str, str], dict] = {}
    for i, m in enumerate(TRAIN_MAPS + TEST_MAPS):
        progress(f"recording {m} (original + generated textures)")
        pair = record_pair(m, seed + i, out / "recordings", frames=frames, cameras=cameras, every_k=every_k,
                           signs=signs, texture_source=texture_source)
        for source, root in pair.items():
            crops[(m, source)] = collect_crops(root)
    t_rec = time.perf_counter() - t0
    train_sets = {src: _merge([crops[(m, src)] for m in TRAIN_MAPS]) for src in ("original", "generated")}
    tests = {src: crops[(TEST_MAPS[0], src)] for src in ("original", "generated")}
    classes = sorted(set(train_sets["original"]["cls"]) | set(train_sets["generated"]["cls"]))
    results: dict[str, Any] = {"seed": seed, "classes": classes, "texture_source": texture_source,
                               "train_maps": list(TRAIN_MAPS), "test_map": TEST_MAPS[0],
                               "n_train": {s: len(d["cls"]) for s, d in train_sets.items()},
                               "n_test": {s: len(d["cls"]) for s, d in tests.items()}, "models": {}}
    log_rows = ["trained_on,epoch,loss,train_acc"]
    baseline = TemplateMatcher(classes)
    results["models"]["template (baseline)"] = {f"test_{s}": score(baseline, d) for s, d in tests.items()}
    for src in ("original", "generated") if reverse else ("original",):
        progress(f"training on {src} textures ({len(train_sets[src]['cls'])} crops)")
        net = train(train_sets[src], classes, epochs=epochs, seed=seed,
                    log=lambda r, s=src: log_rows.append(f"{s},{r['epoch']},{r['loss']:.5f},{r['train_acc']:.5f}"))
        results["models"][f"crop_net trained on {src}"] = {f"test_{s}": score(net, d) for s, d in tests.items()}
        if src == "original":
            record = {"trained_on": "original textures", "train_maps": list(TRAIN_MAPS), "seed": seed,
                      "epochs": epochs, "n_train": len(train_sets[src]["cls"]),
                      "test": results["models"][f"crop_net trained on {src}"]}
            net.save(out / "crop_net", record)
    results["seconds"] = {"recording": round(t_rec, 1), "total": round(time.perf_counter() - t0, 1)}
    atomic_write_text(out / "train_log.csv", "\n".join(log_rows) + "\n")
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", results_markdown(results))
    return results


def results_markdown(results: dict) -> str:
    """The results as a markdown table (model x test source: accuracy [95% CI], n)."""
    lines = [f"Test map {results['test_map']} (unseen), same frames with original / generated "
             f"({results['texture_source']}) textures; trained on {', '.join(results['train_maps'])}.", "",
             "| model | test: original | test: generated |", "|---|---|---|"]
    for name, r in results["models"].items():
        cells = []
        for s in ("original", "generated"):
            t = r[f"test_{s}"]
            cells.append(f"{t['accuracy']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] (n={t['n']})")
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main_json(results: dict) -> str:
    return json.dumps(results)
