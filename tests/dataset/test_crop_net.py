"""The default model under test: the project's crop CNN (train, save, load, pick as default)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from carla_mr.dataset import crop_net  # noqa: E402
from carla_mr.dataset.models import TemplateMatcher, load_model  # noqa: E402
from carla_mr.errors import InputError  # noqa: E402


def toy_data(n=96, seed=0):
    """Red crops are stop signs, blue ones parking: a task a few epochs learn."""
    rng = np.random.default_rng(seed)
    imgs, cls = [], []
    for i in range(n):
        c = "stop" if i % 2 else "parking"
        im = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
        im[6:26, 6:26, 0 if c == "stop" else 2] = 220
        imgs.append(im)
        cls.append(c)
    return {"images": np.stack(imgs), "cls": cls, "kind": cls, "source": ["original"] * n,
            "box_px": np.full(n, 20)}


def test_train_save_load_roundtrip(tmp_path):
    from carla_mr.dataset.train_default import score, train

    data = toy_data(256)
    rows = []
    net = train(data, ["parking", "stop"], epochs=8, seed=0, log=rows.append)
    assert len(rows) == 8 and rows[-1]["train_acc"] > 0.9
    test = toy_data(40, seed=1)
    assert score(net, test)["accuracy"] > 0.9
    net.save(tmp_path / "m", {"note": "toy"})
    back = crop_net.load_crop_net(tmp_path / "m")
    assert back.predict(list(test["images"])) == net.predict(list(test["images"]))
    assert json.loads((tmp_path / "m" / "crop_net.json").read_text())["note"] == "toy"
    # as the model under test: a checkpoint folder given to 'default'
    assert load_model("default", str(tmp_path / "m")).predict([test["images"][1]]) == ["stop"]


def test_default_is_the_installed_crop_net_else_template(tmp_path, monkeypatch):
    net = crop_net.CropNet(crop_net.build_net(2), ["parking", "stop"], 32, "x")
    net.save(tmp_path / "inst")
    monkeypatch.setattr(crop_net, "default_crop_net_path", lambda: tmp_path / "inst")
    assert load_model("default").name == "crop_net:default"
    monkeypatch.setattr(crop_net, "default_crop_net_path", lambda: tmp_path / "none")
    assert isinstance(load_model("default"), TemplateMatcher)
    with pytest.raises(InputError, match="train-default"):
        load_model("crop_net")


def test_crop_net_with_other_weights_is_input_error(tmp_path):
    from safetensors.torch import save_file

    net = crop_net.CropNet(crop_net.build_net(2), ["parking", "stop"], 32, "x")
    net.save(tmp_path / "m")
    save_file({"bogus": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(InputError, match=r"model.safetensors does not match .*missing keys"):
        crop_net.load_crop_net(tmp_path / "m")


def test_committed_default_crop_net_loads_if_present():
    path = crop_net.default_crop_net_path()
    if not crop_net.is_crop_net_dir(path):
        pytest.skip("no committed crop net")
    m = crop_net.load_crop_net(path)
    assert m.predict([np.zeros((20, 20, 3), np.uint8)])[0] in m.classes
    rec = json.loads((path / "crop_net.json").read_text())
    assert rec["trained_on"] == "original textures"


@pytest.mark.slow
def test_train_default_cli_end_to_end(tmp_path):
    from click.testing import CliRunner

    from carla_mr.cli import main

    res = CliRunner().invoke(main, ["dataset", "train-default", "--frames", "6", "--cameras", "2", "--signs", "150",
                                    "--epochs", "1", "--no-reverse", "--json", "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output.strip().splitlines()[-1])
    assert set(out["models"]) == {"template (baseline)", "crop_net trained on original"}
    assert crop_net.is_crop_net_dir(tmp_path / "t" / "crop_net") and (tmp_path / "t" / "train_log.csv").is_file()
