"""DreamBooth: the prior-preservation loss split, a few full and LoRA steps, input errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.errors import InputError  # noqa: E402
from carla_mr.genai.dreambooth import DreamBoothConfig, dreambooth, prior_preservation_loss  # noqa: E402


def test_prior_loss_split_is_instance_plus_weighted_class():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(6, 3, 4, 4, generator=g)
    target = torch.randn(6, 3, 4, 4, generator=g)
    total, inst, prior = prior_preservation_loss(pred, target, 2, 0.5)
    exp_inst = ((pred[:2] - target[:2]) ** 2).mean()
    exp_prior = ((pred[2:] - target[2:]) ** 2).mean()
    assert torch.allclose(inst, exp_inst) and torch.allclose(prior, exp_prior)
    assert torch.allclose(total, exp_inst + 0.5 * exp_prior)
    # without class images the loss is the instance MSE alone
    total2, inst2, prior2 = prior_preservation_loss(pred[:2], target[:2], 2, 1.0)
    assert torch.allclose(total2, exp_inst) and float(prior2) == 0.0
    # a perfect prediction of the class half leaves only the instance term
    t3 = target.clone()
    t3[2:] = pred[2:]
    total3, _, prior3 = prior_preservation_loss(pred, t3, 2, 10.0)
    assert float(prior3) == 0.0 and torch.allclose(total3, exp_inst)


def _instances(folder, n=3):
    from carla_mr.genai.procedural import render_sample

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        im, _ = render_sample("stop", rng, size=24, background="blue")
        cv2.imwrite(str(folder / f"{i}.png"), im[..., ::-1])
    return folder


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_dreambooth_runs_and_changes_the_unet(tiny_model_dir, tmp_path, mode):
    from carla_mr.genai.model import load_model

    inst = _instances(tmp_path / "inst")
    cfg = DreamBoothConfig(kind="stop", steps=3, batch_size=2, num_class_images=4, class_sample_steps=2, mode=mode,
                           threads=1, lr=1e-2)
    res = dreambooth(tiny_model_dir, inst, tmp_path / "db", cfg)
    assert res["instance_prompt"] == "a sks stop sign on a blue background"
    assert res["class_images"] == 4 and len(list((tmp_path / "db" / "class_images").glob("*.png"))) == 4
    log = (tmp_path / "db" / "train_log.csv").read_text().splitlines()
    assert log[0] == "step,loss,instance_loss,prior_loss" and len(log) == 4
    base = load_model(tiny_model_dir)
    tuned = load_model(tmp_path / "db" / "model")
    assert set(base.unet.state_dict()) == set(tuned.unet.state_dict())  # LoRA is fused: a plain checkpoint
    diff = sum(float((a - b).abs().sum()) for a, b in zip(base.unet.state_dict().values(),
                                                          tuned.unet.state_dict().values()))
    assert diff > 0
    meta = json.loads((tmp_path / "db" / "model" / "carla_mr.json").read_text())
    assert meta["token"] == "sks" and meta["instance_class"] == "stop"
    if mode == "lora":
        assert (tmp_path / "db" / "lora" / "pytorch_lora_weights.safetensors").is_file()


def test_class_images_guidance_and_prior_classes(tiny_model_dir, tmp_path, monkeypatch):
    """Class images of a pixel model are sampled unguided by default (the model's own prior),
    at the guidance asked for otherwise; prior_classes='all' spreads them over every class."""
    import carla_mr.genai.sample as sample_mod

    calls = []
    real = sample_mod.sample

    def spy(m, prompts, **kw):
        calls.append((list(prompts), kw.get("guidance")))
        return real(m, prompts, **kw)

    monkeypatch.setattr(sample_mod, "sample", spy)
    inst = _instances(tmp_path / "inst", 2)
    base = dict(kind="stop", steps=1, batch_size=1, num_class_images=8, class_sample_steps=1, threads=1)
    res = dreambooth(tiny_model_dir, inst, tmp_path / "a", DreamBoothConfig(**base))
    assert res["class_guidance"] == 1.0 and calls[-1][1] == 1.0
    assert all(" stop sign " in p for p in calls[-1][0])
    res = dreambooth(tiny_model_dir, inst, tmp_path / "b", DreamBoothConfig(**base, class_guidance=7.5,
                                                                            prior_classes="all"))
    assert res["class_guidance"] == 7.5 and calls[-1][1] == 7.5
    assert len({p.split(" sign ")[0] for p in calls[-1][0]}) == 8  # every class of the vocabulary
    with pytest.raises(InputError, match="prior_classes"):
        dreambooth(tiny_model_dir, inst, tmp_path / "c", DreamBoothConfig(**base, prior_classes="some"))


def test_dreambooth_input_errors(tiny_model_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        dreambooth(tiny_model_dir, tmp_path / "empty", tmp_path / "o", DreamBoothConfig(steps=1))
    with pytest.raises(InputError, match="does not exist"):
        dreambooth(tiny_model_dir, tmp_path / "missing", tmp_path / "o", DreamBoothConfig(steps=1))
    inst = _instances(tmp_path / "inst", 1)
    with pytest.raises(InputError, match="unknown sign class"):
        dreambooth(tiny_model_dir, inst, tmp_path / "o", DreamBoothConfig(kind="unicorn", steps=1))
    with pytest.raises(InputError, match="does not exist"):
        dreambooth(tmp_path / "no-model", inst, tmp_path / "o", DreamBoothConfig(steps=1))


def test_shift_augment_moves_content_by_at_most_max_px():
    from carla_mr.genai.dreambooth import shift_augment

    g = torch.Generator().manual_seed(0)
    x = torch.zeros(16, 1, 12, 12)
    x[:, :, 6, 6] = 1.0  # one bright pixel in the middle
    y = shift_augment(x, 2, g)
    assert y.shape == x.shape
    pos = [divmod(int(v.argmax()), 12) for v in y.view(16, -1)]
    assert all(abs(r - 6) <= 2 and abs(c - 6) <= 2 for r, c in pos)
    assert len(set(pos)) > 1  # it does shift
    assert torch.equal(shift_augment(x, 0, g), x)


def test_mixed_sizes_and_defaults(tiny_model_dir, tmp_path):
    from carla_mr.genai.dreambooth import default_lr, read_instance_images

    d = tmp_path / "mixed"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((24, 24, 3), np.uint8))
    cv2.imwrite(str(d / "b.png"), np.zeros((32, 24, 3), np.uint8))
    with pytest.raises(InputError, match="mixed sizes.*24x24.*a.png.*24x32.*b.png"):
        read_instance_images(d)
    assert default_lr("full", True) == 1e-5 and default_lr("full", False) == 5e-6 and default_lr("lora", True) == 1e-4


def test_accel_options_fail_clearly():
    from carla_mr.genai.accel import make_accel, resolve_device

    with pytest.raises(InputError, match="dtype"):
        make_accel(dtype="fp8")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            resolve_device("cuda")
        assert resolve_device("auto").type == "cpu"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(InputError, match="bitsandbytes"):
            make_accel(use_8bit_adam=True)


def test_bf16_and_gradient_checkpointing_run_on_cpu(tiny_model_dir, tmp_path):
    inst = _instances(tmp_path / "inst", 2)
    res = dreambooth(tiny_model_dir, inst, tmp_path / "db",
                     DreamBoothConfig(kind="stop", steps=2, batch_size=1, num_class_images=1, class_sample_steps=1,
                                      threads=1, dtype="bf16", gradient_checkpointing=True))
    assert np.isfinite(res["final_loss"])
