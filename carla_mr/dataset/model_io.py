"""Small helpers shared by the models under test: crop resizing and state-dict checks."""

from __future__ import annotations

import numpy as np

from carla_mr.errors import InputError


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` resized to (size, size): area interpolation when shrinking, linear when growing."""
    import cv2

    interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def check_state_keys(module, state, checkpoint) -> None:
    """Raise InputError naming the missing / unexpected keys when ``state`` is not ``module``'s."""
    if not isinstance(state, dict):
        raise InputError(f"{checkpoint} holds a {type(state).__name__}, not a state dict (name -> tensor)",
                         field="perception.checkpoint")
    want, got = set(module.state_dict()), set(state)
    missing, unexpected = sorted(want - got), sorted(got - want)
    if missing or unexpected:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"
        raise InputError(f"{checkpoint} does not match {type(module).__name__}: missing keys {few(missing)}; "
                         f"unexpected keys {few(unexpected)}", field="perception.checkpoint")
