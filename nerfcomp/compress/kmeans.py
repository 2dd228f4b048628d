"""Batched 1-D k-means for weight sharing (DESIGN.md, scheme step 3).

Weights are scalars, so each tensor is sorted once and every cluster is a contiguous run of its
sorted values, described by cut positions. A Lloyd step then costs O(k log n): the decision
boundaries (midpoints between sorted centroids) are located with `torch.searchsorted`, and the
cluster sums and counts are differences of float64 prefix sums. All tensors are clustered in one
batched call: their sorted values are rows of a (n_tensors, max_len) matrix padded with +inf, and
rows with a smaller k carry +inf centroids past their k.

Quality. The exact optimum is Ckmeans.1d.dp (Wang & Song 2011, the `kmeans1d` package), O(kn).
We start from a companding initialisation (Panter & Dite 1951: for many clusters the optimal
centroid density is proportional to p(x)^(1/3)) and Lloyd's steps, which stop in a local optimum
~10% worse on trained weights at k = 256: the init puts up to 4 clusters too many into each
heavy tail, so the cuts sit whole clusters off the optimal ones over long stretches, plus
fractions of a cluster elsewhere. Sweeps of a windowed dynamic program then move all cuts
jointly: the exact DP of Ckmeans restricted to candidates for cut j at cluster index j + d, d on
a grid, placed by interpolating the current cuts (an integer d is exactly the current cut j + d),
each sweep followed by Lloyd's steps. Levels of grids (`_LEVELS`) go from wide (+-4 clusters) to
fine (fractions); each candidate only looks back `band` candidates, and a sweep costs
O(k * W * band) for W candidates per cut. Measured within 0.01% of the optimum on a trained
NeRF's weights (assets/primitives.safetensors, bits 1..8) and within 0.05% on Gaussian,
Laplacian, Student-t, pruned, bimodal, uniform and rounded samples of 1k-12k values for
k = 2..256 (benchmarks/kmeans.py, tests/test_kmeans.py).
"""

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["distortion", "kmeans_1d"]

# Windowed-DP levels by k, each (half width, step, band, most sweeps) in clusters: candidates for
# cut j sit at cluster index j + d, d = -half, -half + step, .., half, and a cut may move at most
# `band` steps further than its left neighbour. "Wide" moves up to 4 clusters between regions at
# once, "mid" repeats smaller moves until they stop paying, "fine" settles fractions. Fewer cuts
# afford finer steps; measured (benchmarks/kmeans.py) to stay within 0.1% of the optimum.
_LEVELS = (
    (96, ((4.0, 1 / 12, 12, 1), (1.0, 1 / 16, 16, 8), (0.25, 1 / 64, 8, 4))),
    (24, ((4.0, 1 / 16, 16, 1), (1.0, 1 / 32, 32, 8), (0.125, 1 / 256, 16, 4))),
    (1, ((2.0, 1 / 32, 32, 1), (1.0, 1 / 64, 32, 8), (0.125, 1 / 512, 16, 4))),
)
_TOL = 2e-5  # a row stops sweeping a level once a sweep gains less than this fraction
_INIT_ITERS, _POLISH_ITERS = 10, 5  # Lloyd steps after the initialisation, after each sweep


class _Rows(NamedTuple):
    """The sorted tensors, one per row: xs (B, L) ascending, centred, +inf past n_b; cs, cs2
    (B, L + 1) prefix sums of x and x^2 (padding as 0); runs of equal values: rank (B, L + 1)
    runs starting before position p, start (B, L + 1) where run r starts (n_b from distinct on).
    """

    xs: torch.Tensor
    cs: torch.Tensor
    cs2: torch.Tensor
    rank: torch.Tensor
    start: torch.Tensor


def kmeans_1d(
    values: Sequence[torch.Tensor], n_clusters: int | Sequence[int], iters: int = 50
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cluster each 1-D tensor in `values` into at most n_clusters centroids.

    values: tensors of shape (n_i,), finite; flattened if not 1-D; all on one device.
    n_clusters: one k for all tensors, or one per tensor (each >= 1).
    iters: caps each run of Lloyd steps (at most _INIT_ITERS after the initialisation and
    _POLISH_ITERS after each DP sweep); a run stops early once no row's assignment changes.
    Returns per input: (codebook: (k_i,) float32 sorted ascending, indices: (n_i,) int64 into
    codebook), k_i = min(n_clusters_i, number of distinct values). Every codebook entry is used by
    at least one value (cells Lloyd empties are re-seeded by splitting the worst ones), and is the
    mean of its values. Deterministic, and the same whether tensors are clustered together or
    one by one. Runs single-threaded (torch's thread count is restored on return): its many
    small ops only wait on a second thread, badly so on a busy machine.
    """
    if len(values) == 0:
        return []
    ks = [int(n_clusters)] * len(values) if isinstance(n_clusters, int) else list(n_clusters)
    if len(ks) != len(values) or min(ks) < 1:
        raise ValueError(f"n_clusters must be >= 1 and one per tensor, got {n_clusters}")
    with _one_thread():
        flat, padded, n = _padded_rows(values)  # (n_i,) float64; (B, L) +inf padded; (B,)
        raw = _sort_rows(padded)  # (B, L) ascending
        xs, cs, cs2 = _centred_prefix_sums(raw, n)  # (B, L); (B, L + 1) of x and x^2
        rank, start = _runs(xs, n)  # (B, L + 1): runs before position p; where run r starts
        data = _Rows(xs, cs, cs2, rank, start)
        distinct = rank.gather(1, n[:, None]).squeeze(1)  # (B,)
        k = torch.minimum(torch.tensor(ks, device=xs.device), distinct)  # (B,)
        c = _init_centroids(xs, n, k, distinct, start)  # (B, k_max)
        cuts = _lloyd(data, _cuts_from_centroids(xs, n, c), min(iters, _INIT_ITERS))
        cuts = _fill_empty_cells(data, k, cuts)  # (B, k_max + 1)
        todo = (k > 1) & (k < distinct)  # the others are exact already
        for levels in sorted({_levels(kb) for kb in k[todo].tolist()}):  # same grids together
            same = torch.tensor([_levels(kb) == levels for kb in k.tolist()], device=k.device)
            rows = (todo & same).nonzero()[:, 0]
            for level in levels:
                cuts = _refine_cuts(data, k, cuts, rows, level, iters)
        codebook = _codebook_from_cuts(raw, xs, cs, cuts)  # (B, k_max)
        # a cut never splits equal values: v's cluster is the number of cluster starts <= v
        firsts = raw.gather(1, cuts[:, 1:-1].clamp_max(raw.shape[1] - 1))  # (B, k_max - 1)
        return [
            (codebook[i, :ki].float(), torch.searchsorted(firsts[i, : ki - 1], v, right=True))
            for i, (ki, v) in enumerate(zip(k.tolist(), flat, strict=True))
        ]


def distortion(values: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> float:
    """Sum of squared errors of `values` (n,) reconstructed as `codebook[indices]`, in float64."""
    err = values.reshape(-1).double() - codebook.double()[indices.reshape(-1)]
    return float((err * err).sum())


def _levels(k: int) -> tuple[tuple[float, float, int, int], ...]:
    """The DP levels for k clusters: (half width, step, band, most sweeps), grids in clusters."""
    return next(levels for k_min, levels in _LEVELS if k >= k_min)


_threads_lock = threading.Lock()
_threads_state = {"users": 0, "saved": 1}  # k-means calls running, thread count to restore


@contextmanager
def _one_thread() -> Iterator[None]:
    """torch's (process-wide) thread count at 1 while any k-means runs; the first call in
    saves the count and the last one out restores it, so concurrent calls (several sessions,
    the allocator's look-ahead) never leave the process at one thread."""
    with _threads_lock:
        if _threads_state["users"] == 0:
            _threads_state["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_state["users"] += 1
    try:
        yield
    finally:
        with _threads_lock:
            _threads_state["users"] -= 1
            if _threads_state["users"] == 0:
                torch.set_num_threads(_threads_state["saved"])


def _padded_rows(
    values: Sequence[torch.Tensor],
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The tensors flattened to float64 (n_i,), as rows of (B, L) +inf past n_i (L >= 2), and
    n: (B,) int64 lengths."""
    device = values[0].device
    flat = [v.detach().reshape(-1).to(device, torch.float64) for v in values]
    if min(v.numel() for v in flat) < 1:
        raise ValueError("every tensor needs at least one value")
    n = torch.tensor([v.numel() for v in flat], device=device)
    padded = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=float("inf"))
    padded = torch.nn.functional.pad(padded, (0, max(0, 2 - padded.shape[1])), value=float("inf"))
    return flat, padded.contiguous(), n


def _sort_rows(padded: torch.Tensor) -> torch.Tensor:
    """Each row sorted ascending. On the CPU numpy's vectorised sort of the values alone is ~20x
    faster than torch.sort, which also computes the permutation (not needed: see the indices)."""
    if padded.device.type == "cpu":
        return torch.from_numpy(np.sort(padded.numpy(), axis=1))
    return torch.sort(padded, dim=1).values


def _runs(xs: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal values of the sorted rows xs (B, L): rank, start (B, L + 1), see _Rows;
    rank[b, n_b] is the number of distinct values. Few full-size temporaries here and below:
    each costs page faults comparable to its arithmetic."""
    b, length = xs.shape
    new = torch.ones_like(xs, dtype=torch.bool)
    torch.ne(xs[:, 1:], xs[:, :-1], out=new[:, 1:])
    new &= torch.arange(length, device=xs.device) < n[:, None]  # (B, L): a run starts here
    rank = torch.zeros((b, length + 1), dtype=torch.long, device=xs.device)
    torch.cumsum(new, dim=1, out=rank[:, 1:])
    slot = rank[:, :-1].masked_fill(~new, length + 1)
    start = n[:, None].expand(b, length + 2).clone()  # last column: where non-starts go
    start.scatter_(1, slot, torch.arange(length, device=xs.device).expand(b, length))
    return rank, start[:, : length + 1]


def _centred_prefix_sums(
    raw: torch.Tensor, n: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """xs = raw - row mean (B, L), +inf padding kept: smaller prefix sums, less cancellation in
    q - s^2 / count; cs, cs2: (B, L + 1) float64, cs[b, j] = sum of the first j of row b (x^2)."""
    xs = raw - raw.nan_to_num(posinf=0.0).sum(dim=1, keepdim=True) / n[:, None]
    x0 = xs.nan_to_num(posinf=0.0)
    cs, cs2 = (
        torch.zeros((len(n), xs.shape[1] + 1), dtype=xs.dtype, device=xs.device) for _ in "12"
    )
    torch.cumsum(x0, dim=1, out=cs[:, 1:])
    torch.cumsum(x0.square_(), dim=1, out=cs2[:, 1:])
    return xs, cs, cs2


def _init_centroids(
    xs: torch.Tensor, n: torch.Tensor, k: torch.Tensor, distinct: torch.Tensor, start: torch.Tensor
) -> torch.Tensor:
    """Companding init: c: (B, k_max) float64, +inf past k_b.

    Centroid t of row b sits where the running integral of p^(1/3) reaches (t + 1/2)/k_b of its
    total. A gap g between neighbouring sorted values holds mass 1/n at density 1/(n g), so it adds
    g^(2/3) (up to a constant) to that integral; the noise of single gaps averages out in the sum.
    Rows with k_b equal to their number of distinct values get those values: the exact answer.
    xs: (B, L) sorted; start: (B, L + 1) where each run of equal values starts (`_runs`).
    """
    length = xs.shape[1]
    k_max = int(k.max())
    g = torch.zeros_like(xs)  # (B, L), constant past n_b - 1 (the gaps into padding are 0)
    torch.cumsum(xs.diff(dim=1).nan_to_num_(0.0, posinf=0.0).pow_(2.0 / 3.0), dim=1, out=g[:, 1:])
    total = g.gather(1, (n - 1)[:, None])  # (B, 1)
    t = torch.arange(k_max, device=xs.device, dtype=torch.float64)
    target = (t + 0.5) / k[:, None] * total  # (B, k_max) < total
    hi = torch.searchsorted(g, target.contiguous()).clamp(1, length - 1)  # first g >= target
    lo = hi - 1
    g_lo, g_hi = g.gather(1, lo), g.gather(1, hi)
    x_lo, x_hi = xs.gather(1, lo), xs.gather(1, hi)
    frac = ((target - g_lo) / (g_hi - g_lo)).nan_to_num(0.0).clamp(0.0, 1.0)
    c = x_lo + frac * (x_hi - x_lo).nan_to_num(0.0, posinf=0.0)
    each_value = xs.gather(1, start[:, :k_max].clamp_max(length - 1))  # run r's value
    c = torch.where((k == distinct)[:, None], each_value, c)
    return torch.where(t < k[:, None], c, torch.full_like(c, float("inf")))


def _take(t: torch.Tensor, rows: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
    """t[rows[r], idx[r, ...]]: shaped like idx (R, ...), without copying whole rows of t (B, L);
    rows None: all rows."""
    if rows is None:
        return t.gather(1, idx.reshape(idx.shape[0], -1)).reshape(idx.shape)
    return t[rows.reshape(-1, *[1] * (idx.dim() - 1)), idx]


def _cuts_from_centroids(xs: torch.Tensor, n: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid cells as cut positions: (B, k_max + 1) int64, cell j = [cut_j, cut_j+1).

    xs: (B, L) sorted +inf padded; c: (B, k_max) sorted, +inf padded. The boundaries are the
    midpoints of neighbouring centroids; an +inf boundary lands at n_b.
    """
    mid = 0.5 * (c[:, 1:] + c[:, :-1])  # (B, k_max - 1)
    pos = torch.minimum(torch.searchsorted(xs, mid.contiguous()), n[:, None])
    return torch.cat([torch.zeros_like(n)[:, None], pos, n[:, None]], dim=1)


def _centroids_from_cuts(
    cs: torch.Tensor, cuts: torch.Tensor, old: torch.Tensor, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of each cell: (R, k_max) float64; an empty cell keeps its `old` centroid."""
    sums, counts = _take(cs, rows, cuts).diff(dim=1), cuts.diff(dim=1)  # (R, k_max)
    return torch.where(counts > 0, sums / counts.clamp_min(1), old)


def _lloyd(
    data: _Rows, cuts: torch.Tensor, iters: int, rows: torch.Tensor | None = None
) -> torch.Tensor:
    """Lloyd's steps from the cells `cuts` (R, k_max + 1) of `rows` (None: all) until no cut
    moves. An empty cell [p, p) keeps a centroid at x_p, which keeps the centroids sorted;
    cells at n get +inf. The error never increases."""
    xs = data.xs if rows is None else data.xs[rows]
    n = cuts[:, -1]
    c = xs.gather(1, cuts[:, :-1].clamp_max(xs.shape[1] - 1))
    c = torch.where(cuts[:, :-1] < n[:, None], c, torch.inf)  # (R, k_max)
    for _ in range(iters):
        c = _centroids_from_cuts(data.cs, cuts, c, rows)
        new = _cuts_from_centroids(xs, n, c)
        if torch.equal(new, cuts):
            break
        cuts = new
    return cuts


def _sse(data: _Rows, cuts: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors of the cells `cuts` (R, k_max + 1) of each of `rows`: (R,)."""
    sums, counts = _take(data.cs, rows, cuts).diff(dim=1), cuts.diff(dim=1)
    err = _take(data.cs2, rows, cuts).diff(dim=1) - sums * sums / counts.clamp_min(1)
    return torch.where(counts > 0, err, 0.0).sum(dim=1)


def _fill_empty_cells(data: _Rows, k: torch.Tensor, cuts: torch.Tensor) -> torch.Tensor:
    """Cuts (B, k_max + 1) with k_b non-empty cells: the cut of each empty cell goes to the
    cells of largest squared error, each split where its mean falls (Lloyd empties cells in
    sparse tails; this moves them where the error is). Rounds only while a row lacks cells to
    split (rare)."""
    xs, cs, cs2, rank, start = data
    j = torch.arange(cuts.shape[1], device=cuts.device)
    n = cuts[:, -1:]
    while True:
        lo, hi = cuts[:, :-1], cuts[:, 1:]
        missing = k - (hi > lo).sum(dim=1)  # (B,)
        if int(missing.max()) == 0:
            return cuts
        sums, counts = cs.gather(1, hi) - cs.gather(1, lo), (hi - lo).clamp_min(1)
        err = cs2.gather(1, hi) - cs2.gather(1, lo) - sums * sums / counts
        first_run, end_run = rank.gather(1, lo), rank.gather(1, hi)
        err = torch.where(end_run - first_run > 1, err, -torch.inf)  # splittable: >= 2 runs
        order = err.argsort(dim=1, descending=True, stable=True).argsort(dim=1, stable=True)
        split = (order < missing[:, None]) & err.isfinite()  # (B, k_max)
        at = torch.searchsorted(xs, (sums / counts).contiguous())  # first value >= the mean
        r = torch.minimum(torch.maximum(rank.gather(1, at), first_run + 1), end_run - 1)
        new = torch.where(split, start.gather(1, r), n + 1)
        keep = torch.cat([torch.ones_like(n, dtype=torch.bool), hi > lo], dim=1) & (j <= k[:, None])
        merged = torch.cat([torch.where(keep, cuts, n + 1), new], dim=1)  # drop repeated cuts
        cuts = merged.sort(dim=1).values[:, : len(j)].clamp_max(n)


def _refine_cuts(
    data: _Rows,
    k: torch.Tensor,
    cuts: torch.Tensor,
    rows: torch.Tensor,
    level: tuple[float, float, int, int],
    iters: int,
) -> torch.Tensor:
    """Sweeps of the windowed DP of one level, each followed by Lloyd's steps: cuts (B, k_max + 1).

    A row keeps a sweep's result only if its error went down (the DP alone never raises it: the
    current cuts are candidates; Lloyd may empty a cell), and stops once a sweep gains < _TOL.
    rows: (R,) int64 rows to refine; level: (half width, step, band, most sweeps), see _LEVELS.
    """
    half, step, band, sweeps = level
    m = round(half / step)
    grid = torch.arange(-m, m + 1, dtype=torch.float64, device=cuts.device) * step  # (W,)
    cuts = cuts.clone()
    for _ in range(sweeps):
        if rows.numel() == 0:
            break
        km = int(k[rows].max())  # cuts past it are n for all of these rows
        old = cuts[rows, : km + 1]
        cand = _candidate_cuts(data, rows, k[rows], old, grid)  # (R, km, W)
        new = _dp_sweep(data, rows, k[rows], cand, band)
        settled = _lloyd(data, new, min(iters, _POLISH_ITERS), rows)
        emptied = (settled.diff(dim=1) == 0) & (torch.arange(km, device=k.device) < k[rows, None])
        new = torch.where(emptied.any(dim=1, keepdim=True), new, settled)
        err_new, err_old = _sse(data, new, rows), _sse(data, old, rows)
        better = err_new < err_old
        cuts[rows[better], : km + 1] = new[better]
        rows = rows[err_new < err_old * (1.0 - _TOL)]
    return cuts


def _candidate_cuts(
    data: _Rows, rows: torch.Tensor, k: torch.Tensor, cuts: torch.Tensor, grid: torch.Tensor
) -> torch.Tensor:
    """Candidates for cuts 1..k_max of `rows`: (R, k_max, W) int64, ascending along W.

    Candidate d of cut j sits at cluster index u = j + grid[d]: between the current cuts floor(u)
    and the next, linearly in runs of equal values (a cut never splits equal values), within
    runs 1..distinct - 1; an integer offset is exactly a current cut. Cuts from k_r on are n_r.
    cuts: (R, k_max + 1) current, n_r last.
    """
    k_max = cuts.shape[1] - 1
    run = _take(data.rank, rows, cuts).double()  # (R, k_max + 1): the run each cut starts
    j = torch.arange(1, k_max, device=cuts.device)
    u = (j[:, None] + grid).clamp(0.0, k_max)  # (k_max - 1, W); runs past a row's k: distinct
    lo = u.floor().long().clamp_max(k_max - 1)
    r_lo = run[:, lo]  # (R, k_max - 1, W)
    r = (r_lo + (u - lo) * (run[:, lo + 1] - r_lo) + 0.5).floor_().long()
    r = torch.minimum(r.clamp_min_(1), (run[:, -1:, None] - 1).long().clamp_min(1))
    cand = _take(data.start, rows, r)
    n = cuts[:, -1:, None]  # (R, 1, 1)
    cand = torch.where((j[None, :] >= k[:, None])[..., None], n, cand)
    return torch.cat([cand, n.expand(-1, 1, cand.shape[2])], dim=1)


def _dp_sweep(
    data: _Rows, rows: torch.Tensor, k: torch.Tensor, cand: torch.Tensor, band: int
) -> torch.Tensor:
    """Best cuts (R, k_max + 1) among the candidates cand (R, k_max, W): the exact DP on them.

    cost_j[a] = min_b cost_j-1[b] + sse(cand_j-1[b], cand_j[a]) over |b - a| <= band, the sse of
    the segment [b, a) from the prefix sums of `rows`: q - s^2 / count. The transition costs
    are built a few layers at a time (to stay in cache), layer-major.
    """
    r, k_max, w = cand.shape
    s = _take(data.cs, rows, cand).transpose(0, 1).contiguous()  # (k_max, R, W)
    q = _take(data.cs2, rows, cand).transpose(0, 1).contiguous()
    # cuts past a row's k sit at n; virtual positions n + 1, n + 2, ... make those segments
    # count 1 with sum 0 and error 0, so every transition is a real one
    j = torch.arange(1, k_max + 1, device=cand.device)
    virtual = (j[None, :] - k[:, None]).clamp_min(0)[..., None]  # (R, k_max, 1)
    pos = (cand + virtual).double().transpose(0, 1).contiguous()  # (k_max, R, W)
    d = min(band, w - 1)
    # predecessors a - d .. a + d of candidate a as (.., W, 2d + 1) windows; +inf positions out
    # of 0..W-1 give count -inf, masked like every other empty or negative cell
    pad = lambda x, fill: torch.nn.functional.pad(x, (d, d), value=fill)  # noqa: E731
    s_prev, q_prev = (
        pad(s[:-1], 0.0).unfold(2, 2 * d + 1, 1),
        pad(q[:-1], 0.0).unfold(2, 2 * d + 1, 1),
    )
    pos_prev = pad(pos[:-1], torch.inf).unfold(2, 2 * d + 1, 1)
    cost_pad = pad(q[0] - s[0] * s[0] / pos[0], torch.inf)  # (R, W + 2d): first cell [0, a)
    cost, window = cost_pad[:, d : d + w], cost_pad.unfold(1, 2 * d + 1, 1)
    args = torch.empty((k_max - 1, r, w), dtype=torch.long, device=cand.device)
    chunk = max(1, 2**17 // (r * w * (2 * d + 1)))
    for lo in range(1, k_max, chunk):
        hi = min(lo + chunk, k_max)
        count = pos[lo:hi, ..., None] - pos_prev[lo - 1 : hi - 1]  # (C, R, W, 2d + 1)
        ds = s[lo:hi, ..., None] - s_prev[lo - 1 : hi - 1]
        err = q[lo:hi, ..., None] - q_prev[lo - 1 : hi - 1]
        err.addcdiv_(ds.square_(), count, value=-1.0).masked_fill_(count <= 0, torch.inf)
        for t in range(hi - lo):  # cell [b, a) between cut lo + t - 1 and cut lo + t
            torch.min(window + err[t], dim=2, out=(cost, args[lo - 1 + t]))
    args += torch.arange(-d, w - d, device=cand.device)  # window index -> candidate index
    return _backtrack(args, cand, cost.argmin(dim=1))


def _backtrack(args: torch.Tensor, cand: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """Cuts (R, k_max + 1) of the DP path ending in candidate `last` (R,) of cut k_max (all of
    them n); args: (k_max - 1, R, W) best predecessor per candidate. Tiny gathers in a sequential
    loop: numpy's indexing costs ~1 us, torch's ~10 us."""
    arg, where, pick = args.cpu().numpy(), cand.cpu().numpy(), last.cpu().numpy()
    r, k_max, _ = where.shape
    rows = np.arange(r)
    out = np.zeros((r, k_max + 1), dtype=np.int64)
    out[:, k_max] = where[:, -1, 0]
    for t in range(k_max - 1, 0, -1):
        pick = arg[t - 1, rows, pick]
        out[:, t] = where[rows, t - 1, pick]
    return torch.from_numpy(out).to(cand.device)


def _codebook_from_cuts(
    raw: torch.Tensor, xs: torch.Tensor, cs: torch.Tensor, cuts: torch.Tensor
) -> torch.Tensor:
    """Cluster means (B, k_max) float64, +inf past k_b; a cluster of equal values gets that value
    exactly. raw: (B, L) sorted values; xs: raw - row mean; cs: prefix sums of xs."""
    mean = raw[:, :1] - xs[:, :1]  # (B, 1)
    means = _centroids_from_cuts(cs, cuts, torch.zeros_like(cuts[:, 1:], dtype=cs.dtype))
    first = raw.gather(1, cuts[:, :-1].clamp_max(raw.shape[1] - 1))
    last = raw.gather(1, (cuts[:, 1:] - 1).clamp_min(0))
    means = torch.minimum(torch.maximum(means + mean, first), last)  # rounding stays inside
    return torch.where(cuts[:, 1:] > cuts[:, :-1], means, torch.inf)
