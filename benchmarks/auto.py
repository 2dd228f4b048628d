"""Automatic per-layer allocation: time, and files against uniform settings and LC ranks.

    python benchmarks/auto.py [--scenes primitives blocks glossy] [--threads 2] [--repeats 3]
                              [--drop 1.0]

For each scene, on a fresh engine each time (checkpoint loading, SVDs, the original's grid
and score included), the instant auto allocation for a ``--drop`` % PSNR target
(``Engine.auto``): median wall time of the repeats (issue 6 target: <= 10 s on 2 CPU cores).
Then, from real files scored on every held-out view:

- the allocation: bytes and PSNR;
- the best uniform setting of the scene's sweep table (assets/SCENE.sweep.json, instant and
  ADMM-refined points) at the same or higher PSNR, and the best instant one;
- LC-style rank selection with a storage criterion (Idelbayev & Carreira-Perpinan 2020,
  ``allocate.lc_rank_selection``; float32 factors, as LC stores them): per-layer ranks for
  alphas on a log grid, each compressed and scored; the smallest that meets the target.

ADMM-refined auto allocations take minutes; they come from the CLI
(``python -m nerfcomp auto --scene S --target-psnr-drop 1 --admm-steps N``), see README.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from nerfcomp.compress import CompressionConfig, LayerConfig  # noqa: E402
from nerfcomp.compress.allocate import lc_rank_selection  # noqa: E402
from nerfcomp.compress.engine import Engine  # noqa: E402
from nerfcomp.tables import smallest_uniform  # noqa: E402

ALPHAS = [10.0 ** (-6 + i / 8) for i in range(25)]  # 1e-6 .. 1e-3, 8 per decade


def lc_best(eng: Engine, scene: str, floor: float) -> tuple[dict | None, int]:
    """The smallest file of LC rank selection (float32) with PSNR >= floor over ALPHAS;
    prints every alpha's file."""
    base = eng.base(scene)
    best, tried, seen = None, 0, []
    for alpha in sorted(ALPHAS):
        ranks = lc_rank_selection(base.svds, alpha, bits=32)
        layers = {n: LayerConfig(rank=r or 0) for n, r in ranks.items()}
        cfg = CompressionConfig(bits=32, layers=layers)
        size, psnr = eng.compress(scene, cfg).bytes, eng.score(scene, cfg)["psnr"]
        tried += 1
        seen.append(f"{alpha:.1e}: {size / 1e3:.0f} KB {psnr:.2f} dB")
        if psnr >= floor and (best is None or size < best["bytes"]):
            kept = sorted(r for r in ranks.values() if r is not None)
            best = {"alpha": alpha, "bytes": size, "psnr": psnr, "ranks": kept}
    print("LC rank selection, alpha: file", "; ".join(seen))
    return best, tried


def fmt(p: dict | None) -> str:
    if p is None:
        return "none reaches it"
    admm = f", ADMM {p['admm_steps']}" if p.get("admm_steps") else ""
    return f"{p['bits']} bit, rank {p.get('rank') or 'full'}, prune {p['prune']:g}{admm}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", nargs="+", default=["primitives", "blocks", "glossy"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--drop", type=float, default=1.0, help="target PSNR drop, percent")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, target drop {args.drop}%")
    for scene in args.scenes:
        times = []
        for _ in range(args.repeats):
            eng = Engine("cpu")
            t0 = time.perf_counter()
            found = eng.auto(scene, target_psnr_drop=args.drop)
            times.append(time.perf_counter() - t0)
        floor = found.psnr_original * (1 - args.drop / 100)
        print(f"\n## {scene}: original {found.psnr_original:.3f} dB, target >= {floor:.3f} dB")
        print(f"instant auto allocation: median {statistics.median(times):.2f} s "
              f"(runs {', '.join(f'{t:.2f}' for t in times)}; target <= 10 s), "
              f"{len(found.rounds)} allocations verified")  # fmt: skip
        sweep = json.loads((ROOT / "assets" / f"{scene}.sweep.json").read_text())["points"]
        rows = [("auto (instant)", found.bytes, found.psnr, "per layer: " + json.dumps(
            {n: lc["bits"] for n, lc in found.config.to_dict()["layers"].items()}
        ) + f", default {found.config.bits} bit")]  # fmt: skip
        for label, admm in (("best uniform, any", True), ("best uniform, instant", False)):
            u = smallest_uniform(sweep, found.psnr, admm)
            rows.append((label, u and u["bytes"], u and u["psnr"], fmt(u)))
        lc, tried = lc_best(eng, scene, floor)
        rows.append(("LC rank selection (fp32)", lc and lc["bytes"], lc and lc["psnr"],
                     f"alpha {lc['alpha']:.1e}, ranks {lc['ranks']}" if lc
                     else f"none of {tried} alphas meets the target"))  # fmt: skip
        print(f"| {'method':<26} | {'bytes':>8} | {'ratio':>6} | {'PSNR':>7} | setting |")
        print(f"|{'-' * 28}|{'-' * 10}|{'-' * 8}|{'-' * 9}|---|")
        original = eng.base(scene).bytes_original
        for label, size, psnr, what in rows:
            ratio = f"{original / size:.2f}x" if size else "-"
            shown = f"{psnr:.3f}" if psnr else "-"
            print(f"| {label:<26} | {size or '-':>8} | {ratio:>6} | {shown:>7} | {what} |")
        for label, size, _, _ in rows[1:]:
            if size:
                print(f"auto's file vs {label}: {100 * (found.bytes / size - 1):+.1f}% bytes")


if __name__ == "__main__":
    main()
