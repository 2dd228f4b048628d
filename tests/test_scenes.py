"""Procedural scenes: deterministic ground truth, distinct scenes, cameras, the visual hull."""

import math

import pytest
import torch

# module import only: `scenes.test_cameras` must not be collected as a test
from nerfcomp import scenes
from nerfcomp.render import rays_from_camera

pytestmark = pytest.mark.usefixtures("one_thread")

CAMERA = scenes.camera_at(30.0, 25.0, size=16)


@pytest.fixture(scope="module")
def renders() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {name: scenes.render_ground_truth(scenes.SCENES[name], CAMERA) for name in scenes.SCENES}


def test_ground_truth_is_bit_identical_across_calls(renders):
    for name, (rgb, mask) in renders.items():
        again_rgb, again_mask = scenes.render_ground_truth(scenes.get_scene(name), CAMERA)
        assert torch.equal(rgb, again_rgb) and torch.equal(mask, again_mask), name


def test_ground_truth_image_and_alpha(renders):
    for name, (rgb, mask) in renders.items():
        assert rgb.shape == (16, 16, 3) and rgb.dtype == torch.float32
        assert mask.shape == (16, 16) and mask.dtype == torch.bool
        assert 0.1 < mask.float().mean() < 0.5, name  # the object fills part of the view
        assert (rgb[~mask] == 1.0).all()  # background is exactly white
        assert rgb.min() >= 0 and rgb[mask].mean() < 0.9  # the object is not white


def test_the_three_scenes_differ(renders):
    assert list(renders) == ["primitives", "blocks", "glossy"]
    names = list(renders)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            (rgb_a, mask_a), (rgb_b, mask_b) = renders[a], renders[b]
            assert (rgb_a - rgb_b).abs().mean() > 0.05, (a, b)
            assert (mask_a != mask_b).float().mean() > 0.05, (a, b)


def test_get_scene_unknown_name_lists_the_choices():
    assert scenes.get_scene("glossy").name == "glossy"
    with pytest.raises(ValueError, match="'lego'.*primitives, blocks, glossy"):
        scenes.get_scene("lego")


def test_views_unknown_split():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        scenes.views("primitives", "val", 8)


def test_look_at_is_orthonormal_and_looks_at_the_target():
    eye, target = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, -0.2, 0.0])
    c2w = scenes.look_at(eye, target)
    rot = c2w[:3, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3))
    assert torch.equal(c2w[:3, 3], eye) and torch.equal(c2w[3], torch.tensor([0.0, 0, 0, 1]))
    forward = (target - eye) / (target - eye).norm()
    torch.testing.assert_close(-rot[:, 2], forward)  # OpenGL: the camera looks down -z
    assert rot[1, 1] > 0  # y stays up


def test_camera_poses():
    cam = scenes.camera_at(90.0, 0.0, size=16)
    # azimuth 90°, elevation 0°: on the +x side of LOOK_AT at the orbit radius
    torch.testing.assert_close(cam.c2w[:3, 3], torch.tensor([scenes.CAMERA_RADIUS, -0.2, 0.0]))
    # the Blender synthetic focal length at 800 px
    assert cam.resized(800, 800).focal == pytest.approx(1111.111, abs=1e-3)
    train = scenes.train_cameras()  # the 100 poses training uses
    assert all(5.0 - 1e-9 <= c.elevation <= 85.0 + 1e-9 for c in train)
    assert len({(round(c.azimuth, 6), round(c.elevation, 6)) for c in train}) == 100


def test_train_and_test_poses_do_not_coincide():
    def eyes(cams):
        return torch.stack([c.c2w[:3, 3] for c in cams])

    test = eyes(scenes.test_cameras())
    assert test.shape == (8, 3)
    for n in (8, 100):
        gap = torch.cdist(eyes(scenes.train_cameras(n)), test).min().item()
        assert gap > 0.05, n  # > 0.8° apart on the 3.6-radius orbit
    # the same seed gives the same poses; another seed gives others
    a, b, c = (scenes.train_cameras(8, seed=s) for s in (0, 0, 1))
    assert torch.equal(eyes(a), eyes(b)) and not torch.equal(eyes(a), eyes(c))


def surface_points(scene: scenes.Scene, cameras) -> torch.Tensor:
    """Points on the ground-truth surface, by sphere tracing the pixels of ``cameras``."""
    pts = []
    for cam in cameras:
        origins, dirs = rays_from_camera(cam.c2w, cam.height, cam.width, cam.focal)
        t, hit = scenes.sphere_trace(scene, origins, dirs)
        pts.append(origins[hit] + t[hit, None] * dirs[hit])
    return torch.cat(pts)


def test_visual_hull_contains_every_surface_point():
    # the same positional arguments as train() → one shared lru_cache entry
    train_views = scenes.views("primitives", "train", 16, 8, 0)
    assert scenes.views("primitives", "train", 16, 8, 0) is train_views
    res = 32
    hull = train_views.visual_hull(res)
    assert hull.shape == (res, res, res)
    assert hull.float().mean() < 0.4  # carving removed most of the cube
    assert not hull[res // 2, -1, res // 2]  # the top centre is empty space
    # surface seen by held-out cameras, at a finer resolution than the training views
    cams = [scenes.test_cameras(32)[i] for i in (0, 3, 6)] + [scenes.camera_at(10, 80, 32)]
    pts = surface_points(scenes.get_scene("primitives"), cams)
    assert pts.shape[0] > 500
    sdf, _ = scenes.get_scene("primitives").sdf(pts)
    assert sdf.abs().max() < 1e-3  # they are on the surface
    idx = ((pts + 1) / 2 * res).floor().long().clamp(0, res - 1)
    assert hull[idx[:, 0], idx[:, 1], idx[:, 2]].all()


def test_rays_of_views_match_images():
    v = scenes.views("primitives", "train", 16, 8, 0)
    origins, dirs, rgb = v.rays()
    assert origins.shape == dirs.shape == rgb.shape == (8 * 16 * 16, 3)
    assert torch.equal(rgb[:256].reshape(16, 16, 3), v.images[0])
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(8 * 256))
    # every ray of view 0 starts at its camera
    assert torch.equal(origins[:256], v.cameras[0].c2w[:3, 3].expand(256, 3))
    assert math.isclose(v.cameras[0].focal, 8 / math.tan(0.5 * scenes.CAMERA_ANGLE_X))


def test_ground_truth_pixels_average_the_rays_through_their_area():
    """Supersampling lines up with the pixel grid: an s×s-supersampled pixel is the mean of
    the s×s pixels of a one-ray-per-pixel render at s times the resolution."""
    scene, cam = scenes.get_scene("primitives"), scenes.test_cameras(12)[0]
    rgb, alpha = scenes.render_ground_truth(scene, cam, supersample=3)
    fine, fine_alpha = scenes.render_ground_truth(scene, cam.resized(36, 36), supersample=1)
    pooled = fine.reshape(12, 3, 12, 3, 3).mean(dim=(1, 3))
    torch.testing.assert_close(rgb, pooled)
    assert torch.equal(alpha, fine_alpha.reshape(12, 3, 12, 3).any(dim=3).any(dim=1))
    assert ((rgb > 0.05) & (rgb < 0.95)).any()  # silhouettes get in-between values


def test_views_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(scenes, "CACHE_DIR", tmp_path)
    scenes.views.cache_clear()
    first = scenes.views("primitives", "test", 10)
    assert list(tmp_path.glob("views/primitives-test-*.npz"))
    calls = []
    real = scenes.render_ground_truth
    monkeypatch.setattr(scenes, "render_ground_truth", lambda *a: calls.append(a) or real(*a))
    scenes.views.cache_clear()
    again = scenes.views("primitives", "test", 10)
    assert not calls and torch.equal(again.images, first.images)
    assert torch.equal(again.masks, first.masks)
    for f in tmp_path.glob("views/*.npz"):
        f.write_bytes(b"not an npz")  # a damaged cache file is rendered again
    scenes.views.cache_clear()
    assert torch.equal(scenes.views("primitives", "test", 10).images, first.images) and calls
    scenes.views.cache_clear()
