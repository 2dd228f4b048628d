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
up to several % worse, with a few clusters too many in one region and too few in another. A
windowed dynamic program then moves all cuts jointly: the exact DP of Ckmeans restricted to ~140
candidates per cut (+-4 clusters on a 1/16-cluster grid, and the neighbouring cuts), coarse to
fine, repeated until no cut moves. Measured within 0.03% of the optimum on Gaussian, Laplacian,
Student-t and pruned samples of 1k-24k values for k = 2..256 (benchmarks/kmeans.py).
"""

from collections.abc import Sequence

import torch

__all__ = ["distortion", "kmeans_1d"]


def kmeans_1d(
    values: Sequence[torch.Tensor], n_clusters: int | Sequence[int], iters: int = 50
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cluster each 1-D tensor in `values` into at most n_clusters centroids.

    values: tensors of shape (n_i,), finite; flattened if not 1-D; all on one device.
    n_clusters: one k for all tensors, or one per tensor (each >= 1).
    iters: the most Lloyd steps; stops early once no row's assignment changes.
    Returns per input: (codebook: (k_i,) float32 sorted ascending, indices: (n_i,) int64 into
    codebook), k_i = min(n_clusters_i, number of distinct values). Every codebook entry is used by
    at least one value (empty clusters are re-seeded by splitting the worst cluster). Deterministic.
    """
    if len(values) == 0:
        return []
    ks = [int(n_clusters)] * len(values) if isinstance(n_clusters, int) else list(n_clusters)
    if len(ks) != len(values) or min(ks) < 1:
        raise ValueError(f"n_clusters must be >= 1 and one per tensor, got {n_clusters}")
    xs, perm, n = _sorted_rows(values)  # (B, L) float64 +inf padded, (B, L) int64, (B,) int64
    mean = _prefix_sums(xs).gather(1, n[:, None]) / n[:, None]  # (B, 1)
    raw, xs = xs, xs - mean  # centred: smaller prefix sums, less cancellation in q - s^2 / count
    cs, cs2 = _prefix_sums(xs), _prefix_sums(xs * xs)  # (B, L + 1)
    rank, start = _runs(xs, n)  # (B, L + 1): runs of equal values before p; where run r starts
    distinct = rank.gather(1, n[:, None]).squeeze(1)  # (B,)
    k = torch.minimum(torch.tensor(ks, device=xs.device), distinct)  # (B,)
    c = _init_centroids(xs, n, k, distinct, start)  # (B, k_max)
    cuts = _lloyd(xs, cs, n, c, iters)  # (B, k_max + 1)
    cuts = _fill_empty_clusters(xs, cs, cs2, cuts, k.tolist())
    cuts = _refine_cuts(cs, cs2, rank, start, n, k, cuts, active=(k > 1) & (k < distinct))
    codebook = _codebook_from_cuts(raw, cs, cuts, mean)  # (B, k_max)
    labels = _labels_from_cuts(cuts, xs.shape[1])  # (B, L), cluster of each sorted position
    indices = torch.empty_like(labels).scatter_(1, perm, labels)  # back to the input order
    return [
        (codebook[i, :ki].float(), indices[i, :ni])
        for i, (ki, ni) in enumerate(zip(k.tolist(), n.tolist(), strict=True))
    ]


def distortion(values: torch.Tensor, codebook: torch.Tensor, indices: torch.Tensor) -> float:
    """Sum of squared errors of `values` (n,) reconstructed as `codebook[indices]`, in float64."""
    err = values.reshape(-1).double() - codebook.double()[indices.reshape(-1)]
    return float((err * err).sum())


def _sorted_rows(values: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad the tensors into rows of +inf and sort each row once.

    Returns xs: (B, L) float64 ascending with +inf past n_i, perm: (B, L) int64 with xs[b] =
    padded[b][perm[b]], n: (B,) int64 lengths.
    """
    device = values[0].device
    flat = [v.detach().reshape(-1).to(device, torch.float64) for v in values]
    if min(v.numel() for v in flat) < 1:
        raise ValueError("every tensor needs at least one value")
    n = torch.tensor([v.numel() for v in flat], device=device)
    padded = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=float("inf"))
    padded = torch.nn.functional.pad(padded, (0, max(0, 2 - padded.shape[1])), value=float("inf"))
    xs, perm = torch.sort(padded, dim=1, stable=True)  # stable: deterministic ties
    return xs.contiguous(), perm, n


def _runs(xs: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of equal values of the sorted rows xs (B, L).

    rank: (B, L + 1), rank[b, p] = number of runs that start before position p (p <= n_b), so
    rank[b, n_b] is the number of distinct values; start: (B, L + 1), start[b, r] = position
    where run r starts, n_b from r = distinct on.
    """
    b, length = xs.shape
    valid = torch.arange(length, device=xs.device) < n[:, None]
    new = torch.ones_like(valid)
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]
    new &= valid  # (B, L): a run starts here
    rank = torch.nn.functional.pad(new.long().cumsum(dim=1), (1, 0))
    start = n[:, None].expand(b, length + 2).clone()  # last column: where non-starts go
    slot = torch.where(new, rank[:, :-1], length + 1)
    start.scatter_(1, slot, torch.arange(length, device=xs.device).expand(b, length))
    return rank, start[:, : length + 1]


def _prefix_sums(xs: torch.Tensor) -> torch.Tensor:
    """cs: (B, L + 1) float64, cs[b, j] = sum of the first j values of row b, +inf padding as 0."""
    finite = torch.where(torch.isfinite(xs), xs, torch.zeros_like(xs))
    return torch.nn.functional.pad(finite.cumsum(dim=1), (1, 0))


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
    valid = torch.arange(length, device=xs.device) < n[:, None]  # (B, L)
    gaps = (xs[:, 1:] - xs[:, :-1]).nan_to_num(0.0, posinf=0.0)  # (B, L - 1), 0 into padding
    g = torch.nn.functional.pad(gaps.pow(2.0 / 3.0).cumsum(dim=1), (1, 0))  # (B, L)
    g = torch.where(valid, g, torch.full_like(g, float("inf")))
    total = g.gather(1, (n - 1)[:, None])  # (B, 1)
    t = torch.arange(k_max, device=xs.device, dtype=torch.float64)
    target = (t + 0.5) / k[:, None] * total  # (B, k_max)
    hi = torch.searchsorted(g, target.contiguous()).clamp(1, length - 1)  # first g >= target
    hi = torch.minimum(hi, (n - 1).clamp_min(1)[:, None])
    lo = hi - 1
    g_lo, g_hi = g.gather(1, lo), g.gather(1, hi)
    x_lo, x_hi = xs.gather(1, lo), xs.gather(1, hi)
    frac = ((target - g_lo) / (g_hi - g_lo)).nan_to_num(0.0).clamp(0.0, 1.0)
    c = x_lo + frac * (x_hi - x_lo).nan_to_num(0.0, posinf=0.0)
    each_value = xs.gather(1, start[:, :k_max].clamp_max(length - 1))  # run r's value
    c = torch.where((k == distinct)[:, None], each_value, c)
    return torch.where(t < k[:, None], c, torch.full_like(c, float("inf")))


def _cuts_from_centroids(xs: torch.Tensor, n: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid cells as cut positions: (B, k_max + 1) int64, cell j = [cut_j, cut_j+1).

    xs: (B, L) sorted +inf padded; c: (B, k_max) sorted, +inf padded. The boundaries are the
    midpoints of neighbouring centroids; an +inf boundary lands at n_b.
    """
    mid = 0.5 * (c[:, 1:] + c[:, :-1])  # (B, k_max - 1)
    pos = torch.searchsorted(xs, mid.contiguous())
    pos = torch.minimum(pos, n[:, None])
    zero = torch.zeros_like(n)[:, None]
    return torch.cat([zero, pos, n[:, None]], dim=1)


def _centroids_from_cuts(cs: torch.Tensor, cuts: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mean of each cell: (B, k_max) float64; an empty cell keeps its `old` centroid."""
    sums = cs.gather(1, cuts).diff(dim=1)  # (B, k_max)
    counts = cuts.diff(dim=1)
    return torch.where(counts > 0, sums / counts.clamp_min(1), old)


def _lloyd(
    xs: torch.Tensor, cs: torch.Tensor, n: torch.Tensor, c: torch.Tensor, iters: int
) -> torch.Tensor:
    """Lloyd's steps on all rows at once until no cut moves; returns cuts (B, k_max + 1)."""
    cuts = _cuts_from_centroids(xs, n, c)
    for _ in range(iters):
        c = _centroids_from_cuts(cs, cuts, c)
        new = _cuts_from_centroids(xs, n, c)
        if torch.equal(new, cuts):
            break
        cuts = new
    return cuts


def _fill_empty_clusters(
    xs: torch.Tensor, cs: torch.Tensor, cs2: torch.Tensor, cuts: torch.Tensor, ks: list[int]
) -> torch.Tensor:
    """Give every row exactly k_b non-empty cells, splitting the cell of largest squared error.

    Empty cells are rare (sparse values with many clusters), so this loops over the rows that
    have them. Returns cuts (B, k_max + 1) with k_b strictly increasing cells, then n_b repeated.
    """
    counts = cuts.diff(dim=1)
    k_t = torch.tensor(ks, device=cuts.device)
    used = (counts > 0).sum(dim=1)
    rows = torch.nonzero(used < k_t).flatten().tolist()
    if not rows:
        return cuts
    cuts = cuts.clone()
    for b in rows:
        row = torch.unique_consecutive(cuts[b, : ks[b] + 1]).tolist()
        while len(row) - 1 < ks[b]:
            row = _split_worst_cell(xs[b], cs[b], cs2[b], row)
        cuts[b, : ks[b] + 1] = torch.tensor(row, device=cuts.device)
    return cuts


def _split_worst_cell(
    x: torch.Tensor, cs: torch.Tensor, cs2: torch.Tensor, row: list[int]
) -> list[int]:
    """Split the cell of `row` (cut positions) with the largest squared error at its best cut.

    x: (L,) sorted values; cs, cs2: (L + 1,) prefix sums of x and x^2.
    """
    edges = torch.tensor(row, device=x.device)
    sums, sq, cnt = cs[edges].diff(), cs2[edges].diff(), edges.diff().double()
    sse = sq - sums * sums / cnt
    distinct_cell = x[edges[1:] - 1] > x[edges[:-1]]  # more than one distinct value
    sse = torch.where(distinct_cell, sse.clamp_min(0.0), torch.full_like(sse, -1.0))
    j = int(sse.argmax())
    lo, hi = row[j], row[j + 1]
    p = torch.arange(lo + 1, hi, device=x.device)  # candidate cuts inside the cell
    left_n, right_n = (p - lo).double(), (hi - p).double()
    left_s, right_s = cs[p] - cs[lo], cs[hi] - cs[p]
    gain = left_s * left_s / left_n + right_s * right_s / right_n  # larger = smaller error
    gain = torch.where(x[p] > x[p - 1], gain, torch.full_like(gain, -float("inf")))
    return sorted([*row, int(p[gain.argmax()])])


# windowed DP schedule, measured against the exact DP: the first level spans +-_COARSE_HALF *
# _COARSE_RES = +-4 clusters on a grid of 1/16 cluster (a 1/4 grid misjudges which basin is best
# by up to 1%; +-2 clusters misses shifts of up to 5 clusters at k = 256), at most _COARSE_SWEEPS
# sweeps; each later level is _FINER x finer with +-_FINE_HALF candidates, down to stride 1.
_COARSE_HALF, _COARSE_RES, _COARSE_SWEEPS, _FINE_HALF, _FINE_SWEEPS = 64, 1 / 16, 3, 24, 6
_NEIGHBOURS, _FINER = 4, 8


def _refine_cuts(
    cs: torch.Tensor,
    cs2: torch.Tensor,
    rank: torch.Tensor,
    start: torch.Tensor,
    n: torch.Tensor,
    k: torch.Tensor,
    cuts: torch.Tensor,
    active: torch.Tensor,
) -> torch.Tensor:
    """Coarse-to-fine windowed dynamic programming on the cut positions: (B, k_max + 1) int64.

    Lloyd stops in a local optimum, often with a few clusters too many in one region and too few
    in another. Each sweep solves the exact 1-D k-means DP restricted to 2 * half + 1 candidates
    per cut, `stride` runs of equal values apart around the current cut (for distinct values a
    run is one value), and repeats until no cut moves (or `sweeps`); then the next, finer level.
    A sweep never increases the error (the current cuts are candidates).
    cs, cs2: (B, L + 1) prefix sums of the sorted x, x^2; rank, start: from `_runs`;
    active: (B,) rows to refine.
    """
    cuts = cuts.clone()
    rows = torch.nonzero(active).flatten()
    res, half, sweeps = _COARSE_RES, _COARSE_HALF, _COARSE_SWEEPS
    while rows.numel() > 0:
        size = rank[rows].gather(1, cuts[rows]).diff(dim=1).double()  # (R, k_max) in runs
        # candidates left of a cut are spaced by a fraction of the cluster on its left, and so on
        stride = (res * torch.stack([size[:, :-1], size[:, 1:]], dim=2)).long().clamp_min(1)
        todo = torch.arange(rows.numel(), device=cuts.device)  # into rows: still moving
        for _ in range(sweeps):
            r = rows[todo]
            km = int(k[r].max())  # cuts past it are n for all of these rows
            old = cuts[r, : km + 1]
            new = _dp_sweep(
                cs[r], cs2[r], rank[r], start[r], n[r], k[r], old, stride[todo, : km - 1], half
            )
            cuts[r, : km + 1] = new
            todo = todo[(new != old).any(dim=1)]
            if todo.numel() == 0:
                break
        rows = rows[(stride > 1).flatten(1).any(dim=1)]
        res, half, sweeps = res / _FINER, _FINE_HALF, _FINE_SWEEPS
    return cuts


def _dp_sweep(
    cs: torch.Tensor,
    cs2: torch.Tensor,
    rank: torch.Tensor,
    start: torch.Tensor,
    n: torch.Tensor,
    k: torch.Tensor,
    cuts: torch.Tensor,
    stride: torch.Tensor,
    half: int,
) -> torch.Tensor:
    """Best cuts (B, k_max + 1) among 2 * half + 1 candidates per cut: the exact DP on a window.

    cost_t[a] = min_b cost_t-1[b] + sse(cand_t-1[b], cand_t[a]), sse of the segment [b, a) from
    the prefix sums: q - s^2 / count. stride: (B, k_max - 1, 2) spacing of the candidates left
    and right of each cut.
    """
    cand = _candidate_cuts(rank, start, n, k, cuts, stride, half)  # (B, k_max, W): cuts 1..k_max
    b, k_max, w = cand.shape
    flat = cand.reshape(b, -1)
    s = cs.gather(1, flat).reshape(cand.shape)
    q = cs2.gather(1, flat).reshape(cand.shape)
    # cuts past a row's k sit at n; virtual positions n + 1, n + 2, ... make those segments
    # count 1 with sum 0 and error 0, so every transition is a real one
    j = torch.arange(1, k_max + 1, device=cand.device)
    pos = cand.double() + (j[None, :] - k[:, None]).clamp_min(0)[..., None]
    cost = (q[:, 0] - s[:, 0] ** 2 / pos[:, 0]).masked_fill(cand[:, 0] == 0, torch.inf)  # (B, W)
    args = torch.zeros((b, k_max, w), dtype=torch.long, device=cand.device)
    for t in range(1, k_max):
        count = pos[:, t, :, None] - pos[:, t - 1, None, :]  # (B, W, W): segment [b, a)
        ds = s[:, t, :, None] - s[:, t - 1, None, :]
        total = q[:, t, :, None] - (q[:, t - 1] - cost)[:, None, :]
        total.addcdiv_(ds * ds, count, value=-1.0).masked_fill_(count <= 0, torch.inf)
        cost, args[:, t] = total.min(dim=2)
    pick = torch.zeros(b, dtype=torch.long, device=cand.device)  # cut k_max: every candidate is n
    new = [cand[:, -1, 0]]
    for t in range(k_max - 1, 0, -1):
        pick = args[:, t].gather(1, pick[:, None])
        new.append(cand[:, t - 1].gather(1, pick).squeeze(1))
        pick = pick.squeeze(1)
    new.append(torch.zeros_like(n))
    return torch.stack(new[::-1], dim=1)


def _candidate_cuts(
    rank: torch.Tensor,
    start: torch.Tensor,
    n: torch.Tensor,
    k: torch.Tensor,
    cuts: torch.Tensor,
    stride: torch.Tensor,
    half: int,
) -> torch.Tensor:
    """Candidates for cuts 1..k_max: (B, k_max, 2 * half + 1 + 2 * _NEIGHBOURS) int64.

    The starts of the runs of equal values (a cut never splits equal values) `stride` * (-half..
    half) runs from the cut (the left stride below it), within runs 1..distinct - 1; and the
    current positions of the _NEIGHBOURS cuts on each side (a cluster moved far away: every cut
    between takes its neighbour's place). Cuts from k_b on are n_b.
    """
    b = cuts.shape[0]
    offset = torch.arange(-half, half + 1, device=cuts.device)
    step = torch.where(offset < 0, stride[:, :, :1], stride[:, :, 1:])  # (B, k_max - 1, 2h + 1)
    run = rank.gather(1, cuts[:, 1:-1])[..., None] + step * offset
    last_run = (rank.gather(1, n[:, None]) - 1).clamp_min(1)[..., None]  # (B, 1, 1)
    run = torch.minimum(run.clamp_min(1), last_run)
    cand = start.gather(1, run.reshape(b, -1)).reshape(run.shape)
    shift = torch.arange(-_NEIGHBOURS, _NEIGHBOURS + 1, device=cuts.device)
    j = torch.arange(1, cuts.shape[1] - 1, device=cuts.device)
    near = (j[:, None] + shift[shift != 0]).clamp(0, cuts.shape[1] - 1)  # (k_max - 1, 2 * D)
    cand = torch.cat([cand, cuts[:, near]], dim=2)  # (B, k_max - 1, W)
    cand = torch.where((j[None, :] >= k[:, None])[..., None], n[:, None, None], cand)
    last = n[:, None, None].expand(-1, 1, cand.shape[2])
    return torch.cat([cand, last], dim=1)


def _codebook_from_cuts(
    raw: torch.Tensor, cs: torch.Tensor, cuts: torch.Tensor, mean: torch.Tensor
) -> torch.Tensor:
    """Cluster means (B, k_max) float64, +inf past k_b; a cluster of equal values gets that value
    exactly. raw: (B, L) sorted values; cs: prefix sums of raw - mean (B, 1)."""
    means = _centroids_from_cuts(cs, cuts, torch.full_like(cuts[:, 1:], 0.0, dtype=cs.dtype))
    first = raw.gather(1, cuts[:, :-1].clamp_max(raw.shape[1] - 1))
    last = raw.gather(1, (cuts[:, 1:] - 1).clamp_min(0))
    means = torch.minimum(torch.maximum(means + mean, first), last)  # rounding stays inside
    return torch.where(cuts[:, 1:] > cuts[:, :-1], means, torch.inf)


def _labels_from_cuts(cuts: torch.Tensor, length: int) -> torch.Tensor:
    """Cell of each sorted position: (B, L) int64 (positions past n_b get k_b - 1 or more)."""
    pos = torch.arange(length, device=cuts.device).expand(cuts.shape[0], length).contiguous()
    inner = cuts[:, 1:-1].contiguous()  # (B, k_max - 1)
    return torch.searchsorted(inner, pos, right=True)
