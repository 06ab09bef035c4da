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


def test_object_names_are_discovered_and_cached_per_town(make_server, town_scenario, tmp_path):
    srv = make_server()
    w = CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False, cache_dir=tmp_path)
    w.reset()
    table = w.sign_objects()
    truth = {lid: k for k, (_, lid) in enumerate(srv.sign_boxes) if lid}
    for sid, kind in zip(w.signs.ids, w.signs.kind):
        if kind == "traffic_light":
            assert table[str(sid)] == []
            continue
        env = srv.env_names[truth[str(sid)]]
        assert table[str(sid)] == [f"{env}_SM_Plate", f"{env}_SM_Post"], sid
    w.sign_objects()
    assert srv.counts["World.get_names_of_all_objects"] == 1  # asked once
    w.close()
    files = list(tmp_path.glob("sign_objects_*.json"))
    assert len(files) == 1 and "Town01" in files[0].name
    # a new process (empty memory) on another server with this town reads the disk cache
    ct.clear_memory_cache()
    srv2 = make_server()
    w2 = CarlaWorld(town_scenario(), client_factory=srv2.client_factory, install_handlers=False, cache_dir=tmp_path)
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


def test_texture_goes_to_the_signs_objects_and_shows(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False) as w:
        sid = _watching(srv, w, face_sign)
        img = np.zeros((16, 16, 3), np.uint8)
        img[...] = (10, 200, 10)
        w.apply_sign_textures({sid: img})
        names, size, mean = srv.texture_calls[-1]
        assert names == w.sign_objects()[sid] and size == (16, 16)
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


def test_a_server_that_ignores_textures_is_reported(make_server, town_scenario, face_sign):
    srv = make_server()
    srv.ignore_textures = True
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False) as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: np.full((8, 8, 3), 99, np.uint8)})
        w.tick()
        assert w.stats["texture_noops"] == [sid]


def test_original_cannot_be_restored_and_labels_stay_truthful(make_server, town_scenario, face_sign):
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False) as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: SignTexture(source="generated", ref="g1", image=np.full((8, 8, 3), 5, np.uint8))})
        w.apply_sign_textures({sid: None})
        assert w.stats["texture_not_restorable"] == [sid]
        assert w.sign_textures()[sid].ref == "g1"
        tl = next(str(s) for s, k in zip(w.signs.ids, w.signs.kind) if k == "traffic_light")
        w.apply_sign_textures({tl: np.full((8, 8, 3), 5, np.uint8)})
        assert w.stats["texture_no_object"] == [tl]
        with pytest.raises(KeyError):
            w.apply_sign_textures({"no-such-sign": np.full((8, 8, 3), 5, np.uint8)})


def test_servers_without_the_plural_call_get_one_call_per_object(make_server, town_scenario, face_sign, monkeypatch):
    from carla_mr.testing.carla_standin import StandinWorld

    monkeypatch.delattr(StandinWorld, "apply_textures_to_objects")
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False) as w:
        sid = _watching(srv, w, face_sign)
        w.apply_sign_textures({sid: np.full((8, 8, 3), (10, 200, 10), np.uint8)})
        names = w.sign_objects()[sid]
        assert [c[0] for c in srv.texture_calls] == [[n] for n in names]
        assert srv.counts["World.apply_color_texture_to_object"] == len(names) == 2
        w.tick()
        assert w.stats["texture_noops"] == []


def test_a_corrupt_name_cache_is_ignored(make_server, town_scenario, tmp_path):
    (tmp_path / "sign_objects_Town01_0.9.16.json").write_text("{not json")
    srv = make_server()
    with CarlaWorld(town_scenario(), client_factory=srv.client_factory, install_handlers=False,
                    cache_dir=tmp_path) as w:
        w.reset()
        table = w.sign_objects()
        assert any(table.values())
        assert srv.counts["World.get_names_of_all_objects"] == 1  # rediscovered
    import json

    cached = json.loads((tmp_path / "sign_objects_Town01_0.9.16.json").read_text())["signs"]
    assert cached and all(table[k] == v for k, v in cached.items())
