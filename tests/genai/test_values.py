"""Speed values in prompts and in the procedural training batches."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.errors import InputError
from carla_mr.genai.prompts import SPEED_VALUES, parse_prompt, prompt_for


def test_value_prompts_roundtrip():
    for v in SPEED_VALUES:
        p = prompt_for("speed_limit", "red", value=v, token="sks")
        assert p == f"a sks speed limit {v} sign on a red background"
        pp = parse_prompt(p)
        assert (pp.kind, pp.colour, pp.token, pp.value) == ("speed_limit", "red", "sks", v)
    assert parse_prompt("a speed limit sign").value is None
    with pytest.raises(InputError, match="value"):
        prompt_for("stop", value=30)
    with pytest.raises(InputError, match="speed value"):
        prompt_for("speed_limit", value=35)
    with pytest.raises(InputError, match="not a speed limit"):
        parse_prompt("a speed limit 35 sign")


def test_value_batch_draws_the_value_it_reports(monkeypatch):
    """Every image of a value batch is rendered with the kind, colour and value it reports."""
    import carla_mr.genai.procedural as proc

    calls = []
    real = proc.render_sample

    def spy(kind, rng, **kw):
        calls.append((kind, kw.get("background"), kw.get("value")))
        return real(kind, rng, **kw)

    monkeypatch.setattr(proc, "render_sample", spy)
    imgs, ks, cs, vs = proc.value_batch(np.random.default_rng(3), 40, size=16, speed_share=0.5)
    assert imgs.shape == (40, 16, 16, 3)
    assert calls == list(zip(ks, cs, vs))
    assert all((v in SPEED_VALUES) == (k == "speed_limit") for k, v in zip(ks, vs))
    assert 10 < ks.count("speed_limit") < 35  # about half with speed_share 0.5 (plus 1/8 of the rest)
