"""The sampler is exact for a known denoiser: with the optimal noise predictor of a single
data point x0, DPM-Solver++ and DDIM must return x0 (whatever the prompt or seed)."""

from __future__ import annotations

import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.genai.model import load_model  # noqa: E402
from carla_mr.genai.sample import sample  # noqa: E402


class OracleUNet(torch.nn.Module):
    """eps*(x_t, t) = (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t) for the one-point data set {x0}."""

    def __init__(self, x0, alphas_cumprod):
        super().__init__()
        self.x0 = x0
        self.ac = alphas_cumprod
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = types.SimpleNamespace(in_channels=3, sample_size=x0.shape[-1], block_out_channels=(1, 1, 1))

    def forward(self, x, t, encoder_hidden_states=None):
        a = self.ac[int(t)]
        return types.SimpleNamespace(sample=(x - a.sqrt() * self.x0) / (1 - a).sqrt())


@pytest.mark.parametrize("sampler", ["dpm", "ddim"])
def test_oracle_denoiser_recovers_the_data_point(tiny_model_dir, sampler):
    from diffusers import DDPMScheduler

    m = load_model(tiny_model_dir)
    ac = DDPMScheduler.from_config(m.scheduler_config).alphas_cumprod
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    x0 = torch.from_numpy(target).permute(2, 0, 1)[None].float() / 127.5 - 1
    m.unet = OracleUNet(x0, ac)
    out = sample(m, ["a stop sign on a blue background", "a yield sign"], seed=5, steps=20, sampler=sampler,
                 guidance=3.0)
    assert out.shape == (2, 16, 16, 3)
    assert np.abs(out.astype(int) - target[None].astype(int)).max() <= 2
