"""The shared pieces: atomic writes, CLI conventions, the generic sign-texture store."""

from __future__ import annotations

import json
import os

import click
import numpy as np
import pytest
from click.testing import CliRunner

from carla_mr.cli import main
from carla_mr.cli_common import common_options, emit, guarded, make_run_dir
from carla_mr.errors import InputError, RunError
from carla_mr.io import atomic_write, atomic_write_json, to_jsonable
from carla_mr.testing.fake_world import FakeWorld, sign_table
from carla_mr.world.base import SignTexture, Snapshot
from carla_mr.config.camera import CameraSpec


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})

    def boom(fh):
        fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom)
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temp file left behind


def test_to_jsonable_handles_numpy_and_nonfinite():
    out = to_jsonable({"a": np.arange(3), "b": np.float32(1.5), "c": float("nan"), "d": float("inf")})
    assert out == {"a": [0, 1, 2], "b": 1.5, "c": None, "d": "inf"}
    json.dumps(out)


@click.command()
@click.option("--mode", default="ok")
@common_options
@guarded
def _verb(mode, out, seed, as_json):
    if mode == "bad":
        raise InputError("must be positive", field="vehicles.avs", source="s.yaml")
    if mode == "fail":
        raise RunError("server went away")
    if mode == "crash":
        raise ZeroDivisionError("x")
    run_dir = make_run_dir(out, "verb")
    emit({"seed": seed, "run_dir": str(run_dir)}, as_json=as_json)


@pytest.mark.parametrize("mode,code", [("ok", 0), ("bad", 2), ("fail", 1), ("crash", 1)])
def test_exit_codes(mode, code, tmp_path):
    res = CliRunner().invoke(_verb, ["--mode", mode, "--out", str(tmp_path / "r"), "--seed", "3", "--json"])
    assert res.exit_code == code, res.output
    if code == 0:
        assert json.loads(res.stdout) == {"seed": 3, "run_dir": str(tmp_path / "r")}
    else:
        assert "Traceback" not in res.output
    if mode == "bad":
        assert "s.yaml: vehicles.avs: must be positive" in res.stderr


def test_out_must_not_be_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = CliRunner().invoke(_verb, ["--out", str(f)])
    assert res.exit_code == 2 and "--out" in res.stderr


def test_main_help_lists_every_verb():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for verb in ("run", "maps", "twin", "market", "genai", "dataset", "view", "bench"):
        assert verb in res.output


def test_sign_texture_store_roundtrip_and_validation():
    w = FakeWorld(signs=sign_table(["s1", "s2"], ["stop", "yield"]))
    assert {k: v.source for k, v in w.sign_textures().items()} == {"s1": "original", "s2": "original"}
    img = np.zeros((8, 8, 3), np.uint8)
    w.apply_sign_textures({"s1": SignTexture("generated", "gen/0001.png", img)})
    assert w.sign_textures()["s1"].ref == "gen/0001.png"
    assert w.sign_textures()["s2"].source == "original"
    with pytest.raises(KeyError, match="nope"):
        w.apply_sign_textures({"nope": img, "s2": img})
    assert w.sign_textures()["s2"].source == "original"  # nothing applied on error
    with pytest.raises(ValueError, match="uint8"):
        w.apply_sign_textures({"s2": np.zeros((8, 8, 3), np.float32)})
    w.apply_sign_textures({"s1": None})
    assert w.sign_textures()["s1"].source == "original"
    assert len(w.pushed) == 2


def test_camera_intrinsics_follow_carla():
    spec = CameraSpec(width=800, height=600, fov_deg=90.0)
    K = spec.intrinsics()
    assert K[0, 0] == pytest.approx(400.0) and K[1, 1] == pytest.approx(400.0)
    assert (K[0, 2], K[1, 2]) == (400.0, 300.0)


def test_snapshot_select():
    s = Snapshot(3, 0.15, np.array([1, 2, 3]), np.array([1, 0, 1], np.uint8), *(np.arange(3.0) for _ in range(5)),
                 np.array([0, -1, 0], np.int32))
    av = s.select(s.av_mask)
    assert av.ids.tolist() == [1, 3] and av.frame == 3 and len(av) == 2


def test_no_heavy_imports_at_package_import():
    import subprocess
    import sys

    code = ("import sys, carla_mr, carla_mr.cli, carla_mr.config; "
            "bad=[m for m in ('torch','diffusers','libsumo','zmq','ray','pygame') if m in sys.modules]; "
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == ""


def test_atomic_write_gives_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        p = atomic_write_json(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert (p.stat().st_mode & 0o777) == 0o644
