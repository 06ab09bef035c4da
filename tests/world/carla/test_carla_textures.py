"""Texture streaming: image -> carla.TextureColor (orientation, int colours), object names
discovered at run time and cached per town, the right objects textured, no-ops detected."""

from __future__ import annotations

import numpy as np
import pytest

carla = pytest.importorskip("carla")

from carla_mr.world import carla_textures as ct  # noqa: E402
from carla_mr.world.base import SignTexture  # noqa: E402
from carla_mr.config.camera import CameraSpec  # noqa: E402
from carla_mr.world.carla_backend import CarlaWorld  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_name_cache():
    ct.clear_memory_cache()
    yield
    ct.clear_memory_cache()


def test_texture_rows_are_flipped_once_and_colours_are_ints():
    img = np.zeros((4, 3, 3), np.uint8)
    img[0] = (255, 0, 0)  # top row red
    img[-1] = (0, 0, 255)  # bottom row blue
    tex = ct.to_texture_color(carla, img)  # numpy uint8 in, python ints to libcarla
    assert (tex.width, tex.height) == (3, 4)
    top = tex.get(0, 3)  # CARLA's texture rows run bottom-up
    bottom = tex.get(0, 0)
    assert (top.r, top.g, top.b, top.a) == (255, 0, 0, 255)
    assert (bottom.r, bottom.g, bottom.b) == (0, 0, 255)
    assert (ct.texture_to_array(tex)[..., :3] == img).all()


def test_large_images_are_resampled_and_alpha_kept():
    img = np.zeros((600, 300, 4), np.uint8)
    img[..., 3] = 77
    rgba = ct.prepare_image(img)
    assert rgba.shape == (256, 128, 4) and (rgba[..., 3] == 77).all()
    with pytest.raises(ValueError):
        ct.prepare_image(np.zeros((4, 4), np.uint8))


def test_patch_check():
    a = np.zeros((10, 10, 3), np.uint8)
    b = a.copy()
    b[2:5, 2:5] = 100
    assert ct.patch_changed(ct.patch_mean(a, [2, 2, 5, 5]), ct.patch_mean(b, [2, 2, 5, 5])) is True
    assert ct.patch_changed(ct.patch_mean(a, [6, 6, 9, 9]), ct.patch_mean(b, [6, 6, 9, 9])) is False
    assert ct.patch_changed(None, ct.patch_mean(b, [0, 0, 1, 1])) is None


def test_actor_names_are_the_environment_objects_without_their_mesh_suffix():
    assert ct.actor_name("BP_SpeedLimit30_20_SM_0") == "BP_SpeedLimit30_20"
    assert ct.actor_name("BP_SpeedLimit30_2_Inst_13") == "BP_SpeedLimit30_2"
    assert ct.actor_name("SM_Road_01") == "SM_Road_01"


class _Box:
    def __init__(self, x):
        self.location = carla.Location(x, 0.0, 2.0)


class _Env:
    def __init__(self, name, x):
        self.name, self.bounding_box = name, _Box(x)


class _World:
    """Environment objects named the way a real town names them, two actors sharing a prefix."""

    def get_names_of_all_objects(self):
        return ["BP_SpeedLimit30_2", "BP_SpeedLimit30_20", "SM_Road_01"]

    def get_environment_objects(self, label):
        objs = [_Env("BP_SpeedLimit30_2_SM_0", 0.0), _Env("BP_SpeedLimit30_20_SM_0", 50.0)]
        if label == carla.CityObjectLabel.Any:
            objs.append(_Env("BP_SpeedLimit30_20_SM_1", 50.0))
        return objs


def test_a_sign_goes_to_its_exact_actor_never_to_one_sharing_its_prefix():
    idx = ct.SignObjectIndex(memory={})
    table = idx.discover(_World(), carla, "T", ["a", "b", "far"], np.array([[0.5, 0, 2], [50, 0, 2], [500, 0, 2]]))
    assert table["a"].object == "BP_SpeedLimit30_2" and table["a"].other_meshes == []
    assert table["b"].object == "BP_SpeedLimit30_20" and table["b"].other_meshes == ["BP_SpeedLimit30_20_SM_1"]
    assert table["far"].object is None and "within" in table["far"].reason


def test_object_names_are_discovered_and_cached_per_town(make_server, town_scenario, tmp_path):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False, cache_dir=tmp_path)
    w.reset()
    table = w.sign_objects()
    truth = {lid: k for k, (_, lid) in enumerate(srv.sign_boxes) if lid}
    for sid, kind in zip(w.signs.ids, w.signs.kind):
        if kind == "traffic_light":
            assert str(sid) not in table
            continue
        k = truth[str(sid)]
        assert table[str(sid)].object == srv.box_actor[k] == f"BP_Sign_{k}", sid  # the actor, exactly
        assert table[str(sid)].other_meshes == [f"BP_Sign_{k}_SM_1"]  # its post
    assert {"BP_Sign_2", "BP_Sign_20"} <= {t.object for t in table.values()}  # prefixes of each other
    w.sign_objects()
    assert srv.counts["World.get_names_of_all_objects"] == 1  # asked once
    w.close()
    files = list(tmp_path.glob("sign_objects_*.json"))
    assert len(files) == 1 and "Town01" in files[0].name
    # a new process (empty memory) on another server with this town reads the disk cache
    ct.clear_memory_cache()
    srv2 = make_server()
    w2 = CarlaWorld(town_scenario(), client_factory=srv2.client_factory, owns_signals=False, cache_dir=tmp_path)
    w2.reset()
    assert w2.sign_objects() == table
    assert srv2.counts.get("World.get_names_of_all_objects", 0) == 0
    w2.close()


def _watching(srv, w, face_sign):
    snap = w.reset()
    av = int(snap.ids[snap.role == 1][0])
    w.attach_camera("front", CameraSpec(width=120, height=90, fov_deg=60.0), av)
    i = next(i for i, k in enumerate(w.signs.kind) if k == "speed_limit")
    face_sign(srv, av, int(w._box_index[i]), dist=10.0)
    w.tick()
    return str(w.signs.ids[i])


def test_texture_goes_to_the_signs_actor_and_shows(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        sid = _watching(srv, w, face_sign)
        img = np.zeros((16, 16, 3), np.uint8)
        img[...] = (10, 200, 10)
        w.apply_sign_textures({sid: img})
        names, size, mean = srv.texture_calls[-1]
        assert names == [w.sign_objects()[sid].object] and size == (16, 16)
        assert np.allclose(mean, (10, 200, 10))
        w.tick()
        fr = w.read_camera("front")
        lab = next(l for l in fr.labels if l["id"] == sid)
        assert lab["source"] == "generated"
        x0, y0, x1, y1 = (int(round(v)) for v in lab["box"])
        patch = fr.image[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
        assert (patch == (10, 200, 10)).all(axis=-1).mean() > 0.9
        assert w.stats["texture_noops"] == [] and w.stats["texture_checked"] == 1
        assert w.sign_textures()[sid].source == "generated"
        assert w.stats["texture_no_object"] == {}
        # CARLA recolours every mesh of the actor: the sign's post took the texture too, and the summary says so
        k = int(w._box_index[list(map(str, w.signs.ids)).index(sid)])
        assert w.stats["texture_other_meshes"] == {sid: {"actor": f"BP_Sign_{k}", "other_meshes": [f"BP_Sign_{k}_SM_1"]}}
    # only actor names ever reached the texture calls
    sent = {n for names, _, _ in srv.texture_calls for n in names}
    assert sent and sent <= set(srv.box_actor) and not any("_SM_" in n for n in sent)


def test_a_refused_texture_is_recorded_per_sign_and_the_run_goes_on(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        sid = _watching(srv, w, face_sign)
        other = next(str(s) for s, k in zip(w.signs.ids, w.signs.kind) if k == "speed_limit" and str(s) != sid)
        target = w.sign_objects()[other].object
        srv.object_names.remove(target)  # the server no longer knows that actor
        w.apply_sign_textures({other: np.full((8, 8, 3), 7, np.uint8), sid: np.full((8, 8, 3), 9, np.uint8)})
        assert "unable to find Actor" in w.stats["texture_no_object"][other]
        assert w.sign_textures()[other].source == "original"  # labels stay truthful
        assert w.sign_textures()[sid].source == "generated"  # the other sign still got its texture
        w.tick()


def test_a_sign_merged_into_a_larger_actor_is_reported(make_server, town_scenario, face_sign, tmp_path):
    srv0 = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv0.client_factory, owns_signals=False,
                    cache_dir=tmp_path / "a") as w0:
        w0.reset()
        i = next(i for i, k in enumerate(w0.signs.kind) if k == "speed_limit")
        box = int(w0._box_index[i])
    ct.clear_memory_cache()
    srv = make_server(merged_boxes=(box,))
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False,
                    cache_dir=tmp_path / "b") as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: np.full((8, 8, 3), 9, np.uint8)})
        merged = w.summary()["texture_other_meshes"]
        assert merged == {sid: {"actor": f"BP_Corner_{box}",
                                "other_meshes": [f"BP_Corner_{box}_SM_1", f"BP_Corner_{box}_SM_2"]}}


def test_a_server_that_ignores_textures_is_reported(make_server, town_scenario, face_sign):
    srv = make_server()
    srv.ignore_textures = True
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: np.full((8, 8, 3), 99, np.uint8)})
        w.tick()
        assert w.stats["texture_noops"] == [sid]


def test_original_cannot_be_restored_and_labels_stay_truthful(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False) as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: SignTexture(source="generated", ref="g1", image=np.full((8, 8, 3), 5, np.uint8))})
        w.apply_sign_textures({sid: None})
        assert w.stats["texture_not_restorable"] == [sid]
        assert w.sign_textures()[sid].ref == "g1"
        tl = next(str(s) for s, k in zip(w.signs.ids, w.signs.kind) if k == "traffic_light")
        w.apply_sign_textures({tl: np.full((8, 8, 3), 5, np.uint8)})
        assert "traffic light" in w.stats["texture_no_object"][tl]
        with pytest.raises(KeyError):
            w.apply_sign_textures({"no-such-sign": np.full((8, 8, 3), 5, np.uint8)})


def test_a_corrupt_name_cache_is_ignored(make_server, town_scenario, tmp_path):
    (tmp_path / "sign_objects_Town01_0.9.16.json").write_text("{not json")
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, owns_signals=False,
                    cache_dir=tmp_path) as w:
        w.reset()
        table = w.sign_objects()
        assert any(t.object for t in table.values())
        assert srv.counts["World.get_names_of_all_objects"] == 1  # rediscovered
    import json

    cached = json.loads((tmp_path / "sign_objects_Town01_0.9.16.json").read_text())
    assert cached["format"] == ct.CACHE_FORMAT
    assert cached["signs"] and all(table[k].to_json() == v for k, v in cached["signs"].items())
