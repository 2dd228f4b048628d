"""Low rank by truncated SVD: W (m×n) ≈ A (m×r) · B (r×n) (Eckart–Young).

The singular values are split evenly, A = U_r·√S_r and B = √S_r·Vh_r, so both factors have
the same scale and quantize alike. The factorized forward pass lives in ``layers.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["factors_are_smaller", "factors_from_svd", "svd_from_weight"]


def svd_from_weight(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD computed in float64, returned in float32.

    weight: (m, n) → U (m, q), S (q,) descending, Vh (q, n), q = min(m, n).
    """
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    return u.float(), s.float(), vh.float()


def factors_from_svd(u: Tensor, s: Tensor, vh: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-`rank` factors: A (m, r) = U[:, :r]·√S[:r], B (r, n) = √S[:r]·Vh[:r]."""
    r = max(1, min(int(rank), s.numel()))
    root = s[:r].clamp_min(0).sqrt()  # (r,)
    return (u[:, :r] * root).contiguous(), (root[:, None] * vh[:r]).contiguous()


def factors_are_smaller(m: int, n: int, rank: int) -> bool:
    """True when A and B hold fewer numbers than W: r·(m + n) < m·n."""
    return rank * (m + n) < m * n
