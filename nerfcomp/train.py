"""Training a NeRF on a procedural scene: a function with a config, resumable.

Rays are drawn at random from all training views; samples are marched at a fixed step,
empty space is skipped with an occupancy grid kept from the network's own density
(instant-ngp style: refreshed every few steps, decaying), and samples behind opaque
surfaces are culled without gradients before the training pass (nerfacc style).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nerfcomp import scenes
from nerfcomp.evaluate import evaluate_model
from nerfcomp.fileio import atomic_write, atomic_write_bytes
from nerfcomp.model import NeRF, NeRFConfig, save_checkpoint
from nerfcomp.render import (
    OccupancyGrid,
    RenderSettings,
    cell_centres,
    composite_packed,
    march_samples,
    visible_samples,
)

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "exp_decay", "photometric_loss", "set_lr", "train", "train_step"]


@dataclass(frozen=True)
class TrainConfig:
    scene: str
    steps: int = 5000
    batch_rays: int = 1024
    lr: float = 2e-3
    lr_final: float = 5e-5
    image_size: int = 100
    n_train: int = 100
    seed: int = 0
    grid_resolution: int = 64
    grid_every: int = 48  # steps between occupancy-grid refreshes
    grid_decay: float = 0.8
    grid_threshold: float = 0.5  # density σ under which a cell is empty
    save_every: int = 500  # steps between resumable training states
    model: NeRFConfig = field(default_factory=NeRFConfig)
    render: RenderSettings = field(default_factory=RenderSettings)

    def __post_init__(self) -> None:
        scenes.get_scene(self.scene)
        for name in ("steps", "batch_rays", "image_size", "n_train", "grid_resolution"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if not (0 < self.lr_final <= self.lr):
            raise ValueError("TrainConfig needs 0 < lr_final <= lr")

    def lr_at(self, step: int) -> float:
        """Exponential decay from lr to lr_final over the run."""
        return exp_decay(self.lr, self.lr_final, step, self.steps)


def exp_decay(lr: float, lr_final: float, step: int, steps: int) -> float:
    """lr at step 0, decayed exponentially to lr_final at ``steps`` and held there."""
    return lr * (lr_final / lr) ** min(step / max(steps, 1), 1.0)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group of ``opt`` at learning rate ``lr``."""
    for group in opt.param_groups:
        group["lr"] = lr


class DensityGrid:
    """An occupancy grid kept as a decaying max of the network's density (instant-ngp §4)."""

    def __init__(self, cfg: TrainConfig, hull: torch.Tensor, device: torch.device) -> None:
        """hull: (R, R, R) bool from space carving; cells outside it start empty."""
        self.cfg = cfg
        self.density = (hull.reshape(-1).float() * 10.0).to(device)
        self.centres = cell_centres(cfg.grid_resolution, cfg.model.aabb, device)

    @torch.no_grad()
    def refresh(self, sigma_fn: Callable, generator: torch.Generator) -> None:
        cell = 2 * self.cfg.model.aabb / self.cfg.grid_resolution
        jitter = torch.rand(self.centres.shape, generator=generator).to(self.centres.device)
        pts = self.centres + (jitter - 0.5) * cell
        new = torch.cat([sigma_fn(p) for p in pts.split(1 << 16)])
        self.density = torch.maximum(self.density * self.cfg.grid_decay, new)

    def grid(self) -> OccupancyGrid:
        res = self.cfg.grid_resolution
        occ = (self.density > self.cfg.grid_threshold).reshape(1, 1, res, res, res).float()
        occ = F.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0
        return OccupancyGrid(occ, self.cfg.model.aabb)


def photometric_loss(
    model: torch.nn.Module,
    rays: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_rays: int,
    grid: OccupancyGrid,
    settings: RenderSettings,
    g: torch.Generator,
) -> torch.Tensor:
    """MSE of ``n_rays`` random rays rendered by ``model`` against their pixels.

    rays: origins (N, 3), dirs (N, 3), rgb (N, 3). ``model`` has ``density(x)`` and
    ``forward(x, d) -> (rgb, σ)``; samples behind opaque surfaces are culled first.
    """
    origins, dirs, rgb = rays
    pick = torch.randint(0, origins.shape[0], (n_rays,), generator=g).to(origins.device)
    o, d, target = origins[pick], dirs[pick], rgb[pick]
    ray_idx, _, t = march_samples(o, d, settings, grid, stratified=True, generator=g)
    with torch.no_grad():
        vis = visible_samples(model.density, o, d, ray_idx, t, settings)
    ray_idx, t = ray_idx[vis], t[vis]
    color, sigma = model(o[ray_idx] + t[:, None] * d[ray_idx], d[ray_idx])
    deltas = torch.full_like(t, settings.step_size)
    pred, _, _ = composite_packed(sigma, color, deltas, ray_idx, n_rays, settings.background)
    return F.mse_loss(pred, target)


def train_step(model: NeRF, opt, rays, grid: OccupancyGrid, cfg: TrainConfig, g) -> float:
    """One Adam step on a random batch of rays; returns the batch MSE."""
    loss = photometric_loss(model, rays, cfg.batch_rays, grid, cfg.render, g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def _save_state(path: Path, model: NeRF, opt, grid: DensityGrid, step: int, g) -> None:
    """Everything needed to resume, as safetensors (no pickles)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        st = opt.state.get(p, {})
        if st:
            tensors[f"adam.{i}.exp_avg"] = st["exp_avg"].cpu().contiguous()
            tensors[f"adam.{i}.exp_avg_sq"] = st["exp_avg_sq"].cpu().contiguous()
            tensors[f"adam.{i}.step"] = torch.as_tensor(st["step"]).reshape(1).float().cpu()
    tensors["grid.density"] = grid.density.cpu().contiguous()
    tensors["rng"] = g.get_state()
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"step": str(step)}))


def _load_state(path: Path, model: NeRF, opt, grid: DensityGrid, g) -> int:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            step = int((f.metadata() or {})["step"])
        t = load_file(str(path))
        model.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: cannot resume from this training state ({e})") from None
    dev = next(model.parameters()).device
    for i, p in enumerate(model.parameters()):
        if f"adam.{i}.exp_avg" in t:
            opt.state[p] = {
                "exp_avg": t[f"adam.{i}.exp_avg"].to(dev),
                "exp_avg_sq": t[f"adam.{i}.exp_avg_sq"].to(dev),
                "step": t[f"adam.{i}.step"].reshape(()),
            }
    grid.density = t["grid.density"].to(dev)
    g.set_state(t["rng"])
    return step


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    device: str | torch.device = "cpu",
    state_path: str | os.PathLike | None = None,
    progress: Callable[[int, int, dict], None] | None = None,
    evaluate: bool = True,
) -> dict:
    """Train a NeRF on ``cfg.scene``, write the checkpoint to ``out`` and return metrics.

    With ``state_path`` the run saves a resumable state every ``cfg.save_every`` steps and
    resumes from it if it exists. ``progress(step, steps, {"loss", "psnr"})`` is called
    every ``grid_every`` steps.
    """
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = NeRF(cfg.model).to(device)
    with torch.no_grad():  # start nearly transparent, so carved space stays empty
        model.sigma.bias.fill_(-2.0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-15)
    train_views = scenes.views(cfg.scene, "train", cfg.image_size, cfg.n_train, cfg.seed)
    dgrid = DensityGrid(cfg, train_views.visual_hull(cfg.grid_resolution, cfg.model.aabb), device)
    start = 0
    state_path = Path(state_path) if state_path else None
    if state_path and state_path.exists():
        start = _load_state(state_path, model, opt, dgrid, g)
        log.info("resumed %s at step %d", cfg.scene, start)
    rays = tuple(x.to(device) for x in train_views.rays())
    t0, losses = time.perf_counter(), []
    grid = dgrid.grid()
    for step in range(start, cfg.steps):
        if step % cfg.grid_every == 0:
            dgrid.refresh(model.density, g)
            grid = dgrid.grid()
        set_lr(opt, cfg.lr_at(step))
        losses.append(train_step(model, opt, rays, grid, cfg, g))
        if progress and (step + 1) % cfg.grid_every == 0:
            mse = sum(losses[-cfg.grid_every :]) / len(losses[-cfg.grid_every :])
            progress(step + 1, cfg.steps, {"loss": mse, "psnr": -10 * math.log10(mse)})
        if state_path and (step + 1) % cfg.save_every == 0:
            _save_state(state_path, model, opt, dgrid, step + 1, g)
    elapsed = time.perf_counter() - t0
    metrics = {
        "scene": cfg.scene,
        "steps": cfg.steps,
        "train_seconds": round(elapsed, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("model", "render")},
        "model": asdict(cfg.model),
    }
    model.eval()
    if evaluate:
        metrics.update(evaluate_model(model, cfg.scene, size=cfg.image_size, settings=cfg.render))
    save_checkpoint(model, out, extra={"scene": cfg.scene, "steps": cfg.steps})
    atomic_write_bytes(Path(out).with_suffix(".json"), json.dumps(metrics, indent=2).encode())
    return metrics
