"""Volume rendering as pure functions (NeRF §4, nerfacc's packed-sample style).

Nothing here knows the network: callers pass ``sigma_fn(points) -> sigma`` and
``rgb_sigma_fn(points, dirs) -> (rgb, sigma)``. Samples are *packed*: a flat list of
(ray index, step index) pairs, sorted by ray then step, so empty space costs nothing.

The scene lives in the cube ``[-aabb, aabb]^3``. Rays are marched with a fixed step
``step_size``; an occupancy grid built from the network's own density skips empty
cells, and rays stop once their transmittance falls below ``t_min``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SigmaFn = Callable[[Tensor], Tensor]
RgbSigmaFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

__all__ = [
    "OccupancyGrid",
    "RenderSettings",
    "composite_packed",
    "grid_from_density",
    "rays_from_camera",
    "ray_aabb_intersect",
    "render_image",
    "render_rays",
]


@dataclass(frozen=True)
class RenderSettings:
    """How rays are marched. ``step_size`` is in scene units (cube side = 2·aabb)."""

    aabb: float = 1.0
    step_size: float = 2 * math.sqrt(3) / 128  # 128 steps across the cube's diagonal
    t_min: float = 1e-4  # early ray termination: stop when transmittance < t_min
    background: float = 1.0  # white, the Blender synthetic convention
    chunk: int = 1 << 13  # network queries per batch: bounds memory, and stays in cache

    @property
    def max_steps(self) -> int:
        return math.ceil(2 * math.sqrt(3) * self.aabb / self.step_size)


def rays_from_camera(c2w: Tensor, height: int, width: int, focal: float) -> tuple[Tensor, Tensor]:
    """Pinhole rays through pixel centres, OpenGL convention (camera looks down -z).

    c2w: (4, 4) camera-to-world. Returns origins (H*W, 3) and unit directions (H*W, 3).
    """
    device = c2w.device
    j, i = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32) + 0.5,
        torch.arange(width, device=device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    dirs_cam = torch.stack(
        [(i - width / 2) / focal, -(j - height / 2) / focal, -torch.ones_like(i)], dim=-1
    ).reshape(-1, 3)  # (H*W, 3)
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:3, 3].expand_as(dirs)
    return origins.contiguous(), dirs.contiguous()


def ray_aabb_intersect(
    origins: Tensor, dirs: Tensor, lo: Tensor | float, hi: Tensor | float
) -> tuple[Tensor, Tensor]:
    """Entry and exit distances of rays with the box [lo, hi] (slab method).

    lo, hi: floats or (3,) corners. Returns t_near, t_far: (n_rays,); a ray that misses
    has t_far <= t_near.
    """
    inv = 1.0 / torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (lo - origins) * inv
    t1 = (hi - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


@dataclass
class OccupancyGrid:
    """A binary grid over [-aabb, aabb]^3: False cells are known empty and skipped."""

    occupied: Tensor  # (R, R, R) bool
    aabb: float

    @property
    def resolution(self) -> int:
        return self.occupied.shape[0]

    def query(self, points: Tensor) -> Tensor:
        """points: (n, 3) → (n,) bool, True where the containing cell is occupied."""
        res = self.resolution
        idx = ((points + self.aabb) / (2 * self.aabb) * res).floor().long().clamp_(0, res - 1)
        flat = (idx[:, 0] * res + idx[:, 1]) * res + idx[:, 2]
        return self.occupied.reshape(-1)[flat]

    def fraction(self) -> float:
        return self.occupied.float().mean().item()

    def bounds(self) -> tuple[Tensor, Tensor]:
        """Corners (lo, hi) of the box around every occupied cell; empty grid → empty box."""
        idx = self.occupied.nonzero()
        cell = 2 * self.aabb / self.resolution
        if idx.numel() == 0:
            zero = torch.zeros(3, device=self.occupied.device)
            return zero, zero
        return idx.amin(0) * cell - self.aabb, (idx.amax(0) + 1) * cell - self.aabb


def cell_centres(resolution: int, aabb: float, device: torch.device | str = "cpu") -> Tensor:
    """(R^3, 3) centres of the grid cells, in the order of ``occupied.reshape(-1)``."""
    c = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution
    c = c * 2 * aabb - aabb
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1).reshape(-1, 3)


def _bf16_ok(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively here (CUDA, or a CPU with AVX-512 BF16 / AMX)."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@torch.no_grad()
def _density_at(sigma_fn: SigmaFn, pts: Tensor, chunk: int, bf16: bool = False) -> Tensor:
    out = torch.empty(pts.shape[0], device=pts.device)
    with torch.autocast(pts.device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, pts.shape[0], chunk):
            out[i : i + chunk] = sigma_fn(pts[i : i + chunk]).float()
    return out


@torch.no_grad()
def grid_from_density(
    sigma_fn: SigmaFn,
    aabb: float = 1.0,
    resolution: int = 64,
    threshold: float = 0.5,
    subsamples: int = 1,
    chunk: int = 1 << 13,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    bf16: bool | None = None,
) -> OccupancyGrid:
    """Occupancy grid from the network's own density.

    A cell is occupied when the density at its centre (and at ``subsamples - 1`` jittered
    points inside it) exceeds ``threshold``, or when a neighbouring cell is. The one-cell
    dilation keeps the surface of anything at least one cell wide; a structure thinner than
    a cell that slips between the sample points can be culled (use a finer grid or more
    subsamples for such scenes). Never derive one network's grid from another network:
    that would hide the artifacts of the one being rendered.

    ``bf16`` (default: where it runs natively) halves the cost: every point is evaluated in
    bfloat16, and the few whose density comes out within a factor 2 of the threshold (under
    1% on the shipped models) again in float32, which decides them. The grid equals the
    float32 one unless bfloat16 misjudges a density by more than 2× (tests/test_render.py).
    """
    res = resolution
    device = torch.device(device)
    bf16 = _bf16_ok(device) if bf16 is None else bf16
    centres = cell_centres(res, aabb, device)
    cell = 2 * aabb / res
    dens = torch.zeros(res**3, device=device)
    for s in range(subsamples):
        pts = centres
        if s > 0:
            jitter = torch.rand(centres.shape, generator=generator, device="cpu").to(device)
            pts = centres + (jitter - 0.5) * cell
        d = _density_at(sigma_fn, pts, chunk, bf16)
        if bf16:
            unsure = ((d > 0.5 * threshold) & (d < 2 * threshold)).nonzero().squeeze(1)
            d[unsure] = _density_at(sigma_fn, pts[unsure], chunk)
        torch.maximum(dens, d, out=dens)
    occ = (dens > threshold).reshape(1, 1, res, res, res).float()
    occ = torch.nn.functional.max_pool3d(occ, kernel_size=3, stride=1, padding=1)
    return OccupancyGrid(occ[0, 0] > 0, aabb)


def optical_depth_packed(tau: Tensor, ray_idx: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Exclusive per-ray cumulative sum of packed optical thicknesses.

    tau: (n,) ≥ 0, ray_idx: (n,) sorted. Returns Σ_{j<i, same ray} τ_j (n,) and the
    per-ray totals (n_rays,). One global cumsum, restarted at each ray's first sample; it
    runs in float64 so that a ray's sum does not lose precision to the rays before it.
    """
    tau64 = tau.double()
    csum = torch.cumsum(tau64, dim=0)
    ray_tau = torch.zeros(n_rays, device=tau.device, dtype=torch.float64).index_add_(
        0, ray_idx, tau64
    )
    starts = torch.cumsum(ray_tau, dim=0) - ray_tau  # csum before each ray's first sample
    excl = (csum - tau64 - starts[ray_idx]).clamp_min(0)
    return excl.to(tau.dtype), ray_tau.to(tau.dtype)


def composite_packed(
    sigma: Tensor,
    rgb: Tensor,
    deltas: Tensor,
    ray_idx: Tensor,
    n_rays: int,
    background: float = 1.0,
    depth_in: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Alpha compositing of packed samples (NeRF eq. 3).

    sigma: (n,) ≥ 0, rgb: (n, 3), deltas: (n,) segment lengths, ray_idx: (n,) sorted.
    depth_in: optional (n_rays,) optical depth already accumulated in front of these samples.
    Returns colour (n_rays, 3) over ``background``, opacity (n_rays,), and the optical depth
    (n_rays,) accumulated so far (for marching a ray in several rounds).
    """
    tau = sigma * deltas  # (n,) optical thickness of each segment
    excl, ray_tau = optical_depth_packed(tau, ray_idx, n_rays)
    if depth_in is not None:
        excl = excl + depth_in[ray_idx]
    trans = torch.exp(-excl)  # T_i = exp(-Σ_{j<i} σ_j δ_j)
    weights = trans * (1.0 - torch.exp(-tau))  # w_i = T_i (1 − exp(−σ_i δ_i))
    color = torch.zeros(n_rays, 3, device=sigma.device, dtype=rgb.dtype)
    color.index_add_(0, ray_idx, weights[:, None] * rgb)
    opacity = torch.zeros(n_rays, device=sigma.device, dtype=weights.dtype).index_add_(
        0, ray_idx, weights
    )
    depth = ray_tau if depth_in is None else depth_in + ray_tau
    return color + background * (1.0 - opacity[:, None]), opacity, depth


def march_samples(
    origins: Tensor,
    dirs: Tensor,
    settings: RenderSettings,
    grid: OccupancyGrid | None = None,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-step samples inside the cube, minus those in empty grid cells.

    With a grid, marching starts at the box around its occupied cells (not the cube), so
    the samples are shifted by a fraction of a step against those without a grid.

    Returns packed ray_idx (n,), step_idx (n,) and t (n,) at each sample's midpoint,
    sorted by ray then step. Segment length is ``settings.step_size`` for every sample.
    """
    n_rays = origins.shape[0]
    lo, hi = grid.bounds() if grid is not None else (-settings.aabb, settings.aabb)
    t_near, t_far = ray_aabb_intersect(origins, dirs, lo, hi)
    n_steps = ((t_far - t_near) / settings.step_size).ceil().clamp_min(0).long()  # (n_rays,)
    max_steps = int(n_steps.max().item()) if n_rays else 0
    steps = torch.arange(max_steps, device=origins.device)
    valid = steps[None, :] < n_steps[:, None]  # (n_rays, max_steps)
    ray_idx, step_idx = valid.nonzero(as_tuple=True)
    offset = 0.5
    if stratified:
        offset = torch.rand(ray_idx.shape, generator=generator, device="cpu").to(origins.device)
    t = t_near[ray_idx] + (step_idx + offset) * settings.step_size
    if grid is not None and ray_idx.numel():
        keep = grid.query(origins[ray_idx] + t[:, None] * dirs[ray_idx])
        ray_idx, step_idx, t = ray_idx[keep], step_idx[keep], t[keep]
    return ray_idx, step_idx, t


def sample_ranks(ray_idx: Tensor, n_rays: int) -> Tensor:
    """Position of each packed sample along its ray: 0, 1, 2, ... (ray_idx sorted)."""
    counts = torch.bincount(ray_idx, minlength=n_rays)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(ray_idx.numel(), device=ray_idx.device) - first[ray_idx]


def _eval_chunked(fn: RgbSigmaFn, pts: Tensor, dirs: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    if pts.shape[0] <= chunk:
        return fn(pts, dirs)
    outs = [fn(pts[i : i + chunk], dirs[i : i + chunk]) for i in range(0, pts.shape[0], chunk)]
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def render_rays(
    rgb_sigma_fn: RgbSigmaFn,
    origins: Tensor,
    dirs: Tensor,
    settings: RenderSettings = RenderSettings(),
    grid: OccupancyGrid | None = None,
    early_stop: bool = True,
    rounds: tuple[int, ...] = (4, 8, 16, 32, 64),
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict]:
    """Render rays, marching each in rounds so opaque rays stop early.

    Round k evaluates the next ``rounds[k]`` occupied samples of every ray still
    transparent (T ≥ t_min); the last round takes all that remain. Without
    ``early_stop`` every occupied sample is evaluated in one round.
    Returns colour (n_rays, 3) and stats {"queries": network evaluations}.
    """
    n_rays = origins.shape[0]
    ray_idx, _, t = march_samples(origins, dirs, settings, grid, stratified, generator)
    rank = sample_ranks(ray_idx, n_rays)
    color = torch.zeros(n_rays, 3, device=origins.device)
    opacity = torch.zeros(n_rays, device=origins.device)
    depth = torch.zeros(n_rays, device=origins.device)
    alive = torch.ones(n_rays, dtype=torch.bool, device=origins.device)
    bounds = [0, *torch.tensor(rounds).cumsum(0).tolist()] if early_stop else [0]
    queries = 0
    for k, lo in enumerate(bounds):
        hi = bounds[k + 1] if k + 1 < len(bounds) else None
        sel = rank >= lo if hi is None else (rank >= lo) & (rank < hi)
        sel &= alive[ray_idx]
        if not bool(sel.any()):
            break
        r, ts = ray_idx[sel], t[sel]
        d = dirs[r]
        rgb, sigma = _eval_chunked(rgb_sigma_fn, origins[r] + ts[:, None] * d, d, settings.chunk)
        queries += r.numel()
        deltas = torch.full_like(ts, settings.step_size)
        c, o, depth = composite_packed(
            sigma, rgb, deltas, r, n_rays, background=0.0, depth_in=depth
        )
        color += c
        opacity += o
        alive &= torch.exp(-depth) >= settings.t_min
        if hi is None:
            break
    color = color + settings.background * (1.0 - opacity[:, None])
    return color, {"queries": queries, "rays": n_rays}


@torch.no_grad()
def visible_samples(
    sigma_fn: SigmaFn,
    origins: Tensor,
    dirs: Tensor,
    ray_idx: Tensor,
    t: Tensor,
    settings: RenderSettings,
    rounds: tuple[int, ...] = (8, 16, 32, 64),
) -> Tensor:
    """Which packed samples lie in front of the point where their ray turns opaque.

    Densities are evaluated round by round (no gradients), so samples behind an opaque
    surface are never queried; training then back-propagates through the visible ones
    only. Returns a bool mask (n,).
    """
    n_rays = origins.shape[0]
    rank = sample_ranks(ray_idx, n_rays)
    keep = torch.zeros_like(ray_idx, dtype=torch.bool)
    depth = torch.zeros(n_rays, device=t.device)
    max_depth = -math.log(settings.t_min)
    lo = 0
    for size in (*rounds, None):
        sel = (rank >= lo) & (depth[ray_idx] < max_depth)
        if size is not None:
            sel &= rank < lo + size
        if not bool(sel.any()):
            break
        r = ray_idx[sel]
        sigma = sigma_fn(origins[r] + t[sel, None] * dirs[r])
        excl, ray_tau = optical_depth_packed(sigma * settings.step_size, r, n_rays)
        keep[sel.nonzero().squeeze(-1)] = depth[r] + excl < max_depth
        depth = depth + ray_tau
        if size is None:
            break
        lo += size
    return keep


@torch.no_grad()
def render_image(
    rgb_sigma_fn: RgbSigmaFn,
    c2w: Tensor,
    height: int,
    width: int,
    focal: float,
    settings: RenderSettings = RenderSettings(),
    grid: OccupancyGrid | None = None,
    early_stop: bool = True,
) -> tuple[Tensor, dict]:
    """Render one view: returns image (H, W, 3) in [0, 1] and stats."""
    origins, dirs = rays_from_camera(c2w, height, width, focal)
    color, stats = render_rays(rgb_sigma_fn, origins, dirs, settings, grid, early_stop)
    return color.clamp(0, 1).reshape(height, width, 3), stats
