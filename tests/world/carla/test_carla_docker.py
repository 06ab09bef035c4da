"""The docker files agree with each other and with the backend's defaults (no docker needed)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from carla_mr.config import CarlaConfig

DOCKER = Path(__file__).resolve().parents[3] / "docker"


def test_compose_runs_the_official_server_off_screen_on_a_gpu_beside_the_client():
    d = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
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
    assert client["depends_on"]["carla"]["condition"] == "service_healthy"
    # the defaults the backend connects to are the ports the server listens on
    assert CarlaConfig().port == 2000


def test_client_and_server_versions_match():
    compose = (DOCKER / "docker-compose.yml").read_text()
    server = re.search(r"carlasim/carla:\$\{CARLA_VERSION:-([0-9.]+)\}", compose).group(1)
    arg = re.search(r"ARG CARLA_VERSION=([0-9.]+)", (DOCKER / "Dockerfile").read_text()).group(1)
    assert server == arg
    from carla_mr.world.carla_api import MIN_VERSION, parse_version

    assert parse_version(server) >= MIN_VERSION
