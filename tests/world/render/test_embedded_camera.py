"""The camera on the real embedded backend (SUMO + libcarla): textures applied through the
World API show up on the signs, exactly inside the label boxes."""

from __future__ import annotations

import numpy as np
import pytest

from carla_mr.config import scenario_from_dict
from carla_mr.config.camera import CameraSpec


def test_apply_sign_textures_shows_in_embedded_camera(town01):
    pytest.importorskip("libsumo")
    from carla_mr.world.embedded import EmbeddedWorld

    sc = scenario_from_dict({"map": str(town01), "seed": 3, "vehicles": {"avs": 4, "background": 10},
                             "signs": {"random_count": 60}})
    magenta = np.zeros((32, 32, 3), np.uint8)
    magenta[:] = (255, 0, 255)
    with EmbeddedWorld(sc, seed=3) as w:
        snap = w.reset()
        ids = [str(i) for i, k in zip(w.signs.ids, w.signs.kind) if k != "traffic_light"]
        w.apply_sign_textures({i: magenta for i in ids})
        assert all(w.sign_textures()[i].source == "generated" for i in ids)
        for j, av in enumerate(sorted(int(v) for v in snap.ids[snap.av_mask])):
            w.attach_camera(f"c{j}", CameraSpec(width=320, height=240, fov_deg=90), av)
        checked = 0
        for _ in range(400):
            snap = w.tick()
            if snap.frame % 4:
                continue
            for j in range(4):
                fr = w.read_camera(f"c{j}")
                assert fr.frame == snap.frame and fr.image.shape == (240, 320, 3)
                im = fr.image.astype(int)  # magenta under the scene's light (OpenGL) or exact (CPU)
                mag = (im[:, :, 0] > 120) & (im[:, :, 2] > 120) & (im[:, :, 1] < 60)
                inside = np.zeros_like(mag)
                for lab in fr.labels:
                    x0, y0, x1, y1 = lab["box"]
                    inside[y0:y1, x0:x1] = True
                    if lab["source"] == "generated" and lab["visible"] == 1.0 and min(x1 - x0, y1 - y0) >= 6:
                        assert mag[y0:y1, x0:x1].mean() > 0.4, lab
                        checked += 1
                assert not (mag & ~inside).any()  # no sign pixel outside every label box
            if checked >= 3:
                break
        assert checked >= 3
