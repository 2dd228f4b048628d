"""Per-layer allocation: the smallest file that keeps a PSNR target (or the best PSNR in a size).

Each layer gets its own (bits, rank, prune). Like mixed-precision search (HAQ; HAWQ), we first
measure a sensitivity table, one layer changed at a time: for every layer and candidate setting,
the bytes its part of the file takes and the squared error it adds to the colours of a fixed
set of held-out rays (``Probe``). Errors of different layers are close to independent noise,
so they add up, and so do bytes; ``allocate`` then picks one candidate per layer, the fewest
bytes under an error budget, exactly, by dynamic programming over bytes (a multiple-choice
knapsack: Shoham & Gersho's 1988 bit allocation finds only the convex-hull points of it).
The engine verifies the pick with a real evaluation of the combined setting (``Engine.auto``).

``lc_rank_selection`` is the learning–compression rank selection with a storage criterion
(Idelbayev & Carreira-Perpiñán, CVPR 2020), the scheme this project started from, for
comparison.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from nerfcomp.compress.admm import Cancelled
from nerfcomp.compress.codec import layer_nbytes
from nerfcomp.compress.config import CompressionConfig, LayerConfig, ResolvedLayer
from nerfcomp.compress.layers import CompressedLinear
from nerfcomp.compress.lowrank import factors_are_smaller
from nerfcomp.render import RenderSettings, composite_packed, march_samples, visible_samples

__all__ = [
    "Probe",
    "SensitivityTable",
    "allocate",
    "candidate_settings",
    "config_from_choice",
    "config_from_settings",
    "lc_rank_selection",
    "sensitivity_table",
]

BITS = (2, 3, 4, 5, 6, 7, 8, 16)  # candidate bits of every layer (16: fp16, close to lossless)
STRUCTURES = ((None, 0.0), (None, 0.5), (32, 0.0), (16, 0.0))  # (rank, prune) candidates


def candidate_settings(
    shape: tuple[int, int],
    bits: Sequence[int] = BITS,
    structures: Sequence[tuple[int | None, float]] = STRUCTURES,
) -> list[ResolvedLayer]:
    """The settings tried for a layer with weight shape (m, n): bits × (rank, prune); a rank
    is only tried where its factors are smaller than W (else it would be the dense setting)."""
    m, n = shape
    out = []
    for rank, prune in structures:
        if rank is not None and not factors_are_smaller(m, n, rank):
            continue
        out.extend(ResolvedLayer(b, rank, prune) for b in bits)
    return out


@dataclass
class SensitivityTable:
    """For each layer, candidate settings with the bytes they take and the squared error they
    add on the probe's rays (the other layers left as they are).

    mse0: the uncompressed model's mean squared error on the probe rays.
    rows[layer]: list of (setting, bytes of the layer in the file, added mse), any order.
    fixed_bytes: bytes of the file that no choice changes (header, other parameters).
    """

    mse0: float
    rows: dict[str, list[tuple[ResolvedLayer, int, float]]] = field(default_factory=dict)
    fixed_bytes: int = 0

    def predict(self, choice: dict[str, int]) -> tuple[int, float]:
        """(bytes, probe mse) predicted for a choice {layer: row index}: sums over layers."""
        size = self.fixed_bytes + sum(self.rows[name][i][1] for name, i in choice.items())
        mse = self.mse0 + sum(self.rows[name][i][2] for name, i in choice.items())
        return size, mse


def allocate(
    table: SensitivityTable, max_mse: float | None = None, max_bytes: int | None = None
) -> dict[str, int]:
    """One candidate per layer: the fewest bytes with predicted mse <= max_mse, or the least
    mse within max_bytes (exactly one of the two). Returns {layer: row index}.

    A multiple-choice knapsack, solved exactly by dynamic programming over the bytes counted
    in quanta of q (q = 1 byte up to _STATES bytes in all, then just enough to keep that many
    states; each layer's bytes rounded up, so a byte budget holds); then single-layer moves
    with exact bytes while one improves the objective within the budget. Where no choice fits
    the budget, the one closest to it (the most accurate, or the smallest).
    """
    if (max_mse is None) == (max_bytes is None):
        raise ValueError("allocate needs exactly one of max_mse, max_bytes")
    names = list(table.rows)
    sizes = [np.array([b for _, b, _ in table.rows[n]], dtype=np.int64) for n in names]
    errs = [np.array([d for _, _, d in table.rows[n]], dtype=np.float64) for n in names]
    q = max(1, -(-sum(int(s.max()) for s in sizes) // _STATES))
    units = [-(-s // q) for s in sizes]  # per layer and row: bytes in quanta, rounded up
    least, arg = _knapsack(units, errs)  # least[j]: the least added mse in exactly j quanta
    if max_mse is not None:
        ok = np.nonzero(table.mse0 + least <= max_mse)[0]
        j = int(ok[0]) if ok.size else int(np.argmin(least))
    else:
        top = (max_bytes - table.fixed_bytes) // q
        finite = np.nonzero(np.isfinite(least))[0]
        j = int(finite[0]) if top < finite[0] else int(np.argmin(least[: top + 1]))
    choice = {}
    for i in reversed(range(len(names))):
        choice[names[i]] = k = int(arg[i, j])
        j -= int(units[i][k])
    choice = {n: choice[n] for n in names}

    def fits(c: dict[str, int]) -> bool:
        size, mse = table.predict(c)
        return mse <= max_mse if max_mse is not None else size <= max_bytes

    if not fits(choice):
        return choice
    return _greedy(table, choice, fits, minimise_bytes=max_mse is not None)


_STATES = 1 << 15  # most byte quanta the dynamic program keeps


def _knapsack(units: list[np.ndarray], errs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """least: (J,) the least sum of errs over choices of one row per layer whose units sum to
    exactly j (inf where none does); arg: (layers, J) the row of each layer on that path."""
    n_states = sum(int(u.max()) for u in units) + 1
    least = np.full(n_states, np.inf)
    least[0] = 0.0
    arg = np.zeros((len(units), n_states), dtype=np.int64)
    for i, (u, e) in enumerate(zip(units, errs, strict=True)):
        new = np.full(n_states, np.inf)
        for k, (uk, ek) in enumerate(zip(u.tolist(), e.tolist(), strict=True)):
            cand = np.full(n_states, np.inf)
            cand[uk:] = least[: n_states - uk] + ek
            better = cand < new
            new[better] = cand[better]
            arg[i, better] = k
        least = new
    return least, arg


def _greedy(
    table: SensitivityTable,
    choice: dict[str, int],
    fits: Callable[[dict[str, int]], bool],
    minimise_bytes: bool,
) -> dict[str, int]:
    """Single-layer changes that keep the budget, best gain first, until none improves."""
    choice = dict(choice)
    objective = 0 if minimise_bytes else 1  # index into predict(): bytes or mse
    while True:
        now = table.predict(choice)[objective]
        best, best_gain = None, 0.0
        for name, rows in table.rows.items():
            for i in range(len(rows)):
                if i == choice[name]:
                    continue
                trial = {**choice, name: i}
                gain = now - table.predict(trial)[objective]
                if gain > best_gain and fits(trial):
                    best, best_gain = trial, gain
        if best is None:
            return choice
        choice = best


def config_from_choice(
    table: SensitivityTable, choice: dict[str, int], admm_steps: int = 0
) -> CompressionConfig:
    """The CompressionConfig of a choice {layer: row index} of ``table``."""
    picked = {name: table.rows[name][i][0] for name, i in choice.items()}
    return config_from_settings(picked, admm_steps)


def config_from_settings(
    settings: dict[str, ResolvedLayer], admm_steps: int = 0
) -> CompressionConfig:
    """A CompressionConfig giving each layer its setting: the most common one as the default,
    the others as overrides (rank 0 in an override keeps that layer dense)."""
    values = list(settings.values())
    default = max(values, key=values.count)
    layers = {
        name: LayerConfig(bits=s.bits, rank=s.rank or 0, prune=s.prune)
        for name, s in settings.items()
        if s != default
    }
    return CompressionConfig(
        bits=default.bits,
        rank=default.rank,
        prune=default.prune,
        admm_steps=admm_steps,
        layers=layers,
    )


class Probe:
    """A fixed set of held-out rays and their visible samples, to score models quickly.

    The samples are those the original model's occupancy grid keeps, in front of the point
    where the original turns opaque; every model is scored on the same samples, composited
    as the renderer does. ``mse_with(layer, module)`` replays the original's outputs of every
    Linear layer that runs before ``layer`` (they cannot depend on it), so changing a late
    layer costs only the layers after it.
    """

    def __init__(
        self,
        model: nn.Module,
        origins: Tensor,
        dirs: Tensor,
        target: Tensor,
        grid,
        settings: RenderSettings = RenderSettings(),
        max_samples: int | None = None,
    ) -> None:
        """model: the original, (x, d) -> (rgb, sigma); origins, dirs: (n_rays, 3) on the
        model's device; target: (n_rays, 3) ground-truth colours; grid: the original's.
        max_samples: keep only a seeded random subset of the rays whose samples fit in it
        (hazy scenes have several times more samples per ray: this bounds the cost)."""
        self.model, self.settings = model, settings
        with torch.no_grad():
            ray_idx, _, t = march_samples(origins, dirs, settings, grid)
            keep = visible_samples(model.density, origins, dirs, ray_idx, t, settings)
        ray_idx, t = ray_idx[keep], t[keep]
        if max_samples is not None and ray_idx.numel() > max_samples:
            rays = _rays_within(ray_idx, origins.shape[0], max_samples)  # (m,) ascending
            kept = torch.zeros(origins.shape[0], dtype=torch.bool, device=origins.device)
            kept[rays] = True
            sel, renumber = kept[ray_idx], torch.cumsum(kept, 0) - 1
            ray_idx, t = renumber[ray_idx[sel]], t[sel]
            origins, dirs, target = origins[rays], dirs[rays], target[rays.to(target.device)]
        self.n_rays = origins.shape[0]
        self.ray_idx = ray_idx
        self.pts = origins[ray_idx] + t[:, None] * dirs[ray_idx]  # (n, 3)
        self.dirs = dirs[ray_idx]  # (n, 3)
        self.target = target.to(origins.device).double()  # (n_rays, 3)
        self.order: list[str] = []  # Linear layers in the order they run
        self.outputs: dict[str, Tensor] = {}  # their outputs in the original
        handles = [
            m.register_forward_hook(self._recorder(name))
            for name, m in model.named_modules()
            if isinstance(m, nn.Linear)
        ]
        try:
            self.colors0 = self._colors(model)  # (n_rays, 3) the original's
        finally:
            for h in handles:
                h.remove()

    @property
    def samples(self) -> int:
        return int(self.pts.shape[0])

    def _recorder(self, name: str):
        def hook(_module, _inputs, output):
            self.order.append(name)
            self.outputs[name] = output.detach()

        return hook

    @torch.no_grad()
    def _colors(self, model: nn.Module) -> Tensor:
        """(n_rays, 3) float64: the probe rays composited from ``model`` on the fixed samples."""
        rgb, sigma = model(self.pts, self.dirs)
        deltas = torch.full_like(sigma, self.settings.step_size)
        color, _, _ = composite_packed(
            sigma, rgb, deltas, self.ray_idx, self.n_rays, self.settings.background
        )
        return color.clamp(0, 1).double()

    @property
    def mse0(self) -> float:
        """The original's mean squared error against the ground truth on the probe rays."""
        err = self.colors0 - self.target
        return float((err * err).mean())

    def mse_with(self, layer: str, module: nn.Module) -> float:
        """Mean squared difference between the probe colours of the original and of the
        original with ``layer`` replaced by ``module``: the error that change adds. (Not the
        change of the error against the ground truth: on a few thousand rays its cross term
        is noise as large as the effect, of either sign.)"""
        swaps = {
            name: _Replay(self.outputs[name]) for name in self.order[: self.order.index(layer)]
        }
        swaps[layer] = module
        originals = {name: self.model.get_submodule(name) for name in swaps}
        try:
            for name, m in swaps.items():
                _set_submodule(self.model, name, m)
            err = self._colors(self.model) - self.colors0
        finally:
            for name, m in originals.items():
                _set_submodule(self.model, name, m)
        return float((err * err).mean())


def _rays_within(ray_idx: Tensor, n_rays: int, max_samples: int) -> Tensor:
    """Rays, in a seeded random order, while their samples add up to at most max_samples:
    (m,) ascending indices. ray_idx: (n,) the ray of each sample."""
    counts = torch.bincount(ray_idx, minlength=n_rays)  # (n_rays,)
    order = torch.randperm(n_rays, generator=torch.Generator().manual_seed(0))
    order = order.to(ray_idx.device)
    return order[torch.cumsum(counts[order], 0) <= max_samples].sort().values


class _Replay(nn.Module):
    """Returns a recorded output whatever its input (for layers upstream of a change)."""

    def __init__(self, output: Tensor) -> None:
        super().__init__()
        self.output = output

    def forward(self, x: Tensor) -> Tensor:
        return self.output


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def lc_rank_selection(
    svds: dict[str, tuple[Tensor, Tensor, Tensor]], alpha: float, bits: int = 32
) -> dict[str, int | None]:
    """Per-layer ranks of LC rank selection with a storage criterion (Idelbayev &
    Carreira-Perpiñán 2020, eq. 5): r minimising ‖W − W_r‖² + α·C(r), C(r) the bits of the
    factors r·(m + n)·bits, or of W (m·n·bits) when that is smaller (rank None: dense).

    svds: layer → (U, S, Vh) of its weight. Returns layer → rank (None: keep W).
    """
    out: dict[str, int | None] = {}
    for name, (u, s, vh) in svds.items():
        m, n = u.shape[0], vh.shape[1]
        tail = torch.flip(torch.cumsum(torch.flip(s.double() ** 2, [0]), 0), [0])  # Σ_{i>=r}
        best, best_cost = None, alpha * m * n * bits  # dense: no error
        for r in range(1, s.numel()):
            if not factors_are_smaller(m, n, r):
                break
            cost = float(tail[r]) + alpha * r * (m + n) * bits
            if cost < best_cost:
                best, best_cost = r, cost
        out[name] = best
    return out


def sensitivity_table(
    model: nn.Module,
    probe: Probe,
    settings: dict[str, list[ResolvedLayer]],
    stored: Callable[[list[tuple[str, ResolvedLayer]]], list[dict]],
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
) -> SensitivityTable:
    """Measure every layer's candidate settings, one layer changed at a time.

    settings: layer → candidates; stored: (layer, setting) pairs → their stored tensors
    (the engine's cached k-means), called once per layer so progress moves.
    """
    table = SensitivityTable(probe.mse0)
    layers = list(settings.items())
    wanted = lambda i: [(layers[i][0], s) for s in layers[i][1]]  # noqa: E731
    # the next layer's k-means (single-threaded) runs while this layer is probed
    with ThreadPoolExecutor(1, thread_name_prefix="kmeans-ahead") as pool:
        ahead = pool.submit(stored, wanted(0)) if layers else None
        for done, (layer, options) in enumerate(layers):
            if cancel is not None and cancel.is_set():
                raise Cancelled("allocation cancelled")
            if progress is not None:
                progress(done / len(layers), f"sensitivity of {layer} ({len(options)} settings)")
            parts = ahead.result()
            if done + 1 < len(layers):
                ahead = pool.submit(stored, wanted(done + 1))
            linear = model.get_submodule(layer)
            rows = []
            for s, p in zip(options, parts, strict=True):
                module = CompressedLinear.from_linear(linear, p, s.bits).to(probe.pts.device)
                rows.append((s, layer_nbytes(module), probe.mse_with(layer, module)))
            table.rows[layer] = rows
    return table
