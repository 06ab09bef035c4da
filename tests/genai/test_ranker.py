"""Best-of-k speed values: the ranker's pick, candidate 0 = plain sampling, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.config.vocab import SPEED_VALUES  # noqa: E402
from carla_mr.errors import InputError  # noqa: E402
from carla_mr.genai import ranker as R  # noqa: E402


@pytest.fixture(scope="module")
def model():
    from carla_mr.genai.api import load_default_generator

    return load_default_generator()


def test_committed_ranker_reads_the_wanted_value_among_templates():
    """Among 4 templates of different values the committed ranker gives the wanted value the
    highest probability (templates of a seed it never trained on), shifted a pixel or not."""
    r = R.load_ranker()
    x, y = R.template_set(4, seed=777)
    speed = y < len(SPEED_VALUES)
    x, y = x[speed], y[speed]
    rng = np.random.default_rng(0)
    hits = []
    for i in rng.choice(len(x), 36, replace=False):
        pool = [i, *rng.choice(np.flatnonzero(y != y[i]), 3, replace=False)]
        p = R.shifted_probs(r, x[pool])
        assert p.shape == (4, len(r.class_names)) and np.allclose(p.sum(1), 1, atol=1e-5)
        hits.append(p[:, y[i]].argmax() == 0)
    assert np.mean(hits) >= 0.9
    meta = json.loads((R.DEFAULT_RANKER / "validator.json").read_text())
    assert meta["class_names"] == list(R.RANKER_CLASSES) and meta["template_accuracy"] >= 0.9


def test_best_of_k_keeps_candidate_zero_as_plain_sampling(model):
    from carla_mr.genai.prompts import prompt_for
    from carla_mr.genai.sample import sample

    torch.set_num_threads(1)
    values = [30, None, 120]
    kinds = ["speed_limit", "stop", "speed_limit"]
    prompts = [prompt_for(k, "white", value=v) for k, v in zip(kinds, values)]
    plain = sample(model, prompts, seed=5, steps=2)
    one = R.best_of_k(model, prompts, values, seed=5, k=1, steps=2)
    assert np.array_equal(one.images, plain) and one.candidates.shape == (1, 3, 32, 32, 3)
    three = R.best_of_k(model, prompts, values, seed=5, k=3, steps=2, round_size=2)
    assert three.candidates.shape == (3, 3, 32, 32, 3) and three.drawn.tolist() == [3, 1, 3]
    assert np.isnan(three.confidence[1]) and np.all(three.confidence[[0, 2]] > 0)
    assert np.array_equal(three.candidates[0], plain)
    assert three.picked[1] == 0 and np.array_equal(three.images[1], plain[1])  # no value: never re-sampled
    assert all(np.array_equal(three.candidates[c, 1], plain[1]) for c in range(3))
    for i in (0, 2):
        assert np.array_equal(three.images[i], three.candidates[three.picked[i], i])
        assert not np.array_equal(three.candidates[1, i], three.candidates[2, i])  # other noise
    # a candidate is the image its own seed gives (up to float rounding of another batch size)
    alone = sample(model, [prompts[2]], seeds=[5 + 2 + 2 * R.CANDIDATE_STRIDE], steps=2)
    assert np.abs(three.candidates[2, 2].astype(int) - alone[0]).max() <= 2


def test_best_of_k_stops_drawing_once_the_ranker_is_sure(model, monkeypatch):
    """Rounds of candidates go on only for prompts whose best reading is below confidence."""
    torch.set_num_threads(1)
    sure = {0: 0.95, 2: 0.2}  # prompt 0: the ranker is sure of candidate 0; prompt 2: never

    def fake_probs(ranker, imgs):
        p = np.zeros((len(imgs), len(R.RANKER_CLASSES)))
        p[:, :] = 1.0 / len(R.RANKER_CLASSES)
        return p

    calls = []

    def scored(ranker, imgs):
        calls.append(len(imgs))
        p = fake_probs(ranker, imgs)
        if len(calls) == 1:  # candidate 0 of prompts 0 and 2
            p[0, R.RANKER_CLASSES.index("speed_limit_30")] = sure[0]
            p[1, R.RANKER_CLASSES.index("speed_limit_120")] = sure[2]
        return p

    monkeypatch.setattr(R, "shifted_probs", scored)
    out = R.best_of_k(model, ["a speed limit 30 sign", "a stop sign", "a speed limit 120 sign"], [30, None, 120],
                      k=7, confidence=0.9, round_size=4, steps=1)
    assert out.drawn.tolist() == [1, 1, 7] and calls == [2, 4, 2]  # rounds of 4 then the 2 left
    assert out.picked[0] == 0 and out.confidence[0] == pytest.approx(0.95)
    assert not out.candidates[1:, 0].any() and out.candidates[6, 2].any()


def test_best_of_k_bad_input(model, tmp_path):
    with pytest.raises(InputError, match="one value"):
        R.best_of_k(model, ["a stop sign"], [], k=2, steps=1)
    with pytest.raises(InputError, match="value_candidates"):
        R.best_of_k(model, ["a stop sign"], [None], k=0, steps=1)
    with pytest.raises(InputError, match="speed values"):
        R.best_of_k(model, ["a speed limit sign"], [35], k=2, steps=1)
    with pytest.raises(InputError, match="value_confidence"):
        R.best_of_k(model, ["a speed limit sign"], [30], k=2, confidence=1.5, steps=1)
    from carla_mr.genai.validator import build_validator

    build_validator("small", ["stop", "yield"], width=4).save(tmp_path / "v")
    with pytest.raises(InputError, match="cannot rank speed values"):
        R.load_ranker(tmp_path / "v")
    with pytest.raises(InputError, match="not a validator directory"):
        R.load_ranker(tmp_path / "nothing")


def test_train_ranker_cli_and_evaluate_with_candidates(tmp_path):
    from click.testing import CliRunner

    from carla_mr.cli import main

    def run(args):
        return CliRunner().invoke(main, ["genai", *args], catch_exceptions=False)

    r = run(["train-ranker", "--per-class", "3", "--test-per-class", "1", "--epochs", "1", "--width", "4",
             "--threads", "1", "--out", str(tmp_path / "rk"), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])
    assert res["n_train"] == 3 * len(R.RANKER_CLASSES) and 0 <= res["template_accuracy"] <= 1
    assert R.load_ranker(tmp_path / "rk").class_names == list(R.RANKER_CLASSES)
    r = run(["train-ranker", "--per-class", "0", "--out", str(tmp_path / "bad"), "--json"])
    assert r.exit_code == 2 and "--per-class" in r.output and not (tmp_path / "bad").exists()
    out = tmp_path / "ev"
    r = run(["evaluate", "--values", "--value-candidates", "2", "--per-prompt", "1", "--steps", "2",
             "--threads", "1", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.output.strip().splitlines()[-1])
    assert ev["value_candidates"] == 2 and ev["n"] == len(SPEED_VALUES) and ev["mean_drawn"] == 2
    # the pick is one of the candidates, so any-of-k bounds it; candidate 0 alone is reported beside
    assert ev["value_accuracy"] <= ev["any_of_k"] + 1e-9 and ev["plain"]["value_accuracy"] <= ev["any_of_k"] + 1e-9
    assert (out / "values_grid.png").is_file()
    r = run(["evaluate", "--values", "--value-candidates", "2", "--ranker", str(tmp_path / "nothing"),
             "--out", str(tmp_path / "ev2"), "--json"])
    assert r.exit_code == 2 and "ranker" in r.output.lower()
