"""Batched 1-D k-means against scikit-learn KMeans and the exact DP (kmeans1d), same weights.

    python benchmarks/kmeans.py [--threads 2] [--checkpoint PATH] [--repeats 3]
    python benchmarks/kmeans.py --scale 262144 --bits 4,8 --no-exact   # a much wider MLP

For each bits in 1..8 (k = 2^bits) it clusters every weight tensor: ours in one batched call,
sklearn `KMeans(n_clusters=k, n_init=1, random_state=0)` and `kmeans1d.cluster` per tensor.
Prints time (wall-clock median of the repeats, and ours' median CPU time, which a busy machine
inflates less; sklearn once), total distortion and the ratios, and a floor: the time of only
sorting every tensor and giving each value its cluster index (`floor_seconds`), beside
sklearn's time / 100.
Targets (DESIGN.md): >= 100x faster than sklearn (not met at a NeRF's size: sklearn KMeans on
1-D data with n_init=1 takes 80-900 ms for these 157k values, so 100x leaves 0.8-9 ms, about
the floor itself at 2-5 bits; see the README), no slower than kmeans1d, and
distortion within 0.1% of the exact optimum; plus the slider's budget on one thread: all 12
tensors of a NeRF checkpoint in <= ~50 ms for bits <= 4 and <= ~150 ms at 8 bits.
"""

import argparse
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import kmeans1d
import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nerfcomp.compress.kmeans import distortion, kmeans_1d  # noqa: E402

# (out, in) of the Linear layers of a width-128 NeRF MLP (63 / 27 encoded inputs, skip at 4)
NERF_SHAPES = [(128, 63), *[(128, 128)] * 3, (128, 191), *[(128, 128)] * 3, (1, 128),
               (128, 128), (64, 155), (3, 64)]  # fmt: skip


def load_weights(checkpoint: str | None, scale: int = 0) -> tuple[list[torch.Tensor], str]:
    """Flattened 2-D `*weight` tensors of a safetensors checkpoint, else a seeded stand-in;
    scale > 0: 12 seeded Laplacian tensors of `scale` values each (a much wider MLP)."""
    if scale:
        laplace = torch.distributions.Laplace(0.0, 0.05)
        torch.manual_seed(0)
        weights = [laplace.sample((scale,)) for _ in range(12)]
        return weights, f"seeded Laplacian stand-in, 12 x {scale} values"
    if checkpoint and Path(checkpoint).exists():
        from safetensors.torch import load_file

        state = load_file(checkpoint)
        weights = [t.float().reshape(-1) for key, t in state.items()
                   if key.endswith("weight") and t.dim() == 2]  # fmt: skip
        return weights, checkpoint
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(m * n, generator=g) * (2.0 / n) ** 0.5 for m, n in NERF_SHAPES]
    return weights, "seeded stand-in (width-128 NeRF MLP shapes)"


def timed(fn: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]], repeats: int):
    """(median wall seconds over `repeats` runs, median CPU seconds, result of the last run)."""
    times, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(times), statistics.median(cpu), out


def run_sklearn(weights: list[torch.Tensor], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for w in weights:
        x = w.double().numpy().reshape(-1, 1)
        with warnings.catch_warnings():  # "fewer distinct points than clusters"
            warnings.simplefilter("ignore")
            km = KMeans(n_clusters=min(k, len(x)), n_init=1, random_state=0).fit(x)
        out.append((torch.from_numpy(km.cluster_centers_[:, 0]), torch.from_numpy(km.labels_)))
    return out


def run_exact(weights: list[torch.Tensor], k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    out = []
    for w in weights:
        labels, centroids = kmeans1d.cluster(w.tolist(), min(k, w.numel()))
        out.append((torch.tensor(centroids, dtype=torch.float64), torch.tensor(labels)))
    return out


def floor_seconds(weights: list[torch.Tensor], k: int, repeats: int) -> float:
    """What any sort-based 1-D k-means must at least do: sort each tensor (numpy's vectorised
    sort of float32) and give every value its cluster index (one searchsorted of all values
    into k - 1 boundaries); median seconds. Boundaries: evenly spaced quantiles."""
    xs = [w.float().numpy() for w in weights]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for x in xs:
            srt = np.sort(x)
            cuts = srt[np.linspace(0, len(srt) - 1, k + 1)[1:-1].astype(np.int64)]
            np.searchsorted(cuts, x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def total_distortion(weights, results) -> float:
    return sum(distortion(w, c, i) for w, (c, i) in zip(weights, results, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bits", default="1,2,3,4,5,6,7,8")
    parser.add_argument("--scale", type=int, default=0, help="12 synthetic tensors of N values")
    parser.add_argument("--no-exact", action="store_true", help="skip kmeans1d (slow at scale)")
    args = parser.parse_args()
    if args.threads:  # torch's intra-op threads, and sklearn's OpenMP / BLAS pools alike
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    weights, source = load_weights(args.checkpoint, args.scale)
    sizes = [w.numel() for w in weights]
    print(f"weights: {source}: {len(weights)} tensors, {sum(sizes)} values "
          f"({min(sizes)}..{max(sizes)} per tensor)")  # fmt: skip
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"numpy {np.__version__}")  # fmt: skip
    kmeans_1d(weights, 4)  # warm-up
    print(f"{'bits':>4} {'ours s':>8} {'ours cpu':>9} {'sklearn s':>10} {'exact s':>8} "
          f"{'vs sklearn':>11} {'vs exact':>9} {'ours/opt-1':>11} "
          f"{'sklearn/opt-1':>14} {'floor ms':>9} {'sklearn/100 ms':>15}")  # fmt: skip
    for bits in [int(b) for b in args.bits.split(",")]:
        k = 2**bits
        t_ours, c_ours, ours = timed(lambda k=k: kmeans_1d(weights, k), args.repeats)
        t_skl, _, skl = timed(lambda k=k: run_sklearn(weights, k), 1)
        if args.no_exact:  # distortions then relative to ours
            t_dp, exact = math.nan, ours
        else:
            t_dp, _, exact = timed(
                lambda k=k: run_exact(weights, k), args.repeats if k <= 16 else 1
            )
        d_ours, d_skl, d_dp = (total_distortion(weights, r) for r in (ours, skl, exact))
        floor = floor_seconds(weights, k, max(args.repeats, 5))
        print(f"{bits:>4} {t_ours:>8.3f} {c_ours:>9.3f} {t_skl:>10.3f} {t_dp:>8.3f} "
              f"{t_skl / t_ours:>10.0f}x {t_dp / t_ours:>8.1f}x "
              f"{100 * (d_ours / d_dp - 1):>10.4f}% {100 * (d_skl / d_dp - 1):>13.4f}% "
              f"{1e3 * floor:>9.2f} {10 * t_skl:>15.2f}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
