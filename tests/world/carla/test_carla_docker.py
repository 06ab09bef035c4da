"""The docker files, pyproject and the backend agree on the supported CARLA releases and their
Pythons, and the compose health check asks the server itself (no docker needed: parsed here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from carla_mr.config import CarlaConfig
from carla_mr.world.carla_api import MIN_VERSION, SUPPORTED_VERSIONS, parse_version
from carla_mr.world.carla_probe import main as probe_main
from carla_mr.world.carla_probe import probe_server

REPO = Path(__file__).resolve().parents[3]
DOCKER = REPO / "docker"


def _compose():
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_runs_the_official_server_off_screen_on_a_gpu_beside_the_client():
    d = _compose()
    carla, client = d["services"]["carla"], d["services"]["client"]
    assert carla["image"].startswith("carlasim/carla:")
    assert "-RenderOffScreen" in carla["command"] and "-carla-rpc-port=2000" in carla["command"]
    dev = carla["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    # both on the private network; the server's ports published on loopback only
    assert carla["networks"] == client["networks"] == ["carla-net"]
    assert all(p.startswith("127.0.0.1:") for p in carla["ports"])
    assert "2000-2002" in carla["ports"][0]
    assert client["build"]["dockerfile"] == "docker/Dockerfile"
    # the defaults the backend connects to are the ports the server listens on
    assert CarlaConfig().port == 2000


def test_the_client_waits_for_a_server_that_answers_not_for_an_open_port():
    d = _compose()
    ready, client = d["services"]["carla-ready"], d["services"]["client"]
    assert client["depends_on"] == {"carla-ready": {"condition": "service_healthy"}}
    test = ready["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "carla_mr.world.carla_probe"]
    assert test[test.index("--host") + 1] == "carla" and test[test.index("--port") + 1] == "2000"
    assert ready["build"] == client["build"] and ready["image"] == client["image"]  # the client's carla wheel
    assert "/dev/tcp" not in (DOCKER / "docker-compose.yml").read_text()


def test_the_client_python_follows_the_carla_version():
    text = (DOCKER / "Dockerfile").read_text()
    stages = dict(re.findall(r"FROM python:(\d+\.\d+)-slim AS python-([0-9.]+)", text))
    pythons = {carla: py for py, carla in stages.items()}
    assert pythons == SUPPORTED_VERSIONS  # 0.9.15 -> 3.10, 0.9.16 -> 3.11
    assert "FROM python-${CARLA_VERSION}" in text
    default = re.search(r"ARG CARLA_VERSION=([0-9.]+)", text).group(1)
    server = re.search(r"carlasim/carla:\$\{CARLA_VERSION:-([0-9.]+)\}", (DOCKER / "docker-compose.yml").read_text())
    assert default == server.group(1) and default in SUPPORTED_VERSIONS


def test_pyproject_and_the_supported_versions_agree():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'"carla>=([0-9.]+)"', text).group(1) == ".".join(map(str, MIN_VERSION))
    lowest = min(tuple(map(int, v.split("."))) for v in SUPPORTED_VERSIONS.values())
    assert re.search(r'requires-python = ">=(\d+)\.(\d+)"', text).groups() == tuple(map(str, lowest))
    for v in SUPPORTED_VERSIONS:
        assert parse_version(v) >= MIN_VERSION


def test_the_probe_says_ready_only_for_a_matching_loaded_server(make_server, capsys):
    srv = make_server()
    assert "is ready" in probe_server("127.0.0.1", 2000, client_factory=srv.client_factory)
    bad = make_server(client_version="0.9.15")
    try:
        probe_server("127.0.0.1", 2000, client_factory=bad.client_factory)
        raise AssertionError("a version mismatch passed the probe")
    except Exception as exc:  # noqa: BLE001
        assert "differ" in str(exc)
    assert "is ready" in probe_server("127.0.0.1", 2000, client_factory=bad.client_factory,
                                      allow_version_mismatch=True)
    # the command line: a closed port with the real client is "not ready", exit 1, one line
    assert probe_main(["--host", "127.0.0.1", "--port", "1", "--timeout-s", "0.2"]) == 1
    assert "is not ready" in capsys.readouterr().out


def test_the_texture_check_runs_its_pattern_and_saves_the_frame(make_server, town_scenario, face_sign, tmp_path):
    """Plumbing only: the stand-in paints a sign in one mean colour, so the row order itself can
    only be read on a real server (docs/carla.md)."""
    from carla_mr.config.camera import CameraSpec
    from carla_mr.world.carla_backend import CarlaWorld
    from carla_mr.world.carla_probe import texture_check

    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False,
                    cache_dir=tmp_path) as w:
        snap = w.reset()
        av = int(snap.ids[snap.role == 1][0])
        w.attach_camera("front", CameraSpec(width=160, height=120, fov_deg=60.0), av)
        i = next(i for i, k in enumerate(w.signs.kind) if k == "speed_limit")
        face_sign(srv, av, int(w._box_index[i]), dist=10.0)
        rep = texture_check(w, str(tmp_path / "check.png"), max_ticks=3)
    assert rep["sign"] == str(w.signs.ids[i]) and (tmp_path / "check.png").is_file()
    assert set(rep) >= {"top", "bottom", "left", "right", "other_meshes"} and rep["other_meshes"]
    names = srv.texture_calls[-1][0]
    assert names == [rep["other_meshes"][0].rsplit("_SM_", 1)[0]]  # the sign's actor got the pattern


def test_the_image_copies_every_file_its_install_builds_from():
    """Each COPY source of the Dockerfile is let through by its .dockerignore (setup.py builds the
    embedded world's C pass), and host-built extension modules are kept out of the context."""
    text = (DOCKER / "Dockerfile").read_text()
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    sources = [src for line in re.findall(r"^COPY (.+)$", text, flags=re.M) for src in line.split()[:-1]]
    assert "setup.py" in sources
    for src in sources:
        assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is copied but .dockerignore drops it"
    assert "**/*.so" in ignore
