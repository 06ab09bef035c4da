"""Issue 17 item 6: bad --out paths and mismatched checkpoints exit 2 with a message naming them."""

from __future__ import annotations

import os
import textwrap

import pytest
from click.testing import CliRunner

from carla_mr.cli import main


def _run(args):
    res = CliRunner().invoke(main, args)
    return res.exit_code, (res.output or "") + (getattr(res, "stderr", "") or "")


@pytest.fixture
def scenario_path(tmp_path, town01):
    p = tmp_path / "s.yaml"
    p.write_text(f"name: s\nmap: {town01}\nseed: 1\nduration_s: 1\n")
    return p


def test_out_under_a_regular_file_is_exit_2(tmp_path, scenario_path):
    blocker = tmp_path / "plain.txt"
    blocker.write_text("x")
    code, out = _run(["dataset", "record", str(scenario_path), "--frames", "1", "--out", str(blocker / "ds")])
    assert code == 2, out
    assert str(blocker) in out and "regular file" in out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
@pytest.mark.parametrize("where", ["/proc/carla_mr_test_out", "/proc"])
def test_out_under_proc_is_exit_2(scenario_path, where):
    code, out = _run(["dataset", "record", str(scenario_path), "--frames", "1", "--out", where])
    assert code == 2, out
    assert where in out and "--out" in out


def test_make_run_dir_reports_unwritable_folder(tmp_path, monkeypatch):
    """A folder that refuses new files (EACCES, simulated: the tests may run as root)."""
    import tempfile

    from carla_mr.cli_common import make_run_dir
    from carla_mr.errors import InputError

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied", str(kw.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    ro = tmp_path / "ro"
    with pytest.raises(InputError, match=str(ro)):
        make_run_dir(ro, "x")


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_maps_inject_into_unwritable_folder_is_exit_2(town01):
    target = "/proc/carla_mr_test/out.xodr"
    code, out = _run(["maps", "inject", str(town01), "--random", "2", "--out", target])
    assert code == 2, out
    assert target in out and "--out" in out


def test_maps_inject_into_read_only_folder_is_exit_2(tmp_path, town01, monkeypatch):
    """A folder that refuses the write (EACCES, simulated: the tests may run as root)."""
    import carla_mr.io as cio

    def refuse(path, text, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cio, "atomic_write_text", refuse)
    target = tmp_path / "ro" / "out.xodr"
    code, out = _run(["maps", "inject", str(town01), "--random", "2", "--out", str(target)])
    assert code == 2, out
    assert str(target) in out and "Permission denied" in out


def test_checkpoint_with_other_keys_is_exit_2(tmp_path, monkeypatch, town01):
    torch = pytest.importorskip("torch")
    (tmp_path / "mut_ck.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            class_names = ["stop", "speed_limit"]
            input_size = 16
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(3, 2)
            def forward(self, x):
                return self.lin(x.mean(dim=(2, 3)))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from safetensors.torch import save_file

    save_file({"conv.weight": torch.zeros(2, 3)}, str(tmp_path / "other.safetensors"))
    save_file({"lin.weight": torch.zeros(5, 3), "lin.bias": torch.zeros(5)}, str(tmp_path / "shape.safetensors"))
    from carla_mr.dataset.models import load_model
    from carla_mr.errors import InputError

    with pytest.raises(InputError, match=r"missing keys lin.bias, lin.weight; unexpected keys conv.weight"):
        load_model("mut_ck:Net", str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match=r"shape.safetensors does not fit Net: .*size mismatch"):
        load_model("mut_ck:Net", str(tmp_path / "shape.safetensors"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read .*junk.pt"):
        load_model("mut_ck:Net", str(tmp_path / "junk.pt"))
    # and through the CLI: exit 2 with the path and the mismatch in the message
    sc = tmp_path / "s.yaml"
    sc.write_text(f"name: s\nmap: {town01}\nseed: 1\nduration_s: 0.2\n")
    code, out = _run(["dataset", "eval", str(sc), "--model", "mut_ck:Net", "--checkpoint",
                      str(tmp_path / "other.safetensors"), "--frames", "1", "--no-plots", "--out", str(tmp_path / "e")])
    assert code == 2, out
    assert "other.safetensors" in out and "missing keys" in out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_maps_build_out_under_proc_is_exit_2():
    code, out = _run(["maps", "build", "--only", "mr_town", "--out", "/proc/carla_mr_test/maps"])
    assert code == 2, out
    assert "/proc/carla_mr_test/maps" in out
