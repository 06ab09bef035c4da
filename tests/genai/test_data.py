"""Procedural data set, BelgiumTS/GTSRB loaders, prompts and preferences."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.genai.datasets import load_sign_dataset, write_gt_csv
from carla_mr.genai.procedural import render_sample, split_arrays, write_dataset
from carla_mr.genai.prompts import (COLOURS, Preferences, parse_prompt, preference_prompts, prompt_for)
from carla_mr.genai.signs import SIGN_CLASSES


def test_write_and_load_belgiumts_layout_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a", per_class=3, test_per_class=2, seed=7)
    write_dataset(tmp_path / "b", per_class=3, test_per_class=2, seed=7)
    assert a["train"] == 3 * len(SIGN_CLASSES)
    csv = (tmp_path / "a" / "Training" / "00002" / "GT-00002.csv").read_text().splitlines()
    assert csv[0] == "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId" and len(csv) == 4
    tr = load_sign_dataset(tmp_path / "a", "train")
    te = load_sign_dataset(tmp_path / "a", "test")
    assert len(tr) == 24 and len(te) == 16
    assert tr.class_names[0] == "stop"
    xa, xb = tr.images(32), load_sign_dataset(tmp_path / "b", "train").images(32)
    assert np.array_equal(xa, xb)  # deterministic for a seed
    # the held-apart test split is a different stream
    assert not np.array_equal(te.images(32)[:8], xa[:8])
    # in-memory split_arrays reproduces the written set exactly
    xm, ym = split_arrays("test", per_class=2, seed=7)
    assert np.array_equal(xm, te.images(32)) and np.array_equal(ym, te.labels)
    for r in tr.records:
        x1, y1, x2, y2 = r.roi
        assert 0 <= x1 < x2 < r.width and 0 <= y1 < y2 < r.height


def test_gtsrb_layout_loads(tmp_path):
    import cv2

    root = tmp_path / "GTSRB"
    rng = np.random.default_rng(0)
    rows_test = []
    for cid in (0, 1):
        d = root / "Final_Training" / "Images" / f"{cid:05d}"
        d.mkdir(parents=True)
        rows = []
        for i in range(2):
            img, roi = render_sample(SIGN_CLASSES[cid], rng, size=30)
            name = f"00000_{i:05d}.ppm"
            cv2.imwrite(str(d / name), img[..., ::-1])
            rows.append((name, 30, 30, *roi, cid))
        write_gt_csv(d / f"GT-{cid:05d}.csv", rows)
    dt = root / "Final_Test" / "Images"
    dt.mkdir(parents=True)
    for i in range(3):
        img, roi = render_sample("yield", rng, size=30)
        cv2.imwrite(str(dt / f"{i:05d}.ppm"), img[..., ::-1])
        rows_test.append((f"{i:05d}.ppm", 30, 30, *roi, 1))
    write_gt_csv(dt / "GT-final_test.csv", rows_test)
    tr = load_sign_dataset(root, "train")
    te = load_sign_dataset(root, "test")
    assert len(tr) == 4 and len(te) == 3 and set(te.labels) == {1}
    assert tr.images(24).shape == (4, 24, 24, 3)


def test_loader_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_sign_dataset(tmp_path / "nope")
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="GT-"):
        load_sign_dataset(tmp_path / "x")
    (tmp_path / "x" / "GT-00000.csv").write_text("Filename;Width\nfoo.ppm;3\n")
    with pytest.raises(InputError, match="lacks the columns"):
        load_sign_dataset(tmp_path / "x")


def test_render_sample_uses_the_prompted_background():
    rng = np.random.default_rng(0)
    img, roi = render_sample("stop", rng, size=32, background="blue")
    corner = img[:3, :3].reshape(-1, 3).mean(0)
    assert np.abs(corner - np.array(COLOURS["blue"])).max() < 40
    with pytest.raises(InputError):
        render_sample("zebra", rng)


def test_prompts_roundtrip_and_errors():
    for k in SIGN_CLASSES:
        for c in COLOURS:
            p = parse_prompt(prompt_for(k, c))
            assert (p.kind, p.colour, p.token) == (k, c, None)
        p = parse_prompt(prompt_for(k, "red", token="sks"))
        assert (p.kind, p.token) == (k, "sks")
        p = parse_prompt(prompt_for(k, None, context="a snowy road"))
        assert p.context == "a snowy road" and p.colour is None
    with pytest.raises(InputError, match="no known sign class"):
        parse_prompt("a unicorn sign on a blue background")
    with pytest.raises(InputError, match="colour"):
        parse_prompt("a stop sign on a teal background")
    with pytest.raises(InputError):
        prompt_for("zebra")


def test_preferences_to_prompts():
    specs = preference_prompts(Preferences(signs=["stop", "yield"], colours=["red", "blue"], contexts=["a city street"]))
    assert len(specs) == 2 * 2 + 2
    assert {s.subset for s in specs} == {"background", "context"}
    assert specs[0].prompt == "a stop sign on a red background"
    assert any(s.prompt == "a yield sign in a city street" for s in specs)
    with pytest.raises(InputError):
        Preferences(signs=["zebra"])
    with pytest.raises(InputError):
        Preferences(colours=["teal"])


def test_genai_config_section():
    from pydantic import ValidationError

    from carla_mr.config.genai import GenaiConfig

    c = GenaiConfig()
    assert c.enabled is False and c.steps == 20 and set(c.preferences.signs) == set(SIGN_CLASSES)
    with pytest.raises(ValidationError):
        GenaiConfig(preferences={"signs": ["zebra"]})
    with pytest.raises(ValidationError):
        GenaiConfig(preferences={"colours": ["teal"]})
    with pytest.raises(ValidationError):
        GenaiConfig(bogus=1)
