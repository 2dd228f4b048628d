"""Render speed and network queries: occupancy grid + early termination vs uniform sampling.

    python benchmarks/render.py [--scene primitives] [--size 128] [--threads 2]

Renders every held-out test view of the scene at SIZE×SIZE with the shipped checkpoint,
both ways in one process, and prints median time per view, network queries per ray and
PSNR against the ground truth. The grid is built once per model (timed separately).

A third row evaluates every uniform sample too but drops density at or below the grid's
threshold, sample by sample: the grid treats such density as empty space, and so did
training (its grid culled it, so no gradient ever reached the faint haze the network leaves
there). Uniform sampling shows that haze, which costs it PSNR; with the same rule it
matches the grid renderer, so the query count is compared at equal PSNR.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nerfcomp import metrics, scenes  # noqa: E402
from nerfcomp.evaluate import GRID_THRESHOLD, grid_for  # noqa: E402
from nerfcomp.model import load_checkpoint  # noqa: E402
from nerfcomp.render import RenderSettings, render_image  # noqa: E402


def run(model, views, grid, early_stop: bool, repeats: int) -> dict:
    settings = RenderSettings()
    times, queries, mses = [], 0, []
    for cam, gt in zip(views.cameras, views.images, strict=True):
        for _ in range(repeats):
            t0 = time.perf_counter()
            img, stats = render_image(
                model, cam.c2w, cam.height, cam.width, cam.focal, settings, grid, early_stop
            )
            times.append(time.perf_counter() - t0)
        queries += stats["queries"]
        mses.append(torch.mean((img.double() - gt.double()) ** 2).item())
    n_rays = len(views.cameras) * views.cameras[0].height * views.cameras[0].width
    return {
        "median_s": statistics.median(times),
        "queries_per_ray": queries / n_rays,
        "psnr": metrics.mse_to_psnr(sum(mses) / len(mses)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="primitives")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(scenes.get_scene(args.scene).checkpoint)
    views = scenes.views(args.scene, "test", args.size)
    t0 = time.perf_counter()
    grid = grid_for(model)
    grid_s = time.perf_counter() - t0
    ours = run(model, views, grid, early_stop=True, repeats=args.repeats)
    uniform = run(model, views, None, early_stop=False, repeats=1)

    def below_threshold_dropped(x, d):  # what the grid's rule does, sample by sample
        rgb, sigma = model(x, d)
        return rgb, torch.where(sigma > GRID_THRESHOLD, sigma, torch.zeros_like(sigma))

    dense = run(below_threshold_dropped, views, None, early_stop=False, repeats=1)
    print(
        f"scene {args.scene}, {len(views.cameras)} test views at {args.size}×{args.size}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"occupancy grid {grid.resolution}³ from the network: {grid_s:.2f} s once per model, "
        f"{100 * grid.fraction():.1f}% occupied"
    )
    print(f"{'renderer':<28}{'s/view (median)':>16}{'queries/ray':>13}{'PSNR dB':>9}")
    rows = [
        ("grid + early termination", ours),
        ("uniform, no grid", uniform),
        (f"uniform, σ ≤ {GRID_THRESHOLD:g} dropped", dense),
    ]
    for name, r in rows:
        print(f"{name:<28}{r['median_s']:>16.3f}{r['queries_per_ray']:>13.2f}{r['psnr']:>9.3f}")
    print(
        f"queries: {uniform['queries_per_ray'] / ours['queries_per_ray']:.1f}× fewer; "
        f"speed: {uniform['median_s'] / ours['median_s']:.1f}× faster; "
        f"PSNR difference {ours['psnr'] - uniform['psnr']:+.3f} dB against uniform, "
        f"{ours['psnr'] - dense['psnr']:+.3f} dB against uniform with the grid's density rule"
    )


if __name__ == "__main__":
    main()
