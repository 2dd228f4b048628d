"""The compressed linear layer and the stages that build it.

Per nn.Linear weight W (m×n), DESIGN.md's hybrid scheme in the order it is applied here:

1. ``tensors_to_store``: truncated SVD → factors A (m×r), B (r×n) where they are smaller than W,
   then magnitude pruning of each stored tensor → {name: (values, keep-mask)}.
2. ``quantize_stored``: k-means weight sharing of the kept values of every tensor in ONE batched
   ``kmeans_1d`` call (bits 1..8), or an fp16 / float32 cast (bits 16 / 32) → ``StoredTensor``.
3. ``CompressedLinear`` computes with the dequantized float32 tensors, so a decoded file gives the
   same outputs bit for bit. ``compress`` composes the stages; the engine calls them one by one
   to cache each.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nerfcomp.compress.config import CompressionConfig
from nerfcomp.compress.kmeans import kmeans_1d
from nerfcomp.compress.lowrank import factors_are_smaller, factors_from_svd, svd_from_weight
from nerfcomp.compress.prune import magnitude_mask

__all__ = [
    "CompressedLinear",
    "StoredTensor",
    "compress",
    "linear_names",
    "quantize_stored",
    "replace_linears",
    "tensors_to_store",
]

log = logging.getLogger(__name__)

FP16_MAX = 65504.0


def round_to_fp16(t: Tensor) -> Tensor:
    """t rounded through fp16 (still float32), unless that would overflow: then t as float32."""
    t = t.detach().float()
    return t.half().float() if bool((t.abs() <= FP16_MAX).all()) else t.clone()


@dataclass(eq=False)
class StoredTensor:
    """One tensor as the file stores it.

    Quantized (bits 1..8): ``codebook`` (k,) float32 ascending and distinct, k ≤ 2^bits, each
    exactly representable in fp16 unless it would overflow; ``indices`` (numel,) int64 into it,
    row-major, 0 at pruned positions. Float (bits 16/32): ``values`` float32 of ``shape`` (fp16-
    exact for bits 16), 0 where pruned. ``mask``: bool of ``shape``, True = kept; None = all kept.
    """

    shape: tuple[int, ...]
    bits: int
    codebook: Tensor | None = None
    indices: Tensor | None = None
    mask: Tensor | None = None
    values: Tensor | None = None

    @property
    def quantized(self) -> bool:
        return self.codebook is not None

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    def dense(self) -> Tensor:
        """The float32 tensor of ``shape`` that the layer computes with."""
        if self.values is not None:
            return self.values
        assert self.codebook is not None and self.indices is not None
        if self.codebook.numel() == 0:  # everything pruned
            return torch.zeros(self.shape, device=self.indices.device)
        w = self.codebook[self.indices].reshape(self.shape)
        return w if self.mask is None else torch.where(self.mask, w, torch.zeros_like(w))


class CompressedLinear(nn.Module):
    """y = x·Wᵀ + b, or (x·Bᵀ)·Aᵀ + b when factorized, with W / A, B dequantized (float32).

    ``stored``: {"W": (out, in)} or {"A": (out, r), "B": (r, in)} as ``StoredTensor``s; the
    dequantized tensors are buffers of the same names. ``bias``: (out,) float32 buffer or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stored: Mapping[str, StoredTensor],
        bias: Tensor | None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        shapes = {name: tuple(st.shape) for name, st in stored.items()}
        dense_ok = shapes == {"W": (out_features, in_features)}
        a, b = shapes.get("A", (0, 0)), shapes.get("B", (0, 0))
        lowrank_ok = set(shapes) == {"A", "B"} and a[0] == out_features and b[1] == in_features
        if not (dense_ok or (lowrank_ok and a[1] == b[0] >= 1)):
            raise ValueError(
                f"stored tensors {shapes} do not make a {in_features}→{out_features} layer"
            )
        if bias is not None and tuple(bias.shape) != (out_features,):
            raise ValueError(f"bias shape {tuple(bias.shape)} != ({out_features},)")
        self.stored: dict[str, StoredTensor] = dict(stored)
        for name, st in self.stored.items():  # contiguous: same memory layout, same BLAS path
            self.register_buffer(name, st.dense().contiguous())
        self.register_buffer("bias", None if bias is None else bias.contiguous())

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, stored: Mapping[str, StoredTensor], bits: int
    ) -> CompressedLinear:
        """Wrap `stored` with `linear`'s bias, kept in fp16 for bits ≤ 16, float32 for 32."""
        b = linear.bias
        if b is not None:
            b = round_to_fp16(b) if bits <= 16 else b.detach().float().clone()
        return cls(linear.in_features, linear.out_features, stored, b)

    @property
    def factorized(self) -> bool:
        return "A" in self.stored

    @property
    def weight(self) -> Tensor:
        """The effective (out, in) weight, A·B when factorized."""
        return self.A @ self.B if self.factorized else self.W

    def forward(self, x: Tensor) -> Tensor:  # x: (..., in) → (..., out)
        if self.factorized:
            return F.linear(F.linear(x, self.B), self.A, self.bias)
        return F.linear(x, self.W, self.bias)

    def extra_repr(self) -> str:
        parts = ", ".join(f"{n}={tuple(s.shape)}@{s.bits}b" for n, s in self.stored.items())
        return (
            f"in={self.in_features}, out={self.out_features}, {parts}, bias={self.bias is not None}"
        )


def linear_names(model: nn.Module) -> list[str]:
    """Qualified names of the nn.Linear modules of `model`, in module order ("" = the root)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def tensors_to_store(
    weight: Tensor,
    rank: int | None,
    prune: float,
    svd: tuple[Tensor, Tensor, Tensor] | None = None,
) -> dict[str, tuple[Tensor, Tensor | None]]:
    """Stage 1: which tensors to store for `weight` (m, n), low-rank and pruned.

    Returns {"W": (values, mask)} or {"A": ..., "B": ...} (factors only where r·(m+n) < m·n);
    values float32, zero where pruned; mask bool, True = kept, None when nothing is pruned.
    `svd`: a precomputed ``svd_from_weight(weight)`` triple (the engine caches it per layer).
    """
    m, n = weight.shape
    if rank is not None and factors_are_smaller(m, n, rank):
        u, s, vh = svd if svd is not None else svd_from_weight(weight)
        a, b = factors_from_svd(u, s, vh, rank)  # (m, r), (r, n)
        raw = {"A": a, "B": b}
    else:
        raw = {"W": weight.detach().float()}
    out = {}
    for name, t in raw.items():
        mask = magnitude_mask(t, prune) if prune > 0 else None
        if mask is None or bool(mask.all()):
            out[name] = (t.clone(), None)
        else:
            out[name] = (torch.where(mask, t, torch.zeros_like(t)), mask)
    return out


def quantize_stored(
    items: Sequence[tuple[Tensor, Tensor | None]], bits: int | Sequence[int]
) -> list[StoredTensor]:
    """Stage 2: (values, mask) pairs → StoredTensors; one batched k-means for all of them.

    bits: one value for all items or one per item; 1..8 k-means of the kept values into ≤ 2^bits
    centroids (rounded to fp16), 16 fp16 cast, 32 float32 copy.
    """
    bits_of = [int(bits)] * len(items) if isinstance(bits, int) else [int(b) for b in bits]
    if len(bits_of) != len(items):
        raise ValueError(f"{len(bits_of)} bit widths for {len(items)} tensors")
    out: list[StoredTensor | None] = [None] * len(items)
    todo: list[int] = []
    for i, ((values, mask), b) in enumerate(zip(items, bits_of, strict=True)):
        shape = tuple(values.shape)
        if b >= 16:
            v = round_to_fp16(values) if b == 16 else values.detach().float().clone()
            out[i] = StoredTensor(shape, b, mask=mask, values=v)
        elif mask is not None and not bool(mask.any()):  # nothing kept: an empty codebook
            empty = torch.zeros(0, device=values.device)
            idx = torch.zeros(values.numel(), dtype=torch.long, device=values.device)
            out[i] = StoredTensor(shape, b, codebook=empty, indices=idx, mask=mask)
        else:
            todo.append(i)
    kept = [_kept(*items[i]) for i in todo]
    results = kmeans_1d(kept, [2 ** bits_of[i] for i in todo]) if todo else []
    for i, (codebook, idx) in zip(todo, results, strict=True):
        out[i] = _stored_from_codes(items[i], bits_of[i], codebook, idx)
    return out  # type: ignore[return-value]


def _kept(values: Tensor, mask: Tensor | None) -> Tensor:
    """The kept entries of `values`, row-major: (n_kept,)."""
    return values.reshape(-1) if mask is None else values[mask]


def _stored_from_codes(
    item: tuple[Tensor, Tensor | None], bits: int, codebook: Tensor, idx: Tensor
) -> StoredTensor:
    """Round the codebook to fp16 first (so the file round trip is exact), merge centroids that
    collapsed, and scatter the kept indices (n_kept,) back to (numel,)."""
    values, mask = item
    codebook, remap = torch.unique(round_to_fp16(codebook), sorted=True, return_inverse=True)
    idx = remap[idx]
    if mask is not None:
        full = torch.zeros(values.numel(), dtype=torch.long, device=idx.device)
        full[mask.reshape(-1)] = idx
        idx = full
    return StoredTensor(tuple(values.shape), bits, codebook=codebook, indices=idx, mask=mask)


def replace_linears(model: nn.Module, modules: Mapping[str, nn.Module]) -> nn.Module:
    """A deep copy of `model` with the submodule at each qualified name replaced (`model` is
    left untouched; shared submodules stay shared)."""
    memo = {id(model.get_submodule(name)): new for name, new in modules.items()}
    return copy.deepcopy(model, memo)


def compress(model: nn.Module, cfg: CompressionConfig) -> nn.Module:
    """A copy of `model` with every nn.Linear replaced by a CompressedLinear per `cfg`.

    Only projects (truncated SVD, pruning, k-means); ADMM refinement (``cfg.admm_steps``) is the
    engine's job. Raises ValueError if ``cfg.layers`` names a module that is not an nn.Linear.
    """
    names = linear_names(model)
    unknown = sorted(set(cfg.layers) - set(names))
    if unknown:
        raise ValueError(
            f"CompressionConfig.layers names {unknown}, not Linear layers of the "
            f"model; those are {names}"
        )
    items: list[tuple[Tensor, Tensor | None]] = []
    bits: list[int] = []
    keys: list[tuple[str, str]] = []
    for name in names:
        lc = cfg.for_layer(name)
        for part, item in tensors_to_store(
            model.get_submodule(name).weight, lc.rank, lc.prune
        ).items():
            items.append(item)
            bits.append(lc.bits)
            keys.append((name, part))
    stored = quantize_stored(items, bits)
    per_layer: dict[str, dict[str, StoredTensor]] = {name: {} for name in names}
    for (name, part), st in zip(keys, stored, strict=True):
        per_layer[name][part] = st
    modules = {
        name: CompressedLinear.from_linear(
            model.get_submodule(name), parts, cfg.for_layer(name).bits
        )
        for name, parts in per_layer.items()
    }
    log.debug("compressed %d Linear layers (%d stored tensors)", len(names), len(items))
    return replace_linears(model, modules)
