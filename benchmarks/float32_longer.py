"""The shipped float32 NeRF trained on as long as a refinement: tells training from compression.

    python benchmarks/float32_longer.py --scene blocks --steps 9000 [--threads 1]

ADMM refinement trains the model while it compresses it (``admm_steps`` L-steps plus half as
many fine-tuning steps, Adam decaying from ``admm.LR`` to ``admm.LR_FINAL``, 1,024 training
rays a step). This runs the same optimizer, decay, rays and batch on the float32 checkpoint,
uncompressed, for ``--steps`` steps, and prints its held-out PSNR beside the checkpoint's: the
PSNR a compressed file should be compared with to see what compression alone costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nerfcomp import scenes  # noqa: E402
from nerfcomp.compress.admm import LR, LR_FINAL  # noqa: E402
from nerfcomp.evaluate import evaluate_model, grid_for  # noqa: E402
from nerfcomp.model import load_checkpoint  # noqa: E402
from nerfcomp.train import TrainConfig, set_lr, train_step  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="blocks", choices=list(scenes.SCENES))
    p.add_argument("--steps", type=int, default=9000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(scenes.get_scene(args.scene).checkpoint)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    before = evaluate_model(model.eval(), args.scene)["psnr"]
    rays = scenes.views(args.scene, "train").rays()
    cfg = TrainConfig(args.scene, steps=args.steps, batch_rays=1024, lr=LR, lr_final=LR_FINAL)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    grid = grid_for(model)
    t0 = time.perf_counter()
    for i in range(args.steps):
        set_lr(opt, cfg.lr_at(i))
        train_step(model, opt, rays, grid, cfg, g)
        if i % 1200 == 1199:  # the occupancy grid follows the density, as in refine
            grid = grid_for(model)
    after = evaluate_model(model.eval(), args.scene)["psnr"]
    out = {"scene": args.scene, "steps": args.steps, "psnr_checkpoint": before}
    out |= {"psnr_trained_on": after, "seconds": round(time.perf_counter() - t0)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
