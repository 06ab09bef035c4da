"""theta, the paper's way: how much training on the generated images improves a perception model.

Xu et al. (2023), Sec. III: theta(.) is the "relative accuracy" of the AV's perception model
trained with the generated data; theta = 1 means the generated data brought no improvement,
and theta -> 0 means the model reached its optimum, so lower is better and eq. (1) divides the
match quality by it: F = log2(1 + G Q) / theta.

Operationally (:func:`theta_of`), an error ratio: ``theta = clip(err_after / err_before,
THETA_MIN, 1)``. A tiny sign classifier (:func:`tiny_net`, about 7 k parameters, fixed seed)
is trained for ``steps`` Adam steps on the generated images (labels = prompted kinds, batches
drawn class-balanced: a window of mostly speed limits still teaches every kind it holds) and
tested on an evaluation set held apart and from a source the generator never learned (crops
of the independent painter, :mod:`carla_mr.genai.validator_art`, stream 2), balanced over
the C kinds the generated set covers and read among those C kinds. ``err_after`` is its
error there; ``err_before = 1 - 1/C`` is the error of the perception model before it has
seen the images (nothing to go on but the kinds: chance). Images that teach nothing
transferable leave the error at chance (theta 1); images that look like real signs of the
prompted kind lower it, toward 0 for a perfect model. The cross-entropies before (ln C) and
after are reported beside it. A set of one kind has nothing to tell apart: theta NaN (not
measured; the market keeps its prior). Deterministic for a seed and an image set; a few
hundred milliseconds on one CPU core.

Why not the loss ratio against the label prior (the definition until 2026-12-07): on a
main-job window (70 % speed limits) it read 1.0 for the base model's 96 images and 0.975 for a
degraded copy's, the wrong way round; the class-balanced error ratio reads 0.74 and 0.99
(pure noise 1.0). Reproduce with ``python bench/theta_windows.py``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from carla_mr.config.vocab import SIGN_CLASSES
from carla_mr.errors import InputError, require

#: The market needs theta in (0, 1]; a measured ratio is floored here.
THETA_MIN = 0.01
SIZE = 32  # the tiny model's input side, pixels


def tiny_net(n_classes: int, seed: int = 0):
    """conv(8)-pool-conv(16)-pool-conv(32)-global pool-linear: the perception model theta trains."""
    torch = require("torch", extra="genai", feature="theta")
    nn = torch.nn
    torch.manual_seed(int(seed))
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, n_classes))


def _tensor(images: np.ndarray):
    import cv2

    torch = require("torch", extra="genai", feature="theta")
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"images must be (B, H, W, 3) uint8, got {x.shape}", field="images")
    if x.shape[1] != SIZE or x.shape[2] != SIZE:
        x = np.stack([cv2.resize(i, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for i in x])
    return (torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.25


@lru_cache(maxsize=8)
def eval_set(per_class: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The held-apart evaluation crops: (N, 32, 32, 3) uint8 and kind ids (index in SIGN_CLASSES).

    Independent painter, stream 2 (neither the validator's training nor its test stream);
    speed limits of mixed values count as the kind ``speed_limit``."""
    from carla_mr.genai.validator_art import REJECT, kind_of, sign_crop, validator_classes

    rng = np.random.default_rng([int(seed), 2])
    xs, ys = [], []
    names = [n for n in validator_classes() if n != REJECT]
    for kind_id, kind in enumerate(SIGN_CLASSES):
        members = [n for n in names if kind_of(n) == kind]
        for i in range(int(per_class)):
            xs.append(sign_crop(members[i % len(members)], rng, SIZE))
            ys.append(kind_id)
    x, y = np.stack(xs), np.array(ys, np.int64)
    x.flags.writeable = False
    return x, y


def _kind_ids(kinds: Sequence[str]) -> np.ndarray:
    from carla_mr.genai.validator_art import kind_of

    out = []
    for k in kinds:
        kk = kind_of(str(k))
        if kk not in SIGN_CLASSES:
            raise InputError(f"unknown sign class {k!r}; known: {', '.join(SIGN_CLASSES)}", field="kinds")
        out.append(SIGN_CLASSES.index(kk))
    return np.array(out, np.int64)


def fit_tiny(net, x_t, y_t, *, steps: int, lr: float = 3e-3, batch: int = 32, seed: int = 0,
             balanced: bool = True) -> None:
    """``steps`` Adam steps of cross-entropy on (x_t, y_t) tensors, batches of ``batch`` drawn
    with a generator seeded ``seed``: class-balanced with replacement (``balanced``) or uniform;
    half of the batches shifted by one pixel. Leaves ``net`` in eval mode."""
    torch = require("torch", extra="genai", feature="theta")
    gen = torch.Generator().manual_seed(int(seed))
    ce = torch.nn.functional.cross_entropy
    labels = y_t.numpy()
    weights = torch.from_numpy(1.0 / np.bincount(labels)[labels])  # class-balanced draws
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(int(steps)):
        n = min(batch, len(x_t))
        idx = torch.multinomial(weights, n, replacement=True, generator=gen) if balanced else \
            torch.randint(0, len(x_t), (n,), generator=gen)
        xb = x_t[idx]
        if torch.rand((), generator=gen) < 0.5:  # mirror-free jitter: a one-pixel shift
            xb = torch.roll(xb, shifts=(1, -1), dims=(2, 3))
        loss = ce(net(xb), y_t[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()


def theta_of(images: np.ndarray, kinds: Sequence[str], *, steps: int = 30, lr: float = 3e-3, batch: int = 32,
             seed: int = 0, eval_per_class: int = 40) -> dict:
    """theta of one generated set (module docstring): {"theta", "err_before", "err_after",
    "acc_after", "loss_before", "loss_after", "n", "kinds", "steps"}; theta NaN for an empty
    set or a set of one kind."""
    torch = require("torch", extra="genai", feature="theta")
    images = np.asarray(images)
    if len(images) != len(kinds):
        raise InputError(f"{len(images)} images but {len(kinds)} prompted classes", field="kinds")
    nan = float("nan")
    if len(images) == 0:
        return {"theta": nan, "err_before": nan, "err_after": nan, "loss_before": nan, "loss_after": nan, "n": 0}
    y = _kind_ids(kinds)
    present = np.unique(y)
    n_kinds = int(present.size)
    out = {"n": int(len(images)), "kinds": [SIGN_CLASSES[i] for i in present], "steps": int(steps),
           "err_before": 1.0 - 1.0 / n_kinds, "loss_before": float(np.log(n_kinds))}
    if n_kinds < 2:  # one kind: nothing to tell apart, theta not measurable
        return {"theta": nan, **out, "err_after": nan, "acc_after": nan, "loss_after": nan}
    ex, ey = eval_set(int(eval_per_class))
    keep = np.isin(ey, present)
    # labels and logits among the present kinds only (index into ``present``)
    ex_t, ey_t = _tensor(ex[keep]), torch.from_numpy(np.searchsorted(present, ey[keep]))
    x_t, y_t = _tensor(images), torch.from_numpy(np.searchsorted(present, y))
    net = tiny_net(n_kinds, seed)
    ce = torch.nn.functional.cross_entropy
    fit_tiny(net, x_t, y_t, steps=steps, lr=lr, batch=batch, seed=seed, balanced=True)
    with torch.no_grad():
        logits = net(ex_t)
        loss_after = float(ce(logits, ey_t))
        acc = float((logits.argmax(1) == ey_t).double().mean())
    err_after = 1.0 - acc
    theta = float(np.clip(err_after / out["err_before"], THETA_MIN, 1.0))
    return {"theta": theta, **out, "err_after": err_after, "acc_after": acc, "loss_after": loss_after}
