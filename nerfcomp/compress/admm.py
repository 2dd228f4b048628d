"""ADMM refinement: the learning–compression (LC) algorithm (Carreira-Perpiñán 2017).

    min_{W,Θ} L(W)  s.t.  W = Δ(Θ)

with the augmented Lagrangian, alternating

    L-step:  W ← argmin_W L(W) + μ/2 ‖W − Δ(Θ) − λ/μ‖²     (SGD on the photometric loss)
    C-step:  Θ ← Π(W − λ/μ)                                 (truncated SVD, pruning, k-means)
    multiplier step:  λ ← λ − μ (W − Δ(Θ))

while μ grows geometrically, so W is pulled onto the compressed set. A final short
fine-tune then trains what the file stores — codebook values (indices fixed), factors kept
in fp16/fp32, and biases — with the straight-through structure of the compressed layers.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nerfcomp import scenes
from nerfcomp.compress.config import CompressionConfig
from nerfcomp.compress.layers import (
    CompressedLinear,
    StoredTensor,
    compress,
    linear_names,
    round_to_fp16,
)
from nerfcomp.evaluate import grid_for, module_device
from nerfcomp.render import RenderSettings
from nerfcomp.train import exp_decay, photometric_loss, set_lr

log = logging.getLogger(__name__)

__all__ = ["c_step", "finetune_stored", "l_step", "multiplier_step", "refine", "schedule"]

Progress = Callable[[float, str], None]

# Adam's learning rate, decayed exponentially over the L-steps and the fine-tune: large early,
# while mu is small and the weights may still move far (and an under-trained model keeps
# training), small at the end, where the stored values settle. Against a constant 1e-4 (same
# settings, all held-out views; README), from 1,500 steps on it won all 12 times measured:
# primitives +0.27 to +0.81 dB, glossy +0.77 to +1.39, blocks +0.73 to +2.26 (1,500 to 6,000
# steps). At 1,000 steps it was a toss-up: -0.63 to +0.26 dB over seven settings, mean -0.10.
# Short runs do better at the old constant 1e-4: a fresh Adam's first steps at 2e-3 wreck a
# trained NeRF (-18 dB after 3 steps) and 300 steps do not win it back (primitives, 6 bits,
# 300 steps: 36.68 dB at 1e-4, 35.10 with the decay, 35.85 with a 10% warm-up). So the decay
# is used from LONG_RUN steps on.
LR, LR_FINAL = 2e-3, 5e-5
SHORT_LR, LONG_RUN = 1e-4, 1500


def schedule(steps: int) -> tuple[float, float]:
    """(first, last) learning rate ``refine`` uses by default for a run of ``steps`` steps."""
    return (LR, LR_FINAL) if steps >= LONG_RUN else (SHORT_LR, SHORT_LR)


class Cancelled(ValueError):
    """The refinement was cancelled by the caller."""


def _weights(model: nn.Module) -> dict[str, Tensor]:
    return {name: model.get_submodule(name).weight for name in linear_names(model)}


def l_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    target: dict[str, Tensor],
    mu: float,
    loss_fn: Callable[[nn.Module], Tensor],
    steps: int,
    lr: Callable[[int], float] | None = None,
) -> float:
    """``steps`` proximal-gradient steps on L(W) + μ/2 ‖W − target‖², target = Δ(Θ) + λ/μ:
    an Adam step on L, then the exact proximal map of the quadratic,
    W ← (W + ημ·target) / (1 + ημ) with η = 1. (Adam normalises step sizes, so putting the
    penalty through it would pull W onto the target at ``lr`` per step however large μ is.)
    lr: the learning rate of step i (None: the optimizer's). Returns the mean photometric loss."""
    weights = _weights(model)
    pull = mu / (1.0 + mu)
    total = 0.0
    for i in range(steps):
        if lr is not None:
            set_lr(opt, lr(i))
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, w in weights.items():
                w.lerp_(target[n], pull)
        total += loss.item()
    return total / max(steps, 1)


@torch.no_grad()
def c_step(
    model: nn.Module, lam: dict[str, Tensor], mu: float, cfg: CompressionConfig
) -> nn.Module:
    """Θ = Π(W − λ/μ): the compressed model of the shifted weights (one batched k-means)."""
    shifted = copy.deepcopy(model)
    for name, w in _weights(shifted).items():
        w.sub_(lam[name] / mu)
    return compress(shifted, cfg)


@torch.no_grad()
def multiplier_step(model: nn.Module, theta: nn.Module, lam: dict[str, Tensor], mu: float) -> float:
    """λ ← λ − μ (W − Δ(Θ)); returns ‖W − Δ(Θ)‖ (the constraint violation)."""
    viol = 0.0
    for name, w in _weights(model).items():
        diff = w - theta.get_submodule(name).weight
        lam[name].sub_(mu * diff)
        viol += diff.pow(2).sum().item()
    return math.sqrt(viol)


def _stored_params(model: nn.Module) -> list[tuple[CompressedLinear, str, StoredTensor, Tensor]]:
    """Trainable leaves for what the file stores: a codebook for k-means tensors, the values
    for fp16/fp32 tensors."""
    out = []
    for layer in model.modules():
        if isinstance(layer, CompressedLinear):
            for part, st in layer.stored.items():
                src = st.codebook if st.quantized else st.values
                out.append((layer, part, st, src.detach().clone().requires_grad_(True)))
    return out


def _dense(st: StoredTensor, p: Tensor) -> Tensor:
    """The layer tensor from a trainable codebook (indices fixed) or values; pruned stay 0."""
    w = p[st.indices].reshape(st.shape) if st.quantized else p
    return w if st.mask is None else w * st.mask


def finetune_stored(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Tensor],
    steps: int,
    lr: float = 1e-4,
    lr_final: float | None = None,
) -> nn.Module:
    """Train codebooks, fp16/fp32 values and biases of a compressed model, indices and masks
    fixed; returns a new compressed model (codebooks and biases rounded to fp16 again). The
    learning rate decays exponentially from lr to lr_final (None: constant)."""
    model = copy.deepcopy(model).train()
    leaves = _stored_params(model)
    biases = [
        (layer, layer.bias.detach().clone().requires_grad_(True))
        for layer in model.modules()
        if isinstance(layer, CompressedLinear) and layer.bias is not None
    ]
    opt = torch.optim.Adam([p for *_, p in leaves] + [b for _, b in biases], lr=lr)
    lr_at = _decay(lr, lr if lr_final is None else lr_final, steps)
    for i in range(steps):
        set_lr(opt, lr_at(i))
        for layer, part, st, p in leaves:
            layer._buffers[part] = _dense(st, p)
        for layer, b in biases:
            layer._buffers["bias"] = b
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _rebuild(model, leaves, biases)


def _decay(lr: float, lr_final: float, steps: int) -> Callable[[int], float]:
    """The learning rate of step i: lr at 0, decayed exponentially to lr_final at ``steps``."""
    return lambda i: exp_decay(lr, lr_final, i, steps)


@torch.no_grad()
def _rebuild(model: nn.Module, leaves: list, biases: list) -> nn.Module:
    """Fresh CompressedLinear layers holding the fine-tuned codebooks, values and biases."""
    new_stored: dict[int, dict[str, StoredTensor]] = {}
    for layer, part, st, p in leaves:
        if st.quantized:
            cb, remap = torch.unique(round_to_fp16(p), sorted=True, return_inverse=True)
            idx = remap[st.indices]
            if st.mask is not None:
                idx = torch.where(st.mask.reshape(-1), idx, torch.zeros_like(idx))
            st = StoredTensor(st.shape, st.bits, codebook=cb, indices=idx, mask=st.mask)
        else:
            v = round_to_fp16(p) if st.bits == 16 else p.detach().clone()
            st = StoredTensor(st.shape, st.bits, mask=st.mask, values=_dense(st, v))
        new_stored.setdefault(id(layer), {})[part] = st
    bias_of = {id(layer): round_to_fp16(b) for layer, b in biases}
    for name, layer in list(model.named_modules()):
        if isinstance(layer, CompressedLinear):
            fresh = CompressedLinear(
                layer.in_features, layer.out_features, new_stored[id(layer)], bias_of.get(id(layer))
            )
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, fresh)
    return model.eval()


def _loss(
    rays, batch_rays: int, grid, settings: RenderSettings, g
) -> Callable[[nn.Module], Tensor]:
    return lambda m: photometric_loss(m, rays, batch_rays, grid, settings, g)


def refine(
    base: nn.Module,
    cfg: CompressionConfig,
    scene: str,
    settings: RenderSettings = RenderSettings(),
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    batch_rays: int = 1024,
    lr: float | None = None,
    lr_final: float | None = None,
    seed: int = 0,
    rays: tuple[Tensor, Tensor, Tensor] | None = None,
) -> nn.Module:
    """The LC algorithm for ``cfg.admm_steps`` SGD steps in all, then a fine-tune of what is
    stored (half as many steps). The learning rate decays exponentially from ``lr`` to
    ``lr_final`` over both; by default ``schedule(steps)``: LR to LR_FINAL from LONG_RUN
    steps on, a constant SHORT_LR below. ``base`` is left untouched. Raises ``Cancelled`` when
    ``cancel`` is set. ``rays`` (origins, dirs, rgb) default to the scene's training views."""
    steps = cfg.admm_steps
    first, last = schedule(steps)
    lr = first if lr is None else lr
    lr_final = (last if steps >= LONG_RUN else lr) if lr_final is None else lr_final
    device = module_device(base)
    if rays is None:
        if progress is not None:
            progress(0.0, "ground truth of the training views (rendered once, then cached)")
        rays = scenes.views(scene, "train").rays()
    rays = tuple(x.to(device) for x in rays)
    g = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(base).train()
    for p in model.parameters():
        p.requires_grad_(True)
    n_lc = max(2, min(20, steps // 25))  # LC iterations
    inner = max(1, steps // n_lc)
    mus = [1e-4 * (1e4) ** (j / (n_lc - 1)) for j in range(n_lc)]  # μ: 1e-4 → 1
    lam = {n: torch.zeros_like(w) for n, w in _weights(model).items()}
    theta = compress(model, cfg)  # direct compression: the LC starting point
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    grid = grid_for(model)
    ft = max(1, steps // 2)
    done, total = 0, n_lc * inner + ft
    lr_at = _decay(lr, lr_final, total)

    def report(msg: str) -> None:
        if cancel is not None and cancel.is_set():
            raise Cancelled("refinement cancelled")
        if progress is not None:
            progress(done / total, msg)

    for j, mu in enumerate(mus):
        target = {n: theta.get_submodule(n).weight + lam[n] / mu for n in lam}
        loss = l_step(
            model,
            opt,
            target,
            mu,
            _loss(rays, batch_rays, grid, settings, g),
            inner,
            lambda i, start=done: lr_at(start + i),
        )
        theta = c_step(model, lam, mu, cfg)
        viol = multiplier_step(model, theta, lam, mu)
        done += inner
        psnr = -10 * math.log10(loss)
        report(f"LC {j + 1}/{n_lc} · μ={mu:.3g} · train PSNR {psnr:.2f} dB · ‖W−Δ(Θ)‖={viol:.3g}")
        if j % 4 == 3:
            grid = grid_for(model)
    theta = compress(model, cfg)  # Θ = Π(W): the constraint at the end (λ dropped)
    theta_grid = grid_for(theta)
    loss_fn = _loss(rays, batch_rays, theta_grid, settings, g)
    theta = finetune_stored(theta, loss_fn, ft, lr_at(done), lr_final)
    done = total
    report("fine-tuned codebooks, factors and biases")
    return theta
