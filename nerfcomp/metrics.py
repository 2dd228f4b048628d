"""Image quality: PSNR and SSIM (Wang et al. 2004), images (H, W, 3) in [0, 1]."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mse_to_psnr", "psnr", "ssim"]


def mse_to_psnr(mse: float) -> float:
    """PSNR in dB of a mean squared error on [0, 1] images; inf for a perfect match."""
    return math.inf if mse <= 0 else -10.0 * math.log10(mse)


def psnr(a: Tensor, b: Tensor) -> float:
    return mse_to_psnr(F.mse_loss(a.double(), b.double()).item())


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]  # (size, size)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM with an 11×11 Gaussian window (σ = 1.5), per channel, valid region only —
    the convention of skimage's ``structural_similarity(gaussian_weights=True,
    use_sample_covariance=False, data_range=1)``."""
    c1, c2 = 0.01**2, 0.03**2
    x = a.double().permute(2, 0, 1)[:, None]  # (3, 1, H, W)
    y = b.double().permute(2, 0, 1)[:, None]
    w = _gaussian_window(window, sigma).to(x.device)[None, None]
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean().item()
