"""Tiny text-to-image models: save_pretrained -> from_pretrained, sampling, training, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.errors import InputError  # noqa: E402
from carla_mr.genai.model import load_model, save_model  # noqa: E402
from carla_mr.genai.sample import sample  # noqa: E402


def test_layout_is_stable_diffusion_pipeline(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["vae"] == [None, None]  # pixel space
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / sub).is_dir()


def test_roundtrip_weights_and_samples(tiny_model_dir, tmp_path):
    m = load_model(tiny_model_dir)
    assert m.pixel_space and m.image_size == 16
    a = sample(m, ["a stop sign on a blue background", "a yield sign"], seed=3, steps=3)
    assert a.shape == (2, 16, 16, 3) and a.dtype == np.uint8
    # deterministic per image seed, independent of batching
    b = sample(m, ["a yield sign"], seeds=[4], steps=3)
    assert np.array_equal(a[1], b[0])
    save_model(m, tmp_path / "again")
    m2 = load_model(tmp_path / "again")
    for (k, v), (k2, v2) in zip(m.unet.state_dict().items(), m2.unet.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert np.array_equal(sample(m2, ["a yield sign"], seeds=[4], steps=3), b)
    # DDIM also runs and differs from DPM-Solver
    c = sample(m2, ["a yield sign"], seeds=[4], steps=3, sampler="ddim")
    assert c.shape == b.shape


def test_half_save_is_smaller_and_loads_as_float32(tiny_model_dir, tmp_path):
    m = load_model(tiny_model_dir)
    save_model(m, tmp_path / "half", half=True)
    m2 = load_model(tmp_path / "half")
    assert next(m2.unet.parameters()).dtype == torch.float32
    full = (tiny_model_dir / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    half = (tmp_path / "half" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert half < 0.6 * full


def test_diffusers_pipeline_loads_our_checkpoint(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    # pixel space: the VAE slot is empty, so vae=None is passed explicitly
    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_model_dir), vae=None, safety_checker=None,
                                                   feature_extractor=None)
    assert pipe.vae is None
    # without a VAE diffusers assumes a scale factor of 8: ask for 8x the pixel size
    out = pipe("a stop sign on a red background", height=128, width=128, num_inference_steps=2,
               output_type="latent", generator=torch.Generator().manual_seed(0)).images
    assert tuple(out.shape) == (1, 3, 16, 16)


def test_missing_or_wrong_checkpoint(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="model_index.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(InputError, match="hub id"):
        load_model("someone/some-model")  # a hub id without network access is refused, not fetched


def test_train_base_resume_matches_uninterrupted(fresh_tiny, tmp_path):
    from carla_mr.genai.train import BaseTrainConfig, train_base

    fresh = fresh_tiny

    cfg = BaseTrainConfig(steps=4, batch_size=4, image_size=16, save_every=2, log_every=1, threads=1, half_save=False)
    a = train_base(tmp_path / "a", cfg, model=fresh())
    # interrupted run: 2 steps, then resume to 4
    cfg2 = BaseTrainConfig(steps=2, batch_size=4, image_size=16, save_every=2, log_every=1, threads=1, half_save=False)
    train_base(tmp_path / "b", cfg2, model=fresh())
    b = train_base(tmp_path / "b", cfg, model=fresh(), resume=True)
    assert a["steps"] == b["steps"] == 4
    ma, mb = load_model(tmp_path / "a" / "model"), load_model(tmp_path / "b" / "model")
    for v1, v2 in zip(ma.unet.state_dict().values(), mb.unet.state_dict().values()):
        assert torch.allclose(v1, v2, atol=1e-5)
    log = (tmp_path / "b" / "train_log.csv").read_text().splitlines()
    assert [int(r.split(",")[0]) for r in log[1:]] == [1, 2, 3, 4]
    with pytest.raises(InputError, match="resume"):
        train_base(tmp_path / "c", cfg, model=fresh(), resume=True)


def test_train_tokens_moves_only_those_embedding_rows(fresh_tiny, tmp_path):
    """--train-tokens with a frozen text encoder: the named tokens' input embeddings train and
    every other text-encoder weight stays bit-identical (an upsampler sharing it stays valid)."""
    from carla_mr.genai.train import BaseTrainConfig, train_base

    before = fresh_tiny()
    cfg = BaseTrainConfig(steps=3, batch_size=4, image_size=16, save_every=10, log_every=1, threads=1,
                          half_save=False, value_prompts=True, speed_share=1.0, value_drop=0.0, cfg_drop=0.0,
                          train_text_encoder=False, train_tokens="0 1 2 3 4 5 6 7 8 9", token_lr=1e-2)
    train_base(tmp_path / "run", cfg, model=fresh_tiny())
    after = load_model(tmp_path / "run" / "model")
    digit_ids = sorted({i for d in "0123456789" for i in before.tokenizer(d).input_ids[1:-1]})
    e0 = before.text_encoder.get_input_embeddings().weight.detach()
    e1 = after.text_encoder.get_input_embeddings().weight.detach().float()
    moved = (e1 != e0).any(dim=1)
    assert set(torch.nonzero(moved).flatten().tolist()) <= set(digit_ids)
    assert moved[digit_ids].sum() >= 5  # the digits of the values drawn in 3 steps moved
    sd0, sd1 = before.text_encoder.state_dict(), after.text_encoder.state_dict()
    for k, v in sd0.items():
        if "token_embedding" not in k:
            assert torch.equal(v, sd1[k].float()), k
    with pytest.raises(InputError, match="freeze-text-encoder"):
        train_base(tmp_path / "bad", BaseTrainConfig(steps=1, batch_size=2, image_size=16, threads=1,
                                                     train_tokens="5"), model=fresh_tiny())


def test_widen_cross_attention_starts_as_the_same_function(fresh_tiny):
    """New cross-attention levels are exact identities until trained; the old weights are kept."""
    from carla_mr.genai.model import widen_cross_attention

    m = fresh_tiny()
    w = widen_cross_attention(m, 2)
    assert list(w.unet.config.down_block_types) == ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    assert list(w.unet.config.up_block_types) == ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    hs = m.encode_prompts(["a speed limit 30 sign on a red background", "a stop sign on a blue background"])
    with torch.no_grad():
        a = m.unet(x, torch.tensor([700, 50]), encoder_hidden_states=hs).sample
        b = w.unet(x, torch.tensor([700, 50]), encoder_hidden_states=hs).sample
    assert torch.equal(a, b)
    new = [k for k in w.unet.state_dict() if k not in m.unet.state_dict()]
    assert new and all(".attentions." in k for k in new)
    assert widen_cross_attention(w, 2) is w  # already that wide
    with pytest.raises(InputError, match="levels"):
        widen_cross_attention(m, 4)


def test_sample_rejects_bad_size_and_steps(tiny_model_dir):
    m = load_model(tiny_model_dir)
    with pytest.raises(InputError, match="multiple"):
        sample(m, ["a stop sign"], size=18, steps=2)
    with pytest.raises(InputError, match="steps"):
        sample(m, ["a stop sign"], steps=0)
    assert sample(m, ["a stop sign"], size=24, steps=2).shape == (1, 24, 24, 3)


def test_latent_model_with_vae_roundtrip_sample_and_dreambooth(tmp_path):
    """A Stable-Diffusion-shaped model (VAE + latent UNet) goes through the same code paths."""
    import cv2
    from diffusers import AutoencoderKL

    from carla_mr.genai.dreambooth import DreamBoothConfig, dreambooth
    from carla_mr.genai.model import build_tiny

    m = build_tiny(image_size=8, unet_overrides=dict(block_out_channels=(16, 16, 16), norm_num_groups=8,
                                                     in_channels=4, out_channels=4),
                   text_overrides=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, projection_dim=16))
    m.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          norm_num_groups=8, layers_per_block=1, sample_size=16)
    save_model(m, tmp_path / "sd")
    index = json.loads((tmp_path / "sd" / "model_index.json").read_text())
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    m2 = load_model(tmp_path / "sd")
    assert not m2.pixel_space and m2.vae_scale == 2 and m2.image_size == 16
    img = sample(m2, ["a stop sign on a red background"], steps=2)
    assert img.shape == (1, 16, 16, 3)
    inst = tmp_path / "inst"
    inst.mkdir()
    cv2.imwrite(str(inst / "a.png"), np.full((20, 20, 3), 128, np.uint8))
    res = dreambooth(tmp_path / "sd", inst, tmp_path / "db",
                     DreamBoothConfig(kind="stop", steps=2, batch_size=1, num_class_images=2, class_sample_steps=2,
                                      threads=1))
    assert res["lr"] == 5e-6  # the Stable Diffusion recipe for a latent model
    assert load_model(tmp_path / "db" / "model").vae is not None
