"""Volume rendering: compositing by hand, ray geometry, the occupancy grid, early stopping."""

import math

import pytest
import torch

from nerfcomp.render import (
    OccupancyGrid,
    RenderSettings,
    composite_packed,
    grid_from_density,
    march_samples,
    optical_depth_packed,
    ray_aabb_intersect,
    rays_from_camera,
    render_image,
    render_rays,
    visible_samples,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = RenderSettings(step_size=2 * 3**0.5 / 256)  # pinned: the counts below depend on it
STEP = SETTINGS.step_size  # 2√3/256 ≈ 0.013532
SPHERE_RGB = torch.tensor([0.2, 0.4, 0.6])

# optical thicknesses σδ of three samples on one ray, chosen so that
# transmittance T: 1, .7, .14 (then .07 behind the last one)
# alpha 1 − e^(−σδ): .3, .8, .5
# weights T·alpha: .3, .56, .07 → opacity .93
TAU = [math.log(1 / 0.7), math.log(0.7 / 0.14), math.log(0.14 / 0.07)]
RGB3 = torch.eye(3)  # red, green, blue


def solid_sphere(radius: float = 0.5, sigma: float = 100.0):
    """rgb_sigma_fn of a constant-colour ball of constant density (opaque at σ = 100)."""

    def density(p: torch.Tensor) -> torch.Tensor:
        return torch.where(p.norm(dim=-1) < radius, sigma, 0.0)

    def rgb_sigma(p: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return SPHERE_RGB.expand(p.shape[0], 3), density(p)

    return rgb_sigma, density


def front_camera(size: int = 16, focal: float = 20.0) -> tuple[torch.Tensor, torch.Tensor]:
    c2w = torch.eye(4)
    c2w[2, 3] = 3.0  # at z = 3 looking down -z at the origin
    return rays_from_camera(c2w, size, size, focal)


# --- compositing ---------------------------------------------------------------------------


def test_composite_one_ray_weights_written_out():
    # δ = 0.5, so σ = 2·σδ
    sigma = 2 * torch.tensor(TAU)
    color, opacity, depth = composite_packed(
        sigma, RGB3, torch.full((3,), 0.5), torch.zeros(3, dtype=torch.long), 1, background=0.0
    )
    torch.testing.assert_close(color, torch.tensor([[0.3, 0.56, 0.07]]))
    torch.testing.assert_close(opacity, torch.tensor([0.93]))
    torch.testing.assert_close(depth, torch.tensor([math.log(1 / 0.07)]))  # Σσδ


def test_optical_depth_is_exclusive_and_restarts_per_ray():
    tau = torch.tensor([1.0, 2.0, 3.0, 10.0, 20.0])
    ray_idx = torch.tensor([0, 0, 0, 2, 2])
    excl, total = optical_depth_packed(tau, ray_idx, 3)
    assert excl.tolist() == [0.0, 1.0, 3.0, 0.0, 10.0]
    assert total.tolist() == [6.0, 0.0, 30.0]


@pytest.mark.parametrize("background", [0.0, 1.0, 0.25])
def test_composite_packed_rays_over_background(background):
    # ray 0: the three samples above; ray 1: no samples; ray 2: one grey sample, σδ = ln 4
    sigma = torch.tensor([*TAU, math.log(4.0)])
    rgb = torch.cat([RGB3, torch.full((1, 3), 0.5)])
    ray_idx = torch.tensor([0, 0, 0, 2])
    color, opacity, depth = composite_packed(
        sigma, rgb, torch.ones(4), ray_idx, 3, background=background
    )
    torch.testing.assert_close(opacity, torch.tensor([0.93, 0.0, 0.75]))
    expected = torch.tensor(
        [
            [0.3, 0.56, 0.07],  # + background·.07
            [0.0, 0.0, 0.0],  # + background·1
            [0.375, 0.375, 0.375],  # .75·.5 + background·.25
        ]
    ) + background * torch.tensor([[0.07], [1.0], [0.25]])
    torch.testing.assert_close(color, expected)
    torch.testing.assert_close(depth, torch.tensor([math.log(1 / 0.07), 0.0, math.log(4.0)]))


def test_composite_in_two_rounds_equals_one_round():
    sigma = torch.tensor([*TAU, math.log(4.0)])
    rgb = torch.cat([RGB3, torch.full((1, 3), 0.5)])
    ray_idx = torch.tensor([0, 0, 0, 2])
    ones = torch.ones(4)
    whole, whole_opacity, whole_depth = composite_packed(sigma, rgb, ones, ray_idx, 3, 1.0)

    first = torch.tensor([0, 3])  # the first sample of every ray
    rest = torch.tensor([1, 2])
    c1, o1, d1 = composite_packed(sigma[first], rgb[first], ones[:2], ray_idx[first], 3, 0.0)
    torch.testing.assert_close(d1, torch.tensor([math.log(1 / 0.7), 0.0, math.log(4.0)]))
    c2, o2, d2 = composite_packed(
        sigma[rest], rgb[rest], ones[:2], ray_idx[rest], 3, 0.0, depth_in=d1
    )
    # the second round starts at T = .7: weights .56, .07
    torch.testing.assert_close(c2[0], torch.tensor([0.0, 0.56, 0.07]))
    torch.testing.assert_close(o1 + o2, whole_opacity)
    torch.testing.assert_close(d2, whole_depth)
    torch.testing.assert_close(c1 + c2 + 1.0 * (1 - (o1 + o2))[:, None], whole)


def test_composite_independent_of_other_rays_in_the_batch():
    # 4096 opaque rays (4 samples of σδ = 12.5, as σ ≈ 1000 at the default step) come
    # before a ray whose samples give T: 1, .7, .14 → opacity .86 after two samples
    n_opaque = 4096
    sigma = torch.cat([torch.full((4 * n_opaque,), 12.5), torch.tensor(TAU[:2])])
    rgb = torch.ones(sigma.shape[0], 3)
    ray_idx = torch.cat([torch.arange(n_opaque).repeat_interleave(4), torch.full((2,), n_opaque)])
    _, opacity, _ = composite_packed(sigma, rgb, torch.ones_like(sigma), ray_idx, n_opaque + 1, 1.0)
    assert opacity[-1].item() == pytest.approx(0.86, abs=1e-4)


def test_render_rays_matches_float64_reference_on_dense_sphere():
    field32, _ = solid_sphere(sigma=1000.0)

    def field64(p, d):
        rgb, sigma = field32(p, d)
        return rgb.double(), sigma.double()

    origins, dirs = front_camera(32, 40.0)
    a, _ = render_rays(field32, origins, dirs, early_stop=False)
    b, _ = render_rays(field64, origins, dirs, early_stop=False)
    assert (a - b).abs().max().item() < 1e-3


# --- rays ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin, direction, t_near, t_far",
    [
        ((-3.0, 0.0, 0.0), (1.0, 0.0, 0.0), 2.0, 4.0),  # through the cube along +x
        ((0.5, 0.5, 5.0), (0.0, 0.0, -1.0), 4.0, 6.0),  # along -z, off-centre
        ((0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 0.0, 1.0),  # from inside: t_near clamps to 0
        ((0.0, -1.5, 0.0), (0.0, 1.0, 0.0), 0.5, 2.5),
    ],
)
def test_ray_aabb_intersect_axis_aligned(origin, direction, t_near, t_far):
    near, far = ray_aabb_intersect(torch.tensor([origin]), torch.tensor([direction]), -1.0, 1.0)
    assert near.item() == pytest.approx(t_near, abs=1e-6)
    assert far.item() == pytest.approx(t_far, abs=1e-6)


def test_ray_aabb_intersect_misses_and_box_corners():
    origins = torch.tensor([[0.0, 2.0, -3.0], [3.0, 0.0, 0.0], [0.0, 0.0, -3.0]])
    dirs = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    near, far = ray_aabb_intersect(origins[:2], dirs[:2], -1.0, 1.0)
    assert (far <= near).all()  # passes above the cube; points away from it
    # a (3,) box [0, 1] × [0, 1] × [-0.5, 2]: the ray along z at x = y = 0 grazes it
    near, far = ray_aabb_intersect(
        origins[2:], dirs[2:], torch.tensor([0.0, 0.0, -0.5]), torch.tensor([1.0, 1.0, 2.0])
    )
    assert (near.item(), far.item()) == pytest.approx((2.5, 5.0))


def test_rays_from_camera_centre_ray_is_minus_z_and_unit():
    # camera at (3, 0, 0) turned 90° about y: camera x → world -z, camera z → world +x
    c2w = torch.tensor(
        [
            [0.0, 0.0, 1.0, 3.0],
            [0.0, 1.0, 0.0, 0.0],
            [-1.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    origins, dirs = rays_from_camera(c2w, 5, 5, focal=4.0)
    assert origins.shape == dirs.shape == (25, 3)
    assert torch.equal(origins, torch.tensor([[3.0, 0.0, 0.0]]).expand(25, 3))
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(25))
    torch.testing.assert_close(dirs[12], -c2w[:3, 2])  # centre pixel looks down -z: (-1, 0, 0)
    # pixel (row 0, col 0): camera direction ∝ (-2/f, +2/f, -1) = (-.5, .5, -1), up and left
    cam = torch.tensor([-0.5, 0.5, -1.0]) / math.sqrt(1.5)
    torch.testing.assert_close(dirs[0], c2w[:3, :3] @ cam)


def test_march_samples_fixed_step_and_grid_cell():
    origins = torch.tensor([[-3.0, 0.25, 0.25]])
    dirs = torch.tensor([[1.0, 0.0, 0.0]])
    ray_idx, step_idx, t = march_samples(origins, dirs, SETTINGS)
    # t ∈ [2, 4]: ceil(2 / step) = 148 samples at the midpoints of the steps
    assert t.shape == (148,) and ray_idx.eq(0).all()
    assert step_idx.tolist() == list(range(148))
    torch.testing.assert_close(t, 2.0 + (torch.arange(148) + 0.5) * STEP)

    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[2, 2, 2] = True  # the cell [0, .5]^3
    grid = OccupancyGrid(occupied, 1.0)
    _, _, t = march_samples(origins, dirs, SETTINGS, grid)
    x = -3.0 + t
    assert t.shape == (37,)  # ceil(.5 / step)
    assert ((x > 0) & (x < 0.5)).all()


def test_occupancy_grid_query_and_bounds():
    occupied = torch.zeros(4, 4, 4, dtype=torch.bool)
    occupied[0, 1, 3] = True  # x ∈ [-1, -.5], y ∈ [-.5, 0], z ∈ [.5, 1]
    grid = OccupancyGrid(occupied, 1.0)
    pts = torch.tensor([[-0.9, -0.1, 0.6], [-0.4, -0.1, 0.6], [-0.9, 0.1, 0.6], [-1.5, -0.2, 2]])
    assert grid.query(pts).tolist() == [True, False, False, True]  # outside clamps to an edge
    lo, hi = grid.bounds()
    assert lo.tolist() == [-1.0, -0.5, 0.5] and hi.tolist() == [-0.5, 0.0, 1.0]
    assert grid.fraction() == 1 / 64


# --- the occupancy grid never culls dense samples ------------------------------------------

R = 16
CELL = 2 / R  # .125; cell centres at ±.0625, ±.1875, ...
THRESHOLD = 0.5


def blobs(width: float, amplitude: float, n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 3, generator=g) * 1.6 - 0.8

    def sigma(p):
        d2 = ((p[:, None, :] - centres[None]) ** 2).sum(-1)
        return (amplitude * torch.exp(-d2 / (2 * width**2))).sum(-1)

    return sigma


def slab(lo: float, thickness: float):
    return lambda p: torch.where((p[:, 0] > lo) & (p[:, 0] < lo + thickness), 50.0, 0.0)


def rod(x: float, y: float, radius: float):
    return lambda p: torch.where((p[:, 0] - x) ** 2 + (p[:, 1] - y) ** 2 < radius**2, 50.0, 0.0)


def shell(radius: float, thickness: float):
    return lambda p: torch.where((p.norm(dim=-1) - radius).abs() < thickness / 2, 50.0, 0.0)


def culled_dense_points(sigma_fn, subsamples: int = 1, n: int = 20000) -> tuple[int, int]:
    """(dense points the grid culls, dense points) over n random points in the cube."""
    g = torch.Generator().manual_seed(1)
    grid = grid_from_density(sigma_fn, 1.0, R, THRESHOLD, subsamples=subsamples, generator=g)
    pts = torch.rand(n, 3, generator=g) * 2 - 1
    dense = sigma_fn(pts) > THRESHOLD
    return int((dense & ~grid.query(pts)).sum()), int(dense.sum())


@pytest.mark.parametrize(
    "sigma_fn",
    [
        blobs(width=CELL, amplitude=100.0),
        blobs(width=2 * CELL, amplitude=1.0, seed=1),
        slab(0.01, CELL),  # one cell thick, boundaries off the centres
        slab(-0.73, 1.3 * CELL),
        rod(0.01, 0.02, 0.1),  # radius > CELL/√2: always holds a column of centres
        shell(0.6, CELL),
    ],
    ids=["blobs", "wide-faint-blobs", "slab", "slab-2", "rod", "shell"],
)
def test_grid_keeps_every_dense_point(sigma_fn):
    culled, dense = culled_dense_points(sigma_fn)
    assert dense > 100  # the check is not vacuous
    assert culled == 0


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="documented limitation: grid_from_density point-samples cell centres and dilates, "
    "so a feature thinner than a cell that falls between centres can be culled",
)
@pytest.mark.parametrize(
    "sigma_fn",
    [
        slab(0.01, CELL / 12),  # between the centres at ±.0625
        rod(0.01, 0.02, 0.01),
        lambda p: 10 * torch.exp(-((p - 0.03) ** 2).sum(-1) / (2 * 0.02**2)),  # narrow blob
    ],
    ids=["thin-slab", "thin-rod", "narrow-blob"],
)
def test_grid_keeps_sub_cell_features(sigma_fn):
    # subsamples=1, as evaluate.grid_for builds it: no cell centre lies inside the feature
    culled, dense = culled_dense_points(sigma_fn, n=200000)
    assert dense > 0
    assert culled == 0


# --- marching, early stop, culling --------------------------------------------------------


def test_visible_samples_stop_at_the_opaque_sample():
    # a ray along +x through a half-space of σ = 1000 from x = 0: σδ ≈ 13.5 per sample, so
    # the first dense sample is visible (T = 1 in front of it) and every later one is hidden
    origins = torch.tensor([[-3.0, 0.1, 0.1]])
    dirs = torch.tensor([[1.0, 0.0, 0.0]])
    ray_idx, _, t = march_samples(origins, dirs, SETTINGS)
    x = -3.0 + t
    keep = visible_samples(
        lambda p: torch.where(p[:, 0] > 0, 1000.0, 0.0), origins, dirs, ray_idx, t, SETTINGS
    )
    first_dense = int((x > 0).nonzero()[0])
    assert keep.tolist() == [i <= first_dense for i in range(t.shape[0])]


def test_render_rays_solid_sphere_analytic_colours():
    field, _ = solid_sphere()
    origins, dirs = front_camera()
    color, _ = render_rays(field, origins, dirs)
    image = color.reshape(16, 16, 3)
    torch.testing.assert_close(image[8, 8], SPHERE_RGB, atol=1e-4, rtol=0)  # opaque hit
    assert torch.equal(image[0, 0], torch.ones(3))  # misses the sphere: white background


def test_early_stop_same_image_fewer_queries():
    field, _ = solid_sphere()
    origins, dirs = front_camera()
    stopped, s_stats = render_rays(field, origins, dirs, SETTINGS, early_stop=True)
    full, f_stats = render_rays(field, origins, dirs, SETTINGS, early_stop=False)
    assert (stopped - full).abs().max().item() < 1e-3
    # 16×16 rays: 28420 samples in the cube without early stop
    assert f_stats["queries"] == 28420
    assert s_stats["queries"] < 0.95 * f_stats["queries"]


@pytest.mark.parametrize("early_stop", [True, False])
def test_grid_same_image_fewer_queries(early_stop):
    field, density = solid_sphere()
    origins, dirs = front_camera()
    grid = grid_from_density(density, 1.0, 32, 0.01)
    plain, p_stats = render_rays(field, origins, dirs, early_stop=early_stop)
    culled, c_stats = render_rays(field, origins, dirs, grid=grid, early_stop=early_stop)
    assert (plain - culled).abs().max().item() < 1e-3
    assert c_stats["queries"] < 0.2 * p_stats["queries"]


def test_render_image_is_render_rays_reshaped():
    field, density = solid_sphere()
    c2w = torch.eye(4)
    c2w[2, 3] = 3.0
    grid = grid_from_density(density, 1.0, 16, 0.01)
    image, stats = render_image(field, c2w, 8, 12, 10.0, grid=grid)
    origins, dirs = rays_from_camera(c2w, 8, 12, 10.0)
    color, _ = render_rays(field, origins, dirs, grid=grid)
    assert image.shape == (8, 12, 3)
    assert stats["rays"] == 96
    torch.testing.assert_close(image, color.clamp(0, 1).reshape(8, 12, 3))


@pytest.mark.parametrize("bits", [None, 3])
def test_bf16_grid_equals_float32_grid_on_a_shipped_model(bits):
    """The bfloat16 pass only decides cells far from the threshold; float32 decides the rest,
    so the grid is the float32 one — for the shipped model and a coarsely quantized one."""
    from nerfcomp import scenes
    from nerfcomp.compress import CompressionConfig, compress
    from nerfcomp.model import load_checkpoint

    model, _ = load_checkpoint(scenes.get_scene("primitives").checkpoint)
    if bits is not None:
        model = compress(model, CompressionConfig(bits=bits))
    exact = grid_from_density(model.density, 1.0, 32, 0.5, bf16=False)
    fast = grid_from_density(model.density, 1.0, 32, 0.5, bf16=True)
    assert exact.occupied.sum() > 100
    assert torch.equal(fast.occupied, exact.occupied)
