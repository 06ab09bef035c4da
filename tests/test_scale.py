"""Scale-out on Ray: a sweep and two worlds on a local 2-CPU cluster equal the local runs;
without Ray the same calls and verbs run locally with a note."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from carla_mr.config import scenario_from_dict
from carla_mr.errors import InputError, RunError
from carla_mr.market.experiments import run_experiments
from carla_mr.dataset.shards import SHARDED_FORMAT, record_shards, shard_plan
from carla_mr.scale import NO_RAY_NOTE, parse_carla_hosts, parse_ray_address, ray_map

REC = {"enabled": True, "cameras": 3, "camera": {"width": 160, "height": 120, "fov_deg": 90.0},
       "max_frames": 4, "every_k": 5, "min_box_px": 1}


def scenario(town01, **kw):
    return scenario_from_dict({"map": str(town01), "seed": 3, "duration_s": 1.0,
                               "vehicles": {"avs": 3, "background": 2}, "recorder": REC, **kw})


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def same_results(a, b) -> None:
    assert a.figures.keys() == b.figures.keys()
    for name in a.figures:
        for pa, pb in zip(a.figures[name], b.figures[name]):
            assert pa.keys() == pb.keys()
            for label in pa:
                for metric, arr in pa[label].items():
                    np.testing.assert_array_equal(arr, pb[label][metric])
    assert json.dumps(a.headline, sort_keys=True) == json.dumps(b.headline, sort_keys=True)


# -- no Ray needed --------------------------------------------------------------------------------


def test_addresses_and_hosts_are_checked():
    assert parse_ray_address(None) is None and parse_ray_address("") is None
    for ok in ("local", "auto", "10.0.0.2:6379", "ray://head.example:10001", "[::1]:6379"):
        assert parse_ray_address(ok) == ok
    for bad in ("localhost", "ray://", "http://x:1", "a b:1"):
        with pytest.raises(InputError, match="--ray"):
            parse_ray_address(bad)
    assert parse_carla_hosts("a:2000, b:2002") == [("a", 2000), ("b", 2002)]
    for bad in ("a", "a:0", "a:x", ":2000", "a:2000,a:2000"):
        with pytest.raises(InputError, match="--carla-hosts"):
            parse_carla_hosts(bad)


def test_shard_plan_seeds_and_carla_servers(town01):
    sc = scenario(town01)
    plan = shard_plan(sc, worlds=3, seed=10)
    assert [(s.index, s.dir, s.seed, s.scenario.seed) for s in plan] == [
        (0, "shard000", 10, 10), (1, "shard001", 11, 11), (2, "shard002", 12, 12)]
    assert all(Path(s.scenario.map).is_absolute() for s in plan)
    with pytest.raises(InputError, match="backend=carla"):
        shard_plan(sc, worlds=2, carla_hosts=[("a", 1), ("b", 2)])
    csc = scenario_from_dict({"map": "Town01", "backend": "carla", "seed": 1, "recorder": REC})
    with pytest.raises(InputError, match="one HOST:PORT per world"):
        shard_plan(csc, worlds=3, carla_hosts=[("a", 2000), ("b", 2002)])
    plan = shard_plan(csc, worlds=2, carla_hosts=[("a", 2000), ("b", 2002)])
    assert [(s.carla, s.scenario.carla.host, s.scenario.carla.port, s.scenario.carla.tm_port) for s in plan] == [
        ("a:2000", "a", 2000, 8000), ("b:2002", "b", 2002, 8001)]
    with pytest.raises(InputError, match="--worlds"):
        shard_plan(sc, worlds=0)


def test_without_ray_the_verbs_run_locally_with_a_note(tmp_path, town01, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now fails as if it were not installed
    assert list(ray_map(abs, [-1, 2, -3], "local")) == [1, 2, 3]
    assert NO_RAY_NOTE in capsys.readouterr().err
    from carla_mr.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["market", "experiment", "fig9", "--reps", "2", "--no-plots", "--ray", "auto",
                               "--json", "--out", str(tmp_path / "m")])
    assert res.exit_code == 0, res.output
    assert NO_RAY_NOTE in res.stderr
    assert json.loads(res.stdout)["reps"] == 2
    sc_path = tmp_path / "sc.yaml"
    sc_path.write_text(yaml.safe_dump({"map": str(town01), "seed": 3, "duration_s": 1.0,
                                       "vehicles": {"avs": 3, "background": 2}, "recorder": REC}))
    res = runner.invoke(main, ["dataset", "record", str(sc_path), "--worlds", "2", "--ray", "local", "--json",
                               "--out", str(tmp_path / "d")])
    assert res.exit_code == 0, res.output
    assert NO_RAY_NOTE in res.stderr
    out = json.loads(res.stdout)
    assert out["format"] == SHARDED_FORMAT and out["worlds"] == 2 and out["complete"]
    # the same verb with plain local sharding writes the same files
    res = runner.invoke(main, ["dataset", "record", str(sc_path), "--worlds", "2", "--json",
                               "--out", str(tmp_path / "d2")])
    assert res.exit_code == 0, res.output
    assert tree(tmp_path / "d") == tree(tmp_path / "d2")


def test_bad_flags_exit_2(tmp_path):
    from carla_mr.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["market", "experiment", "fig9", "--reps", "2", "--ray", "nowhere",
                               "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--ray" in res.stderr
    res = runner.invoke(main, ["market", "experiment", "fig9", "--reps", "2", "--ray", "local", "--workers", "2",
                               "--out", str(tmp_path / "m")])
    assert res.exit_code == 2 and "--workers" in res.stderr


def test_single_world_recording_is_not_mixed_with_shards(tmp_path, town01):
    from carla_mr.dataset.recorder import record

    sc = scenario(town01)
    record(sc, tmp_path / "one")
    with pytest.raises(InputError, match="single-world"):
        record_shards(sc, tmp_path / "one", worlds=2)
    record_shards(sc, tmp_path / "two", worlds=2)
    before = tree(tmp_path / "two")
    (tmp_path / "two" / "shard001" / "meta" / "cam0" / "000005.json").unlink()  # an interrupted shard
    (tmp_path / "two" / "annotations.json").unlink()
    record_shards(sc, tmp_path / "two", worlds=2)  # resumes shard by shard, rebuilds the merged files
    assert tree(tmp_path / "two") == before
    with pytest.raises(InputError, match="2 world"):
        record_shards(sc, tmp_path / "two", worlds=3)


CLASSES = ["stop", "yield", "speed_limit_30", "speed_limit_60", "traffic_light"]


@st.composite
def shard_sets(draw):
    """Synthetic shard folders: per shard a class list, images and annotations on them."""
    shards = []
    for _ in range(draw(st.integers(1, 4))):
        classes = sorted(draw(st.sets(st.sampled_from(CLASSES), min_size=1)))
        n_img = draw(st.integers(0, 4))
        anns = draw(st.lists(st.tuples(st.integers(0, max(0, n_img - 1)), st.sampled_from(classes),
                                       st.integers(0, 100)), max_size=8)) if n_img else []
        shards.append((classes, n_img, anns))
    return shards


@settings(max_examples=40, deadline=None)
@given(shard_sets())
def test_merge_renumbers_and_remaps_by_class_name(shard_specs):
    from types import SimpleNamespace

    from carla_mr.dataset.shards import Shard, merge_shards

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        shards, expected = [], []
        for k, (classes, n_img, anns) in enumerate(shard_specs):
            sd = root / f"shard{k:03d}"
            sd.mkdir()
            # shard-local ids deliberately not 1..n, categories in shard order
            images = [{"id": 10 + i, "file_name": f"images/cam0/{i:06d}.png", "width": 8, "height": 8}
                      for i in range(n_img)]
            cats = [{"id": j + 1, "name": c} for j, c in enumerate(classes)]
            coco_anns = [{"id": 100 + j, "image_id": 10 + i, "category_id": classes.index(c) + 1,
                          "bbox": [x, 0, 1, 1], "area": 1, "iscrowd": 0} for j, (i, c, x) in enumerate(anns)]
            (sd / "annotations.json").write_text(json.dumps({"images": images, "annotations": coco_anns,
                                                             "categories": cats}))
            (sd / "manifest.json").write_text(json.dumps({"classes": classes, "scenario": {"map": "m"}}))
            (sd / "progress.json").write_text(json.dumps({"frames": n_img, "complete": True}))
            shards.append(Shard(k, sd.name, 7 + k, SimpleNamespace(backend="embedded")))
            expected += [(f"{sd.name}/images/cam0/{i:06d}.png", c, x) for i, c, x in anns]
        man = merge_shards(root, shards)
        data = json.loads((root / "annotations.json").read_text())
        union = sorted({c for spec in shard_specs for c in spec[0]})
        assert man["classes"] == union == [c["name"] for c in data["categories"]]
        assert [c["id"] for c in data["categories"]] == list(range(1, len(union) + 1))
        assert [i["id"] for i in data["images"]] == list(range(1, sum(s[1] for s in shard_specs) + 1))
        assert [a["id"] for a in data["annotations"]] == list(range(1, len(expected) + 1))
        imgs = {i["id"]: i for i in data["images"]}
        cat = {c["id"]: c["name"] for c in data["categories"]}
        assert [(imgs[a["image_id"]]["file_name"], cat[a["category_id"]], a["bbox"][0])
                for a in data["annotations"]] == expected
        assert [i["seed"] for i in data["images"]] == [7 + k for k, s in enumerate(shard_specs) for _ in range(s[1])]
        same = all(s[0] == union for s in shard_specs)
        assert (root / "data.yaml").is_file() == same
        assert man["yolo"] == ("shared classes.txt" if same else "per shard (classes differ)")
        assert man["images"] == len(data["images"]) and man["annotations"] == len(expected) and man["complete"]


# -- on a local Ray cluster (one per module: Ray starts slowly on 2 cores) -------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield ray
        return
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.ray
def test_sweep_on_ray_equals_local(ray_cluster):
    assert list(ray_map(abs, [-1, 2], "local")) == [1, 2]  # any callable, builtins too
    pids = set(ray_map(lambda _: os.getpid(), range(4), "local"))
    assert pids and os.getpid() not in pids  # the tasks really ran in Ray's worker processes
    # errors raised in a task come back as themselves (clean message, exit code), others as RunError
    with pytest.raises(InputError, match=r"^--ray: expected"):
        list(ray_map(parse_ray_address, ["nowhere"], "local"))
    with pytest.raises(RunError, match="ValueError"):
        list(ray_map(int, ["x"], "local"))
    kw = dict(reps=6, base_seed=11, chunk=2)
    local = run_experiments(["fig9", "fig8c"], **kw)
    on_ray = run_experiments(["fig9", "fig8c"], map_fn=lambda fn, tasks: ray_map(fn, tasks, "local"), **kw)
    same_results(local, on_ray)


@pytest.mark.ray
def test_two_worlds_on_ray_equal_the_local_shards(ray_cluster, tmp_path, town01):
    coco_mod = pytest.importorskip("pycocotools.coco")
    from carla_mr.dataset.recorder import record

    sc = scenario(town01)
    finished = []
    on_ray = record_shards(sc, tmp_path / "ray", worlds=2, address="local",
                           on_shard=lambda i, s: finished.append(i))
    local = record_shards(sc, tmp_path / "local", worlds=2)
    assert sorted(finished) == [0, 1]
    pids = [s["pid"] for s in on_ray["summaries"]]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # one actor process per world
    assert {s["pid"] for s in local["summaries"]} == {os.getpid()}
    # byte for byte: frames, labels, meta, shard manifests, merged manifest and COCO
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    assert {k: v for k, v in on_ray.items() if k != "summaries"} == {k: v for k, v in local.items()
                                                                      if k != "summaries"}
    # shard i is exactly the single-world recording with seed + i
    plan = shard_plan(sc, worlds=2)
    alone = tmp_path / "alone1"
    record(plan[1].scenario, alone, seed=4)
    assert tree(alone) == tree(tmp_path / "ray" / "shard001")
    assert plan[1].seed == 4 == json.loads((alone / "manifest.json").read_text())["seed"]

    root = tmp_path / "ray"
    man = json.loads((root / "manifest.json").read_text())
    assert man["format"] == SHARDED_FORMAT and man["worlds"] == 2 and man["complete"]
    assert [s["seed"] for s in man["shards"]] == [3, 4]
    merged = coco_mod.COCO(str(root / "annotations.json"))
    shard_cocos = [json.loads((root / d / "annotations.json").read_text()) for d in ("shard000", "shard001")]
    assert len(merged.getImgIds()) == sum(len(c["images"]) for c in shard_cocos) == man["images"] > 0
    assert len(merged.getAnnIds()) == sum(len(c["annotations"]) for c in shard_cocos) == man["annotations"] > 0
    data = json.loads((root / "annotations.json").read_text())
    assert [i["id"] for i in data["images"]] == list(range(1, len(data["images"]) + 1))
    assert [a["id"] for a in data["annotations"]] == list(range(1, len(data["annotations"]) + 1))
    cat = {c["id"]: c["name"] for c in data["categories"]}
    # every merged annotation is its shard's annotation, on the same picture, with the same class name
    expected = []
    for k, c in enumerate(shard_cocos):
        names = {x["id"]: x["name"] for x in c["categories"]}
        files = {x["id"]: x["file_name"] for x in c["images"]}
        expected += [(f"shard{k:03d}/{files[a['image_id']]}", names[a["category_id"]], a["bbox"], a["sign_id"])
                     for a in c["annotations"]]
    got = [(merged.imgs[a["image_id"]]["file_name"], cat[a["category_id"]], a["bbox"], a["sign_id"])
           for a in data["annotations"]]
    assert got == expected
    assert all((root / i["file_name"]).is_file() for i in data["images"])
    assert (root / "classes.txt").read_text().split() == man["classes"]


@pytest.mark.ray
def test_cli_verbs_on_ray(ray_cluster, tmp_path, town01):
    from carla_mr.cli import main

    runner = CliRunner()
    args = ["market", "experiment", "fig9", "--reps", "4", "--no-plots", "--json"]
    a = runner.invoke(main, args + ["--ray", "local", "--out", str(tmp_path / "m1")])
    b = runner.invoke(main, args + ["--out", str(tmp_path / "m2")])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert NO_RAY_NOTE not in a.stderr
    assert (tmp_path / "m1" / "fig9_raw.csv").read_bytes() == (tmp_path / "m2" / "fig9_raw.csv").read_bytes()
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["mtepvisa_over_epvisa_by_n"] == jb["mtepvisa_over_epvisa_by_n"]


def test_carla_hosts_one_server_per_world(tmp_path, town01):
    """With --carla-hosts, world i connects to server i with traffic-manager port tm_port + i
    (CARLA stand-in servers in this process; the Ray path ships the same Shard to an actor)."""
    pytest.importorskip("carla")
    from carla_mr.world.carla_backend import CarlaWorld
    from carla_mr.testing.carla_standin import StandinServer

    text = town01.read_text(encoding="utf-8")
    servers = {}

    def factory(shard):
        srv = servers[shard.carla] = StandinServer(text, "Town01")
        return CarlaWorld(shard.scenario, seed=shard.seed, client_factory=srv.client_factory,
                          owns_signals=False)

    # warmup_s > 0: on the CARLA backend a camera has no image on the reset tick (frame 0)
    sc = scenario_from_dict({"map": "Town01", "backend": "carla", "seed": 5, "vehicles": {"avs": 2, "background": 1},
                             "recorder": {**REC, "cameras": 1, "max_frames": 2, "every_k": 1, "warmup_s": 0.1}})
    hosts = parse_carla_hosts("h1:2000,h2:3000")
    res = record_shards(sc, tmp_path / "c", worlds=2, carla_hosts=hosts, world_factory=factory)
    assert sorted(servers) == ["h1:2000", "h2:3000"]
    for (host, port), tm in zip(hosts, (8000, 8001)):
        calls = servers[f"{host}:{port}"].calls
        assert ("Client.__init__", (host, port), {}) in calls
        assert any(c[0].endswith("get_trafficmanager") and c[1][:1] == (tm,) for c in calls), calls[:20]
    assert [r["carla"] for r in res["shards"]] == ["h1:2000", "h2:3000"] and res["complete"]
    assert [r["images"] for r in res["shards"]] == [2, 2]
    for k, (host, port) in enumerate(hosts):
        m = json.loads((tmp_path / "c" / f"shard{k:03d}" / "manifest.json").read_text())
        assert (m["seed"], m["scenario"]["carla"]["host"], m["scenario"]["carla"]["port"]) == (5 + k, host, port)
