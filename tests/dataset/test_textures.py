"""Sign swaps: seeded, the right share, folder > generator > procedural, labelled sources."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.dataset.textures import choose_swaps, index_texture_dir
from carla_mr.errors import InputError
from carla_mr.world.base import SignTable


def table(kinds):
    n = len(kinds)
    o = lambda v: np.array(v, dtype=object)  # noqa: E731
    z = np.zeros(n)
    return SignTable(o([f"s{i}" for i in range(n)]), o(kinds), np.full(n, 30.0), o(["x"] * n), z, z, z, z, z, z,
                     np.zeros(n, np.int64))


KINDS = ["stop", "speed_limit", "traffic_light", "yield", "speed_limit", "traffic_light", "parking", "warning"]


@settings(max_examples=30, deadline=None)
@given(st.floats(0, 1), st.integers(0, 2 ** 31))
def test_share_seeded_and_no_traffic_lights(share, seed):
    t = table(KINDS)
    a = choose_swaps(t, share, seed)
    assert len(a) == round(share * 6)
    assert all(t.kind[int(k[1:])] != "traffic_light" for k in a)
    assert all(v.source == "generated" and v.ref.startswith("procedural:") for v in a.values())
    b = choose_swaps(t, share, seed)
    assert list(a) == list(b) and all(np.array_equal(a[k].image, b[k].image) for k in a)


def test_folder_then_generator_then_procedural(tmp_path):
    (tmp_path / "stop").mkdir()
    cv2.imwrite(str(tmp_path / "stop" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "yield_1.jpg"), np.zeros((8, 8, 3), np.uint8))
    idx = index_texture_dir(tmp_path)
    assert set(idx) == {"stop", "yield"}
    calls = []

    def gen(kinds, seeds):
        calls.append((kinds, seeds))
        return [(np.full((16, 16, 3), 7, np.uint8), f"fake:{k}") for k in kinds]

    t = table(KINDS)
    out = choose_swaps(t, 1.0, 3, tmp_path, generator=gen)
    refs = {t.kind[int(k[1:])]: v.ref for k, v in out.items()}
    assert refs["stop"] == "stop/a.png" and refs["yield"] == "yield_1.jpg"
    assert refs["speed_limit"] == "fake:speed_limit" and refs["parking"] == "fake:parking"
    assert len(calls) == 1 and sorted(calls[0][0]) == ["parking", "speed_limit", "speed_limit", "warning"]
    with pytest.raises(InputError, match="texture_dir"):
        index_texture_dir(tmp_path / "missing")


def test_texture_source_modes(tmp_path):
    from carla_mr.config.dataset import RecorderConfig
    from carla_mr.dataset.textures import swaps_for

    t = table(KINDS)
    with pytest.raises(InputError, match="texture_dir"):
        swaps_for(RecorderConfig(swap_share=0.5, texture_source="folder"), t, 0)
    with pytest.raises(InputError, match="genai"):
        swaps_for(RecorderConfig(swap_share=0.5, texture_source="genai", genai_model=str(tmp_path / "none")), t, 0)
    proc = swaps_for(RecorderConfig(swap_share=0.5, texture_source="procedural"), t, 0)
    assert len(proc) == 3 and all(v.ref.startswith("procedural:") for v in proc.values())
    assert swaps_for(RecorderConfig(swap_share=0.0), t, 0) == {}


def test_genai_model_generates_the_swaps_deterministically(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from carla_mr.config.dataset import RecorderConfig
    from carla_mr.dataset.textures import swaps_for
    from carla_mr.genai.model import build_tiny, save_model

    save_model(build_tiny(image_size=32), tmp_path / "tiny")
    cfg = RecorderConfig(swap_share=0.5, texture_source="genai", genai_model=str(tmp_path / "tiny"), genai_steps=2)
    t = table(KINDS)
    a, b = swaps_for(cfg, t, 4), swaps_for(cfg, t, 4)
    assert len(a) == 3 and all(v.ref.startswith("genai:tiny:") and v.image.shape == (32, 32, 3) for v in a.values())
    assert all(np.array_equal(a[k].image, b[k].image) for k in a)  # resumable recordings need this
