"""G, theta, the Frechet distance, colour match and the market link on known inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.errors import InputError
from carla_mr.genai.market_link import market_parameters
from carla_mr.genai.prompts import COLOURS
from carla_mr.genai.scores import colour_match, frechet_distance, generative_score


class FixedValidator:
    """A validator stand-in whose probabilities are given."""

    def __init__(self, probs, names):
        self._p = np.asarray(probs, float)
        self.class_names = list(names)

    def probs(self, images):
        return self._p[: len(images)]

    def class_index(self, k):
        if k not in self.class_names:
            raise InputError(f"unknown {k}", field="class")
        return self.class_names.index(k)


def test_G_and_confidence_on_known_probabilities():
    names = ["stop", "yield", "parking"]
    p = [[0.7, 0.2, 0.1],  # stop, right
         [0.6, 0.3, 0.1],  # prompted yield, predicted stop
         [0.1, 0.1, 0.8],  # parking, right
         [0.2, 0.5, 0.3]]  # yield, right
    v = FixedValidator(p, names)
    s = generative_score(v, np.zeros((4, 8, 8, 3), np.uint8), ["stop", "yield", "parking", "yield"])
    assert s["G"] == pytest.approx(0.75)
    assert s["mean_confidence"] == pytest.approx((0.7 + 0.3 + 0.8 + 0.5) / 4)
    assert s["predicted"] == ["stop", "stop", "parking", "yield"]
    assert s["recognised"] == [True, False, True, True]
    with pytest.raises(InputError):
        generative_score(v, np.zeros((4, 8, 8, 3), np.uint8), ["stop", "yield", "parking", "zebra"])
    with pytest.raises(InputError):
        generative_score(v, np.zeros((3, 8, 8, 3), np.uint8), ["stop"])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 40), st.integers(1, 6), st.integers(0, 10_000))
def test_G_is_share_of_argmax_hits(n, c, seed):
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(c + 1), size=n)
    names = [f"k{i}" for i in range(c + 1)]
    kinds = [names[i] for i in rng.integers(0, c + 1, n)]
    s = generative_score(FixedValidator(p, names), np.zeros((n, 4, 4, 3), np.uint8), kinds)
    expect = np.mean([p[i].argmax() == names.index(k) for i, k in enumerate(kinds)])
    assert s["G"] == pytest.approx(expect) and 0 <= s["G"] <= 1


def test_frechet_distance_known_values():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    b = a + np.array([3.0, 0.0, 4.0])  # pure shift: d = |shift|^2
    assert frechet_distance(a, b) == pytest.approx(25.0, rel=1e-6)
    c = a * 2.0  # cov 4I vs I (approximately): d ~= 3 * (1 + 4 - 2*2) = 3
    assert frechet_distance(a, c) == pytest.approx(3.0, rel=0.1)
    with pytest.raises(InputError):
        frechet_distance(a[:, :2], b)


def test_colour_match_counts_the_border_colour():
    imgs = np.stack([np.full((8, 8, 3), COLOURS[c], np.uint8) for c in ("red", "blue", "green")])
    r = colour_match(imgs, ["red", "blue", "red"])
    assert r["colour_match"] == pytest.approx(2 / 3) and r["chance"] == pytest.approx(1 / len(COLOURS))


def test_theta_is_high_for_true_labels_and_low_for_wrong_ones():
    torch = pytest.importorskip("torch")
    from carla_mr.genai.procedural import split_arrays
    from carla_mr.genai.scores import relative_accuracy
    from carla_mr.genai.validator import build_validator, fit

    kinds = ("stop", "no_entry", "parking", "priority_road")
    xtr, ytr = split_arrays("train", per_class=40, seed=1, kinds=kinds)
    xte, yte = split_arrays("test", per_class=25, seed=1, kinds=kinds)
    v = build_validator("small", list(kinds), width=8)
    fit(v, xtr, ytr, epochs=12, seed=0)
    acc = v.accuracy(xte, yte)
    assert acc > 0.6
    good = relative_accuracy(v, xtr, [kinds[i] for i in ytr], xte, yte, epochs=3, lr=2e-3, seed=0)
    bad = relative_accuracy(v, xtr, ["stop"] * len(xtr), xte, yte, epochs=3, lr=2e-3, seed=0)
    assert good["acc_before"] == pytest.approx(acc)
    assert good["theta"] > 0.85
    assert bad["theta"] < 0.6 and bad["theta"] < good["theta"]
    assert 0 <= bad["theta"] <= 1


def test_market_parameters(tmp_path):
    (tmp_path / "scores.json").write_text(json.dumps({"G": 0.8, "theta": 0.0, "G_background": 0.7,
                                                      "theta_background": 0.42, "G_context": 0.9}))
    p = market_parameters(tmp_path)
    assert p["G"] == 0.8 and p["theta"] == 0.01  # theta floored into the market's (0, 1]
    assert market_parameters(tmp_path, "background")["theta"] == 0.42
    with pytest.raises(InputError, match="--theta"):
        market_parameters(tmp_path, "context")
    with pytest.raises(InputError):
        market_parameters(tmp_path / "nope")
    with pytest.raises(InputError):
        market_parameters(tmp_path, "weird")


def test_theta_scratch_mode_real_vs_wrong_labels():
    pytest.importorskip("torch")
    from carla_mr.genai.procedural import split_arrays
    from carla_mr.genai.scores import relative_accuracy_scratch

    kinds = ("stop", "no_entry", "parking", "priority_road")
    xtr, ytr = split_arrays("train", per_class=30, seed=3, kinds=kinds)
    xte, yte = split_arrays("test", per_class=20, seed=3, kinds=kinds)
    good = relative_accuracy_scratch(kinds, xtr, [kinds[i] for i in ytr], xte, yte, width=8, epochs=8, min_steps=40)
    shuffled = [kinds[(i + 1) % 4] for i in ytr]  # every label wrong
    bad = relative_accuracy_scratch(kinds, xtr, shuffled, xte, yte, width=8, epochs=8, min_steps=40)
    assert good["theta"] > 0.8 and bad["theta"] < 0.3
    assert good["acc_real"] == pytest.approx(bad["acc_real"])  # the real baseline does not depend on the labels' truth
    with pytest.raises(InputError):
        relative_accuracy_scratch(kinds, xtr[:2], ["zebra", "stop"], xte, yte)
