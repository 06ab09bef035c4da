"""The super-resolution stage: tiny upsamplers built locally, pairs, training, save/load, sampling."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.errors import InputError  # noqa: E402
from carla_mr.genai.upsampler import (bicubic_baseline, bicubic_up, build_upsampler, from_patches,  # noqa: E402
                                      load_upsampler, residual_target, save_upsampler, to_patches, upsample)
from carla_mr.genai.upsampler_train import fit_pairs, pairs_from_images, render_pairs  # noqa: E402

TINY_UP = dict(block_out_channels=(16, 16, 16), norm_num_groups=8)


@pytest.fixture()
def tiny_up(fresh_tiny):
    text = fresh_tiny(0)
    return build_upsampler(text, low_size=8, factor=2, unet_overrides=TINY_UP), text


def test_patches_roundtrip_and_residual_law():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    assert torch.equal(from_patches(to_patches(x, 4), 4), x)
    assert to_patches(x, 4).shape == (2, 48, 4, 4)

    class U:  # residual_target only reads factor and residual_scale
        factor, residual_scale = 4, 3.0

    low = torch.nn.functional.avg_pool2d(x, 4)
    r = residual_target(U, x, low)
    # the residual plus the bicubic upscale gives the high-resolution image back
    assert torch.allclose(bicubic_up(low, 4) + from_patches(r, 4) / 3.0, x, atol=1e-5)


def test_render_pairs_are_consistent():
    high, low, prompts = render_pairs(5, low_size=8, factor=4, seed=1, speed_share=1.0, value_drop=0.0)
    assert high.shape == (5, 32, 32, 3) and low.shape == (5, 8, 8, 3) and high.dtype == np.uint8
    assert all(p.startswith("a speed limit ") and p.split()[3].isdigit() for p in prompts)
    h2, l2 = pairs_from_images(high, 4)
    assert np.array_equal(l2, low)
    a = render_pairs(3, low_size=8, factor=4, seed=1)
    b = render_pairs(3, low_size=8, factor=4, seed=1)
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_decoys_are_the_same_picture_with_other_digits():
    from carla_mr.genai.procedural import value_batch, value_batch_with_decoys

    imgs, ks, cs, vs = value_batch(np.random.default_rng(5), 24, size=32, speed_share=0.5)
    out = value_batch_with_decoys(np.random.default_rng(5), 24, size=32, speed_share=0.5, decoy_p=1.0,
                                  decoy_rng=np.random.default_rng(1))
    imgs2, decoys, ks2, cs2, vs2, dvs = out
    assert np.array_equal(imgs, imgs2) and (ks, cs, vs) == (ks2, cs2, vs2)  # the same images as value_batch
    speed = [i for i, k in enumerate(ks) if k == "speed_limit"]
    assert speed and len(speed) < 24
    for i in range(24):
        if i in speed:
            assert dvs[i] is not None and dvs[i] != vs[i] and 10 <= dvs[i] < 200
            diff = np.abs(decoys[i].astype(int) - imgs[i].astype(int)).max(axis=2)
            # only the digits differ: the ring, the corners (background) and the pose are the same
            assert diff.max() > 60 and diff[:4].max() == 0 and diff[:, :4].max() == 0
        else:
            assert dvs[i] is None and np.array_equal(decoys[i], imgs[i])
    none = value_batch_with_decoys(np.random.default_rng(5), 24, size=32, speed_share=0.5, decoy_p=0.0)
    assert np.array_equal(none[1], imgs) and set(none[5]) == {None}


def test_render_pairs_value_swap_shows_other_digits_and_always_names_the_value():
    plain = render_pairs(12, low_size=8, factor=4, seed=2, speed_share=1.0, value_drop=1.0)
    high, low, prompts = render_pairs(12, low_size=8, factor=4, seed=2, speed_share=1.0, value_drop=1.0,
                                      value_swap=0.5)
    assert np.array_equal(high, plain[0])  # the targets do not change
    swapped = [i for i in range(12) if not np.array_equal(low[i], plain[1][i])]
    assert 0 < len(swapped) < 12
    for i in range(12):  # value_drop 1.0 drops every value except those a swapped input needs
        assert (prompts[i].split()[3].isdigit()) == (i in swapped), prompts[i]
    with pytest.raises(InputError, match="value_swap"):
        render_pairs(2, value_swap=1.5)


def test_upsample_shapes_determinism_and_errors(tiny_up):
    up, _ = tiny_up
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    prompts = ["a stop sign on a red background", "a speed limit 30 sign", "a yield sign"]
    a = upsample(up, imgs, prompts, steps=2, seed=4)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8
    b = upsample(up, imgs[1:2], prompts[1:2], steps=2, seed=5)  # image i uses seed + i, whatever the batch
    assert np.array_equal(a[1], b[0])
    c = upsample(up, imgs, prompts, steps=2, seed=4, guidance=3.0)
    assert c.shape == a.shape
    with pytest.raises(InputError, match="one prompt per image"):
        upsample(up, imgs, prompts[:2])
    with pytest.raises(InputError, match="uint8"):
        upsample(up, imgs.astype(np.float32), prompts)
    assert bicubic_baseline(imgs, 2).shape == (3, 16, 16, 3)


def test_a_zero_residual_model_is_bicubic(tiny_up):
    """The output is the bicubic base plus the sampled residual / residual_scale: with a huge
    scale the residual vanishes and the upsampler returns the bicubic upscale."""
    up, _ = tiny_up
    up.residual_scale = 1e6  # any sampled residual becomes negligible
    imgs = np.random.default_rng(1).integers(0, 255, (2, 8, 8, 3), dtype=np.uint8)
    out = upsample(up, imgs, ["a stop sign"] * 2, steps=2).astype(int)
    low = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    ref = ((bicubic_up(low, 2).clamp(-1, 1) + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(out - ref).max() <= 1


def test_fit_pairs_lowers_the_loss_and_save_load_roundtrip(tiny_up, tmp_path):
    up, text = tiny_up
    high, low, prompts = render_pairs(8, low_size=8, factor=2, seed=0)
    losses = fit_pairs(up, high, low, prompts, steps=30, lr=3e-3, batch_size=8, seed=0)
    assert len(losses) == 30 and np.mean(losses[-5:]) < np.mean(losses[:5])
    save_upsampler(up, tmp_path / "up", text_encoder_ref="tiny", half=False)
    up2 = load_upsampler(tmp_path / "up", text)
    assert up2.factor == 2 and up2.high_size == 16 and up2.residual_scale == up.residual_scale
    imgs = low[:2]
    assert np.array_equal(upsample(up, imgs, prompts[:2], steps=2), upsample(up2, imgs, prompts[:2], steps=2))
    with pytest.raises(InputError, match="not an upsampler directory"):
        load_upsampler(tmp_path, text)


def test_train_upsampler_continues_an_init_directory(tiny_model_dir, tmp_path):
    from carla_mr.genai.model import load_model
    from carla_mr.genai.upsampler_train import UpsamplerTrainConfig, train_upsampler

    text = load_model(tiny_model_dir)
    up = build_upsampler(text, low_size=8, factor=2, unet_overrides=TINY_UP)
    save_upsampler(up, tmp_path / "init", text_encoder_ref=str(tiny_model_dir), half=False)
    cfg = UpsamplerTrainConfig(steps=2, batch_size=2, bank=4, low_size=8, factor=2, threads=1, lr=1e-2,
                               value_swap=0.5, init=str(tmp_path / "init"), save_every=100)
    res = train_upsampler(tmp_path / "run", tiny_model_dir, cfg)
    tuned = load_upsampler(tmp_path / "run" / "upsampler", text)
    assert res["config"]["init"] == str(tmp_path / "init") and res["params"] == sum(
        p.numel() for p in up.unet.parameters())  # the init's (tiny) architecture, not the default one
    assert tuple(tuned.unet.config.block_out_channels) == (16, 16, 16)
    diff = sum(float((a - b).abs().sum()) for a, b in zip(up.unet.state_dict().values(),
                                                          tuned.unet.state_dict().values()))
    assert diff > 0
    with pytest.raises(InputError, match="--init"):
        train_upsampler(tmp_path / "run2", tiny_model_dir, UpsamplerTrainConfig(
            steps=1, batch_size=2, bank=2, low_size=16, factor=2, threads=1, init=str(tmp_path / "init")))


def test_dreambooth_fine_tunes_the_upsampler(tiny_model_dir, tmp_path, fresh_tiny):
    import cv2

    from carla_mr.genai.dreambooth import DreamBoothConfig, dreambooth
    from carla_mr.genai.model import load_model
    from carla_mr.genai.procedural import render_sample

    text = load_model(tiny_model_dir)
    up = build_upsampler(text, low_size=16, factor=2, unet_overrides=TINY_UP)
    save_upsampler(up, tmp_path / "up", text_encoder_ref=str(tiny_model_dir), half=False)
    inst = tmp_path / "inst"
    inst.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        im, _ = render_sample("stop", rng, size=32, background="blue")
        cv2.imwrite(str(inst / f"{i}.png"), im[..., ::-1])
    res = dreambooth(tiny_model_dir, inst, tmp_path / "db",
                     DreamBoothConfig(kind="stop", steps=2, batch_size=2, num_class_images=2, class_sample_steps=2,
                                      threads=1, upsampler=str(tmp_path / "up"), upsampler_steps=2,
                                      upsampler_lr=1e-2))
    assert res["upsampler_steps"] == 2
    tuned = load_upsampler(tmp_path / "db" / "upsampler", load_model(tmp_path / "db" / "model"))
    diff = sum(float((a - b).abs().sum()) for a, b in zip(up.unet.state_dict().values(),
                                                          tuned.unet.state_dict().values()))
    assert diff > 0
