"""Magnitude pruning: zero the fraction of a tensor's entries with the smallest |value|."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["magnitude_mask", "n_pruned", "prune_"]


def n_pruned(numel: int, fraction: float) -> int:
    """How many entries must be zero so that sparsity ≥ `fraction`: ⌈fraction·numel⌉."""
    return min(numel, math.ceil(fraction * numel - 1e-9))


def magnitude_mask(t: Tensor, fraction: float) -> Tensor:
    """Keep-mask (True = kept) of the same shape as `t`, with at least ⌈fraction·numel⌉ False.

    The threshold is the k-th smallest |value|; every entry at or below it is pruned, so ties
    can prune a few more than k (sparsity ≥ fraction, never less).
    """
    k = n_pruned(t.numel(), fraction)
    if k == 0:
        return torch.ones_like(t, dtype=torch.bool)
    mag = t.detach().abs()
    threshold = mag.reshape(-1).kthvalue(k).values
    return mag > threshold


@torch.no_grad()
def prune_(module: nn.Module, fraction: float) -> nn.Module:
    """Zero, in place, the smallest-|w| `fraction` of every nn.Linear weight in `module`."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            m.weight.mul_(magnitude_mask(m.weight, fraction))
    return module
