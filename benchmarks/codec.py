"""How close the .nrc file comes to the entropy bound of what it stores.

    python benchmarks/codec.py [--checkpoint PATH] [--threads 2] [--layers]

For bits 8/4/3/2, without and with pruning 0.5 and with rank 32, it compresses a model, encodes
it and prints: file bytes, the entropy bound (Σ over symbol streams of n·H(empirical symbol
distribution)/8, plus every byte that is not a symbol stream: header, codebooks, raw values,
biases, CRC), the overhead over that bound (target ≤ 5%, DESIGN.md), the ratio to float32, and
the bytes by part. The model is a NeRF checkpoint (--checkpoint) or a seeded stand-in: an
nn.Sequential of width-128 Linear layers with Laplace-distributed weights (trained MLP weights are
peaked and heavy-tailed, unlike a fresh uniform init).
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nerfcomp.compress import (  # noqa: E402
    CompressionConfig,
    compress,
    encode,
    entropy_bound,
    size_breakdown,
)
from nerfcomp.compress.codec import PARTS  # noqa: E402

CONFIGS = [
    CompressionConfig(bits=b, prune=p, rank=r)
    for b in (8, 4, 3, 2)
    for p, r in ((0.0, None), (0.5, None), (0.0, 32), (0.5, 32))
]


def stand_in(seed: int = 0) -> nn.Module:
    """63 → 128 ×7 → 4, ReLU, weights ~ Laplace(0, 0.03), biases ~ N(0, 0.01²)."""
    g = torch.Generator().manual_seed(seed)
    dims = [63] + [128] * 7 + [4]
    mods: list[nn.Module] = []
    for n_in, n_out in zip(dims[:-1], dims[1:], strict=True):
        lin = nn.Linear(n_in, n_out)
        with torch.no_grad():
            u = torch.rand(n_out, n_in, generator=g) - 0.5
            lin.weight.copy_(-0.03 * u.sign() * torch.log1p(-2 * u.abs()))
            lin.bias.copy_(0.01 * torch.randn(n_out, generator=g))
        mods += [lin, nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


def load_model(checkpoint: str | None) -> tuple[nn.Module, str]:
    if checkpoint:
        from nerfcomp.model import load_checkpoint

        return load_checkpoint(checkpoint)[0], checkpoint
    return stand_in(), "seeded stand-in MLP 63→128×7→4 (Laplace weights)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a NeRF safetensors checkpoint")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", action="store_true", help="print bytes per layer and part")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, what = load_model(args.checkpoint)
    fp32 = len(encode(compress(model, CompressionConfig(bits=32))))
    print(f"model: {what}; float32 file: {fp32} B")
    short = {
        "indices": "idx",
        "codebooks": "cb",
        "factors": "fac",
        "masks": "mask",
        "biases": "bias",
        "dense": "dense",
        "params": "par",
        "header": "hdr",
    }
    cols = " ".join(f"{short[p]:>6}" for p in PARTS)
    print(
        f"{'bits':>4} {'prune':>5} {'rank':>4} {'bytes':>8} {'bound':>9} {'over%':>6} "
        f"{'ratio':>6} {'s':>5} | {cols}"
    )
    worst = 0.0
    for cfg in CONFIGS:
        t = time.perf_counter()
        small = compress(model, cfg)
        n, bound = len(encode(small)), entropy_bound(small)
        seconds = time.perf_counter() - t
        parts = size_breakdown(small)
        totals = {p: sum(row[p] for row in parts.values()) for p in PARTS}
        over = 100 * (n / bound - 1)
        worst = max(worst, over)
        print(
            f"{cfg.bits:>4} {cfg.prune:>5.2f} {cfg.rank or '-':>4} {n:>8} {bound:>9.0f} "
            f"{over:>6.2f} {fp32 / n:>6.1f} {seconds:>5.2f} | "
            + " ".join(f"{totals[p]:>6}" for p in PARTS)
        )
        if args.layers:
            for layer, row in parts.items():
                print(f"{'':>45}{layer:>8} | " + " ".join(f"{row[p]:>6}" for p in PARTS))
    print(f"worst overhead over the entropy bound: {worst:.2f}% (target ≤ 5%)")


if __name__ == "__main__":
    main()
