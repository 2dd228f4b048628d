"""Procedural scenes: analytic SDFs with materials, their ground-truth renderer and cameras.

No NeRF data set can be downloaded offline, so nerfcomp makes its own ground truth.
Each scene is a signed distance function with a material per point, rendered by sphere
tracing with Blinn–Phong shading on a white background (the Blender synthetic convention).
Images are anti-aliased like Blender's renders: each pixel averages a 3×3 grid of rays
(a box filter), so the ground truth holds no aliasing that differs from view to view.
Everything is deterministic: the same seed gives bit-identical images.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nerfcomp.fileio import atomic_write
from nerfcomp.render import ray_aabb_intersect, rays_from_camera

__all__ = [
    "SCENES",
    "Camera",
    "Scene",
    "Views",
    "get_scene",
    "look_at",
    "orbit_cameras",
    "render_ground_truth",
    "test_cameras",
    "train_cameras",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CAMERA_RADIUS = 3.6
LOOK_AT = (0.0, -0.2, 0.0)  # the scenes sit low in the cube
CAMERA_ANGLE_X = 0.6911112070083618  # the Blender synthetic scenes' horizontal field of view
SUPERSAMPLE = 3  # rays per pixel along each axis of the ground truth (box filter)
LIGHT = torch.tensor([0.45, 0.8, 0.4])  # towards the key light (normalised below)


# --- SDF primitives: p (n, 3) → distance (n,) ------------------------------------------


def sd_sphere(p: Tensor, c: tuple, r: float) -> Tensor:
    return (p - torch.tensor(c)).norm(dim=-1) - r


def sd_box(p: Tensor, c: tuple, half: tuple, round_: float = 0.0) -> Tensor:
    q = (p - torch.tensor(c)).abs() - torch.tensor(half) + round_
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0) - round_


def sd_cylinder_y(p: Tensor, c: tuple, r: float, half_h: float) -> Tensor:
    """Vertical capped cylinder."""
    q = p - torch.tensor(c)
    d = torch.stack([q[:, [0, 2]].norm(dim=-1) - r, q[:, 1].abs() - half_h], dim=-1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0)


def sd_torus_y(p: Tensor, c: tuple, big_r: float, small_r: float) -> Tensor:
    q = p - torch.tensor(c)
    return torch.stack([q[:, [0, 2]].norm(dim=-1) - big_r, q[:, 1]], dim=-1).norm(dim=-1) - small_r


def union(parts: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    """Min over (distance, material id) pairs → distance (n,), material (n,) long."""
    d = torch.stack([p[0] for p in parts], dim=-1)
    dist, arg = d.min(dim=-1)
    mats = torch.tensor([p[1] for p in parts])
    return dist, mats[arg]


# --- scenes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Material:
    albedo: tuple[float, float, float]
    specular: float = 0.0  # Blinn–Phong strength: the view-dependent part
    shininess: float = 32.0
    pattern: str = ""  # "", "checker", "stripes"
    pattern_albedo: tuple[float, float, float] = (1.0, 1.0, 1.0)
    pattern_scale: float = 0.0


@dataclass(frozen=True)
class Scene:
    name: str
    description: str
    difficulty: str
    sdf: Callable[[Tensor], tuple[Tensor, Tensor]] = field(repr=False)
    materials: tuple[Material, ...] = field(repr=False)

    @property
    def checkpoint(self) -> Path:
        return ASSETS / f"{self.name}.safetensors"


def _primitives(p: Tensor) -> tuple[Tensor, Tensor]:
    return union(
        [
            (sd_sphere(p, (-0.35, -0.15, 0.3), 0.42), 0),
            (sd_box(p, (0.4, -0.3, -0.25), (0.28, 0.28, 0.28), 0.03), 1),
            (sd_torus_y(p, (0.1, -0.5, 0.1), 0.55, 0.1), 2),
        ]
    )


PRIMITIVE_MATERIALS = (
    Material((0.85, 0.2, 0.15)),
    Material((0.15, 0.35, 0.85)),
    Material((0.2, 0.7, 0.25)),
)


def _blocks(p: Tensor) -> tuple[Tensor, Tensor]:
    """A toy construction model: a base plate with studs, a two-colour brick tower with a
    checkered roof, thin pillars and a striped column."""
    parts = [(sd_box(p, (0.0, -0.62, 0.0), (0.75, 0.06, 0.6), 0.01), 0)]
    for i in range(4):  # studs on the plate: small features
        for j in range(3):
            c = (-0.6 + 0.4 * i, -0.54, -0.42 + 0.42 * j)
            parts.append((sd_cylinder_y(p, c, 0.055, 0.03), 0))
    for k in range(3):  # brick tower, alternating colours
        parts.append((sd_box(p, (-0.3, -0.45 + 0.23 * k, -0.1), (0.3, 0.1, 0.22), 0.01), 1 + k % 2))
    parts.append((sd_box(p, (-0.3, 0.3, -0.1), (0.34, 0.05, 0.26), 0.005), 3))  # checkered roof
    for x, z in [(0.35, 0.38), (0.6, 0.38), (0.35, 0.12), (0.6, 0.12)]:  # thin pillars
        parts.append((sd_cylinder_y(p, (x, -0.28, z), 0.035, 0.28), 4))
    parts.append((sd_box(p, (0.475, 0.03, 0.25), (0.18, 0.03, 0.18), 0.005), 1))  # table top
    parts.append((sd_cylinder_y(p, (0.45, -0.25, -0.32), 0.14, 0.32), 5))  # striped column
    return union(parts)


BLOCK_MATERIALS = (
    Material((0.55, 0.57, 0.6)),
    Material((0.85, 0.15, 0.1)),
    Material((0.95, 0.75, 0.1)),
    Material(
        (0.15, 0.15, 0.2), pattern="checker", pattern_albedo=(0.9, 0.9, 0.85), pattern_scale=4.5
    ),
    Material((0.1, 0.3, 0.8)),
    Material(
        (0.1, 0.55, 0.25), pattern="stripes", pattern_albedo=(0.95, 0.95, 0.9), pattern_scale=4.0
    ),
)


def _glossy(p: Tensor) -> tuple[Tensor, Tensor]:
    return union(
        [
            (sd_box(p, (0.0, -0.7, 0.0), (0.8, 0.08, 0.8), 0.04), 0),
            (sd_sphere(p, (-0.3, -0.2, -0.25), 0.42), 1),
            (sd_sphere(p, (0.42, -0.35, 0.2), 0.27), 2),
            (sd_sphere(p, (-0.15, -0.45, 0.5), 0.17), 3),
            (sd_torus_y(p, (0.35, -0.52, -0.4), 0.2, 0.08), 4),
        ]
    )


GLOSSY_MATERIALS = (
    Material((0.75, 0.72, 0.65), specular=0.1, shininess=8.0),
    Material((0.7, 0.1, 0.12), specular=0.8, shininess=60.0),
    Material((0.15, 0.25, 0.75), specular=0.7, shininess=40.0),
    Material((0.9, 0.75, 0.2), specular=0.9, shininess=90.0),
    Material((0.25, 0.6, 0.3), specular=0.6, shininess=30.0),
)

SCENES: dict[str, Scene] = {
    s.name: s
    for s in [
        Scene(
            "primitives",
            "a sphere, a box and a torus in flat colours",
            "simple",
            _primitives,
            PRIMITIVE_MATERIALS,
        ),
        Scene(
            "blocks",
            "a toy brick model: studs, thin pillars, checkers, stripes",
            "detailed",
            _blocks,
            BLOCK_MATERIALS,
        ),
        Scene(
            "glossy",
            "shiny spheres with moving highlights",
            "view-dependent",
            _glossy,
            GLOSSY_MATERIALS,
        ),
    ]
}


def get_scene(name: str) -> Scene:
    if name not in SCENES:
        raise ValueError(f"unknown scene {name!r}; choose one of {', '.join(SCENES)}")
    return SCENES[name]


# --- cameras -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: c2w (4, 4) in the OpenGL convention, image size and focal length."""

    c2w: Tensor = field(repr=False)
    height: int = 100
    width: int = 100
    azimuth: float = 0.0  # degrees, for labels
    elevation: float = 0.0

    @property
    def focal(self) -> float:
        return 0.5 * self.width / math.tan(0.5 * CAMERA_ANGLE_X)

    def resized(self, height: int, width: int) -> Camera:
        return Camera(self.c2w, height, width, self.azimuth, self.elevation)


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world (4, 4) for a camera at ``eye`` looking at ``target`` (y is up)."""
    target = torch.zeros(3) if target is None else target
    up = torch.tensor([0.0, 1.0, 0.0]) if up is None else up
    z = eye - target
    z = z / z.norm()
    x = torch.linalg.cross(up, z)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    c2w = torch.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def camera_at(
    azimuth: float, elevation: float, size: int = 100, radius: float = CAMERA_RADIUS
) -> Camera:
    """A camera on the sphere of ``radius`` looking at the origin; angles in degrees."""
    az, el = math.radians(azimuth), math.radians(elevation)
    target = torch.tensor(LOOK_AT)
    eye = target + radius * torch.tensor(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)]
    )
    return Camera(look_at(eye, target), size, size, azimuth, elevation)


def train_cameras(n: int = 100, size: int = 100, seed: int = 0) -> list[Camera]:
    """Random views on the upper hemisphere (uniform in area, elevation 5°–85°)."""
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.sin(math.radians(5)), math.sin(math.radians(85))
    u = torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo
    az = torch.rand(n, generator=g, dtype=torch.float64) * 360.0
    return [
        camera_at(a.item(), math.degrees(math.asin(y.item())), size)
        for a, y in zip(az, u, strict=True)
    ]


def test_cameras(size: int = 100) -> list[Camera]:
    """Eight held-out views at fixed poses, none of which is a training pose."""
    elevations = [15.0, 35.0, 55.0, 25.0, 45.0, 20.0, 65.0, 30.0]
    return [camera_at(22.5 + 45.0 * i, e, size) for i, e in enumerate(elevations)]


def orbit_cameras(n: int = 60, size: int = 100, elevation: float = 30.0) -> list[Camera]:
    """A smooth orbit at fixed elevation, for videos."""
    return [camera_at(360.0 * i / n, elevation, size) for i in range(n)]


# --- ground-truth renderer ---------------------------------------------------------------


def sphere_trace(
    scene: Scene, origins: Tensor, dirs: Tensor, iters: int = 192
) -> tuple[Tensor, Tensor]:
    """March each ray by the SDF until it hits (d < 1e-4) or leaves the cube.

    Returns t (n,) and hit (n,) bool."""
    t, t_far = ray_aabb_intersect(origins, dirs, -1.0, 1.0)
    active = t < t_far
    hit = torch.zeros_like(active)
    for _ in range(iters):
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(-1)
        d, _ = scene.sdf(origins[idx] + t[idx, None] * dirs[idx])
        t[idx] += 0.9 * d  # 0.9: the unions of rounded boxes are not exact SDFs
        done = d < 1e-4
        hit[idx[done]] = True
        gone = t[idx] > t_far[idx]
        active[idx[done | gone]] = False
    return t, hit


def _normals(scene: Scene, p: Tensor, eps: float = 1e-4) -> Tensor:
    """Surface normals by the tetrahedron finite-difference technique. p: (n, 3) → (n, 3)."""
    k = torch.tensor([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], dtype=p.dtype)
    n = sum(kk * scene.sdf(p + eps * kk)[0][:, None] for kk in k)
    return n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _albedo(scene: Scene, p: Tensor, mat: Tensor) -> Tensor:
    albedo = torch.zeros(p.shape[0], 3)
    for m_id, m in enumerate(scene.materials):
        sel = mat == m_id
        if not bool(sel.any()):
            continue
        base = torch.tensor(m.albedo).expand(int(sel.sum()), 3).clone()
        q = p[sel] * m.pattern_scale
        if m.pattern == "checker":
            on = (q.floor().sum(dim=-1) % 2) == 0
        elif m.pattern == "stripes":
            on = torch.sin(2 * math.pi * q[:, 1]) > 0
        else:
            on = torch.zeros(base.shape[0], dtype=torch.bool)
        base[on] = torch.tensor(m.pattern_albedo)
        albedo[sel] = base
    return albedo


def shade(scene: Scene, p: Tensor, dirs: Tensor) -> Tensor:
    """Blinn–Phong with a key light and a sky-tinted ambient term. → rgb (n, 3) in [0, 1]."""
    _, mat = scene.sdf(p)
    n = _normals(scene, p)
    light = LIGHT / LIGHT.norm()
    ndl = (n @ light).clamp_min(0)
    h = light - dirs
    h = h / h.norm(dim=-1, keepdim=True)
    ambient = 0.25 + 0.15 * (0.5 * n[:, 1] + 0.5)
    rgb = _albedo(scene, p, mat) * (ambient + 0.75 * ndl)[:, None]
    spec = torch.tensor([m.specular for m in scene.materials])[mat]
    shin = torch.tensor([m.shininess for m in scene.materials])[mat]
    highlight = spec * (n * h).sum(-1).clamp_min(0) ** shin * (ndl > 0)
    return (rgb + highlight[:, None]).clamp(0, 1)


@torch.no_grad()
def render_ground_truth(
    scene: Scene, camera: Camera, supersample: int = SUPERSAMPLE
) -> tuple[Tensor, Tensor]:
    """The anti-aliased image of ``scene`` from ``camera``: rgb (H, W, 3) float32 in [0, 1]
    on a white background, and its alpha mask (H, W) bool, True where any of the pixel's
    ``supersample``² rays hits the scene (so a mask never carves away what is seen)."""
    s = supersample
    fine = camera.resized(camera.height * s, camera.width * s)  # pixel centres line up
    rgb, hit = [], []
    rows = max(1, 65536 // fine.width)  # bound memory: trace a band of rows at a time
    origins, dirs = rays_from_camera(fine.c2w, fine.height, fine.width, fine.focal)
    for lo in range(0, fine.height * fine.width, rows * fine.width):
        o, d = origins[lo : lo + rows * fine.width], dirs[lo : lo + rows * fine.width]
        t, h = sphere_trace(scene, o, d)
        c = torch.ones_like(o)
        if bool(h.any()):
            c[h] = shade(scene, o[h] + t[h, None] * d[h], d[h])
        rgb.append(c)
        hit.append(h)
    rgb = torch.cat(rgb).reshape(1, fine.height, fine.width, 3).permute(0, 3, 1, 2)
    hit = torch.cat(hit).reshape(1, 1, fine.height, fine.width).float()
    rgb = torch.nn.functional.avg_pool2d(rgb, s)[0].permute(1, 2, 0).contiguous()
    return rgb, torch.nn.functional.max_pool2d(hit, s)[0, 0] > 0


@dataclass(frozen=True)
class Views:
    """Images and the cameras that took them."""

    cameras: list[Camera]
    images: Tensor  # (n_views, H, W, 3)
    masks: Tensor  # (n_views, H, W) bool: the alpha channel

    def rays(self) -> tuple[Tensor, Tensor, Tensor]:
        """All rays: origins (N, 3), dirs (N, 3), rgb (N, 3), N = n_views·H·W."""
        os_, ds = zip(
            *(rays_from_camera(c.c2w, c.height, c.width, c.focal) for c in self.cameras),
            strict=True,
        )
        return torch.cat(os_), torch.cat(ds), self.images.reshape(-1, 3)

    def visual_hull(self, resolution: int, aabb: float = 1.0) -> Tensor:
        """Space carving from the alpha masks: (R, R, R) bool, False where a cell's centre
        projects onto background (dilated by one pixel) in some view. Training starts its
        occupancy grid from it; rendering never uses it."""
        from nerfcomp.render import cell_centres

        pts = cell_centres(resolution, aabb)
        keep = torch.ones(pts.shape[0], dtype=torch.bool)
        masks = torch.nn.functional.max_pool2d(self.masks[:, None].float(), 3, 1, 1)[:, 0] > 0
        for cam, mask in zip(self.cameras, masks, strict=True):
            q = (pts - cam.c2w[:3, 3]) @ cam.c2w[:3, :3]  # camera coordinates, looks down -z
            x = (cam.focal * q[:, 0] / -q[:, 2] + cam.width / 2).floor().long()
            y = (-cam.focal * q[:, 1] / -q[:, 2] + cam.height / 2).floor().long()
            inside = (x >= 0) & (x < cam.width) & (y >= 0) & (y < cam.height) & (q[:, 2] < 0)
            bg = torch.zeros_like(keep)
            bg[inside] = ~mask[y[inside], x[inside]]
            keep &= ~bg
        return keep.reshape(resolution, resolution, resolution)


_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("NERFCOMP_CACHE", _ROOT / ".cache"))


def _cache_path(key: tuple) -> Path:
    """Where a set of views is cached: the key and the sources of the scenes and the ray
    generator name it, so editing a scene, a camera rig or a renderer invalidates the cache."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update((Path(__file__).parent / "render.py").read_bytes())
    h.update(repr(key).encode())
    return CACHE_DIR / "views" / f"{key[0]}-{key[1]}-{h.hexdigest()[:16]}.npz"


def _load_cached(path: Path, n: int, size: int) -> tuple[Tensor, Tensor] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            rgb, alpha = torch.from_numpy(z["rgb"]), torch.from_numpy(z["alpha"])
    except (OSError, ValueError, KeyError):
        return None  # absent or unreadable: render again
    if rgb.shape != (n, size, size, 3) or alpha.shape != (n, size, size):
        return None
    return rgb, alpha


@lru_cache(maxsize=8)
def views(scene_name: str, split: str, size: int = 100, n_train: int = 100, seed: int = 0) -> Views:
    """Ground-truth views of a scene: split "train", "test" or "orbit". Cached in memory and
    on disk (``.cache/views``, or ``$NERFCOMP_CACHE``), since anti-aliasing makes them slow."""
    scene = get_scene(scene_name)
    if split == "train":
        cams = train_cameras(n_train, size, seed)
    elif split == "test":
        cams = test_cameras(size)
    elif split == "orbit":
        cams = orbit_cameras(size=size)
    else:
        raise ValueError(f"unknown split {split!r}; choose train, test or orbit")
    path = _cache_path((scene_name, split, size, n_train, seed, SUPERSAMPLE))
    cached = _load_cached(path, len(cams), size)
    if cached is not None:
        return Views(cams, *cached)
    rgb, alpha = zip(*(render_ground_truth(scene, c) for c in cams), strict=True)
    out = Views(cams, torch.stack(rgb), torch.stack(alpha))

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, rgb=out.images.numpy(), alpha=out.masks.numpy())

    try:
        atomic_write(path, write)
    except OSError:
        pass  # a read-only checkout still works, only slower
    return out
