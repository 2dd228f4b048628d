"""Rendering a NeRF-like module and scoring it against a scene's ground truth.

The module is anything with ``density(x) -> σ`` and ``forward(x, d) -> (rgb, σ)``: the
NeRF, or its compressed copy. Its occupancy grid is always built from its own density.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from nerfcomp import metrics, scenes
from nerfcomp.render import OccupancyGrid, RenderSettings, grid_from_density, render_image

__all__ = ["Rendered", "evaluate_model", "grid_for", "module_device", "render_view"]

GRID_RESOLUTION = 64
GRID_THRESHOLD = 0.5


def module_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (compressed layers hold buffers)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def grid_for(model: nn.Module, resolution: int = GRID_RESOLUTION) -> OccupancyGrid:
    """The occupancy grid of ``model`` from its own density, on the model's device."""
    device = module_device(model)
    aabb = float(getattr(getattr(model, "config", None), "aabb", 1.0))
    return grid_from_density(model.density, aabb, resolution, GRID_THRESHOLD, device=device)


@dataclass
class Rendered:
    image: torch.Tensor  # (H, W, 3) in [0, 1], on the CPU
    ms: float
    queries: int


@torch.no_grad()
def render_view(
    model: nn.Module,
    camera: scenes.Camera,
    grid: OccupancyGrid | None = None,
    settings: RenderSettings = RenderSettings(),
) -> Rendered:
    """Render ``model`` from ``camera`` (building its grid if not given)."""
    device = module_device(model)
    grid = grid if grid is not None else grid_for(model)
    t0 = time.perf_counter()
    img, stats = render_image(
        model, camera.c2w.to(device), camera.height, camera.width, camera.focal, settings, grid
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return Rendered(img.cpu(), (time.perf_counter() - t0) * 1e3, stats["queries"])


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    scene: str,
    size: int = 100,
    settings: RenderSettings = RenderSettings(),
    grid: OccupancyGrid | None = None,
) -> dict:
    """PSNR and SSIM over every held-out test view of ``scene`` (means over views; PSNR
    from the mean squared error over all pixels of all views)."""
    test = scenes.views(scene, "test", size)
    grid = grid if grid is not None else grid_for(model)
    mses, ssims, ms = [], [], []
    for cam, gt in zip(test.cameras, test.images, strict=True):
        r = render_view(model, cam, grid, settings)
        mses.append(torch.mean((r.image.double() - gt.double()) ** 2).item())
        ssims.append(metrics.ssim(r.image, gt))
        ms.append(r.ms)
    return {
        "psnr": round(metrics.mse_to_psnr(sum(mses) / len(mses)), 3),
        "ssim": round(sum(ssims) / len(ssims), 4),
        "psnr_views": [round(metrics.mse_to_psnr(m), 2) for m in mses],
        "render_ms": round(sorted(ms)[len(ms) // 2], 1),
        "test_views": len(mses),
    }
