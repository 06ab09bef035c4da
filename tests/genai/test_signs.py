"""Sign faces: shapes, alpha, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.genai.signs import SIGN_CLASSES, composite, sign_class_id, sign_face


@pytest.mark.parametrize("kind", SIGN_CLASSES)
def test_face_shape_alpha_and_determinism(kind):
    f = sign_face(kind, size=64)
    assert f.shape == (64, 64, 4) and f.dtype == np.uint8
    assert f[0, 0, 3] == 0 and f[-1, -1, 3] == 0 or kind == "parking"  # corners outside the shape
    assert f[32, 32, 3] == 255  # centre inside
    assert np.array_equal(f, sign_face(kind, size=64))
    g = sign_face(kind, size=64, background=(0, 255, 0))
    assert (g[..., 3] == 255).all()
    if kind != "parking":
        assert tuple(g[0, 0, :3]) == (0, 255, 0)


def test_faces_differ_between_kinds():
    faces = [sign_face(k, size=32).astype(int) for k in SIGN_CLASSES]
    for i in range(len(faces)):
        for j in range(i + 1, len(faces)):
            assert np.abs(faces[i] - faces[j]).mean() > 5


def test_speed_limit_digits_and_arrow_direction_change_the_face():
    assert not np.array_equal(sign_face("speed_limit", 30), sign_face("speed_limit", 80))
    up = sign_face("mandatory_arrow", 0)
    right = sign_face("mandatory_arrow", 90)
    assert not np.array_equal(up, right)
    # rotating the up-arrow by 90 degrees clockwise gives (nearly) the right-arrow
    assert np.abs(np.rot90(up, k=-1).astype(int) - right.astype(int)).mean() < 3


def test_unknown_kind_and_bad_size():
    with pytest.raises(InputError, match="unknown sign class"):
        sign_face("lollipop")
    with pytest.raises(InputError):
        sign_face("stop", size=2)
    with pytest.raises(InputError):
        sign_class_id("zebra")
    assert sign_class_id("stop") == 0


def test_composite_over_image():
    bg = np.full((16, 16, 3), 7, np.uint8)
    out = composite(sign_face("stop", size=16), bg)
    assert out.shape == (16, 16, 4) and out[0, 0, 0] == 7
