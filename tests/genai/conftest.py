"""Shared tiny models for the genai tests (built locally in seconds, never downloaded)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

TINY_UNET = dict(block_out_channels=(16, 16, 16), norm_num_groups=8)
TINY_TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, projection_dim=16)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 16x16 pixel-space model saved in the StableDiffusionPipeline layout."""
    from carla_mr.genai.model import build_tiny, save_model

    m = build_tiny(image_size=16, unet_overrides=TINY_UNET, text_overrides=TINY_TEXT, seed=0)
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_model(m, d)
    return d


@pytest.fixture(scope="session")
def tokenizer():
    from carla_mr.genai.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(32)


@pytest.fixture(scope="session")
def fresh_tiny():
    """A factory of freshly initialised tiny 16x16 models (same seed -> same weights)."""
    from carla_mr.genai.model import build_tiny

    def make(seed: int = 0):
        return build_tiny(image_size=16, unet_overrides=TINY_UNET, text_overrides=TINY_TEXT, seed=seed)

    return make
