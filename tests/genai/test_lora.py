"""LoRA adapters in diffusers' format (loaded by diffusers' own loader) and schedulers kept on save."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from carla_mr.genai.model import build_tiny, load_model, save_model  # noqa: E402

TEXT = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, projection_dim=16)


def _sd15_layout(path):
    """A tiny model in the Stable Diffusion 1.5 folder layout (unet/ vae/ text_encoder/ tokenizer/
    scheduler/ model_index.json), built locally."""
    from diffusers import AutoencoderKL

    m = build_tiny(image_size=8, unet_overrides=dict(block_out_channels=(16, 16, 16), norm_num_groups=8,
                                                     in_channels=4, out_channels=4), text_overrides=TEXT)
    m.vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8),
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                          norm_num_groups=8, layers_per_block=1, sample_size=16)
    save_model(m, path)
    return path


def test_lora_adapter_loads_with_diffusers_load_lora_weights(tmp_path):
    from diffusers import StableDiffusionPipeline

    from carla_mr.genai.dreambooth import DreamBoothConfig, dreambooth

    base = _sd15_layout(tmp_path / "sd")
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (base / sub).is_dir()
    inst = tmp_path / "inst"
    inst.mkdir()
    for i in range(2):
        cv2.imwrite(str(inst / f"{i}.png"), np.full((16, 16, 3), 60 + 100 * i, np.uint8))
    dreambooth(base, inst, tmp_path / "db", DreamBoothConfig(kind="stop", steps=3, batch_size=2, num_class_images=2,
                                                             class_sample_steps=2, mode="lora", lr=5e-2, threads=1))
    lora_file = tmp_path / "db" / "lora" / "pytorch_lora_weights.safetensors"
    from safetensors.torch import load_file

    keys = list(load_file(str(lora_file)))
    assert keys and all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, feature_extractor=None)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    hs = torch.randn(1, 32, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = pipe.unet(x, 10, encoder_hidden_states=hs).sample
        pipe.load_lora_weights(str(tmp_path / "db" / "lora"))
        after = pipe.unet(x, 10, encoder_hidden_states=hs).sample
        fused = load_model(tmp_path / "db" / "model").unet(x, 10, encoder_hidden_states=hs).sample
    assert not torch.allclose(before, after, atol=1e-6)  # the adapter was applied
    assert torch.allclose(after, fused, atol=1e-3)  # ... and it is the one our fused checkpoint holds
    # our own loader gives the same weights
    from carla_mr.genai.lora import load_lora

    m = load_lora(load_model(base), tmp_path / "db" / "lora")
    with torch.no_grad():
        assert torch.allclose(m.unet(x, 10, encoder_hidden_states=hs).sample, fused, atol=1e-3)


@pytest.mark.parametrize("cls,kw", [("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)),
                                    ("PNDMScheduler", dict(skip_prk_steps=True)),
                                    ("DDPMScheduler", dict(clip_sample=True))])
def test_save_keeps_the_scheduler_class_and_config(tmp_path, cls, kw):
    import diffusers

    m = build_tiny(image_size=16, unet_overrides=dict(block_out_channels=(16, 16, 16), norm_num_groups=8),
                   text_overrides=TEXT)
    save_model(m, tmp_path / "a")
    sched = getattr(diffusers, cls)(num_train_timesteps=1000, beta_schedule="scaled_linear", **kw)
    sched.save_pretrained(str(tmp_path / "a" / "scheduler"))
    m2 = load_model(tmp_path / "a")
    save_model(m2, tmp_path / "b")  # what dreambooth / train-base --init do
    a = json.loads((tmp_path / "a" / "scheduler" / "scheduler_config.json").read_text())
    b = json.loads((tmp_path / "b" / "scheduler" / "scheduler_config.json").read_text())
    assert b["_class_name"] == cls
    assert json.loads((tmp_path / "b" / "model_index.json").read_text())["scheduler"] == ["diffusers", cls]
    for k, v in a.items():
        if not k.startswith("_"):
            assert b.get(k) == v, k


def test_lora_load_errors(tmp_path):
    from carla_mr.errors import InputError
    from carla_mr.genai.lora import load_lora

    with pytest.raises(InputError, match="pytorch_lora_weights"):
        load_lora(None, tmp_path)
    with pytest.raises(InputError, match="do not exist"):
        load_lora(None, tmp_path / "x.safetensors")
