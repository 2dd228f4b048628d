"""Warm instant-path recompression: what one slider move costs the engine.

    python benchmarks/recompress.py [--scene primitives] [--threads 2] [--repeats 5]

The engine is warmed first (checkpoint loaded, every layer's SVD, the pruned / factorized
tensors of each rank and prune setting). Then, for each setting, the k-means results and the
assembled model are dropped from the caches and ``Engine.compress`` runs again: batched
k-means of every stored tensor, the compressed layers, and the entropy-coded file. That is the
work a bits change does on a warm app (DESIGN.md target: ≤ 50 ms for the whole MLP on 2 CPU
cores). Prints the median wall time per setting with its k-means share, and the file size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nerfcomp.compress import CompressionConfig  # noqa: E402
from nerfcomp.compress import engine as engine_mod  # noqa: E402
from nerfcomp.compress.engine import Engine  # noqa: E402

SETTINGS = [
    *[CompressionConfig(bits=b) for b in (8, 6, 5, 4, 3, 2, 1)],
    CompressionConfig(bits=4, rank=32),
    CompressionConfig(bits=4, prune=0.3),
    CompressionConfig(bits=16),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="primitives")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    eng = Engine("cpu")
    for cfg in SETTINGS:  # warm: base, SVDs, the tensors to store of each rank / prune
        eng.compress(args.scene, cfg)

    kmeans_s = []
    real = engine_mod.quantize_stored

    def timed_kmeans(*a, **kw):
        t0 = time.perf_counter()
        out = real(*a, **kw)
        kmeans_s.append(time.perf_counter() - t0)
        return out

    engine_mod.quantize_stored = timed_kmeans
    print(f"scene {args.scene}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'setting':<28}{'ms':>8}{'k-means ms':>12}{'bytes':>9}")
    all_ms = []
    for cfg in SETTINGS:
        times, km = [], []
        for _ in range(args.repeats):
            eng._parts = engine_mod.ByteLRU(eng._parts.max_bytes)  # forget k-means results
            eng._models = engine_mod.ByteLRU(eng._models.max_bytes)  # and assembled models
            kmeans_s.clear()
            t0 = time.perf_counter()
            comp = eng.compress(args.scene, cfg)
            times.append(time.perf_counter() - t0)
            km.append(sum(kmeans_s))
        ms = 1e3 * statistics.median(times)
        all_ms.append(ms)
        label = f"bits {cfg.bits}, rank {cfg.rank or 'full'}, prune {cfg.prune:g}"
        print(f"{label:<28}{ms:>8.1f}{1e3 * statistics.median(km):>12.1f}{comp.bytes:>9}")
    print(f"median over settings {statistics.median(all_ms):.1f} ms, worst {max(all_ms):.1f} ms "
          f"(target ≤ 50 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
