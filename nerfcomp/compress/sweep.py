"""The rate–distortion table of a scene: every point of a bits × rank × prune grid on the
instant path, then ADMM-refined points along its Pareto frontier.

The table is a JSON file rewritten atomically after every point, so an interrupted sweep
resumes where it stopped and never recomputes a finished point. Sizes are the bytes of the
encoded file; PSNR is over all held-out test views. An ADMM point records the learning-rate
schedule it was refined with (``admm_lr``: first and last rate); a point refined with another
schedule than today's default is measured again, and the new measurement replaces it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path

from nerfcomp import scenes
from nerfcomp.compress import admm
from nerfcomp.compress.config import CompressionConfig
from nerfcomp.compress.engine import Engine
from nerfcomp.fileio import atomic_write_bytes
from nerfcomp.tables import pareto_front, smallest_uniform

log = logging.getLogger(__name__)

__all__ = ["GRID", "pareto_front", "run_sweep", "smallest_uniform", "sweep_path"]

GRID = {
    "bits": [8, 6, 4, 3, 2],
    "rank": [None, 64, 32],
    "prune": [0.0, 0.3, 0.6],
}
KEYS = ("bits", "rank", "prune", "admm_steps")


def sweep_path(scene: str) -> Path:
    return scenes.ASSETS / f"{scene}.sweep.json"


def _lr(steps: int) -> list[float] | None:
    """The learning-rate schedule an ADMM point of ``steps`` steps gets today (None: instant)."""
    return list(admm.schedule(steps)) if steps else None


def _setting(p: dict) -> tuple:
    """What was compressed: bits, rank, prune, ADMM steps and per-layer overrides."""
    return (*(p.get(k) for k in KEYS), json.dumps(p.get("layers") or {}, sort_keys=True))


def _key(p: dict) -> tuple:
    """A point is done when its setting was measured with today's learning-rate schedule."""
    return (*_setting(p), tuple(p.get("admm_lr") or ()))


def _load(path: Path, scene: str, model_sha: str) -> dict:
    """The table so far; a fresh one if it was measured on another model (retrained)."""
    fresh = {"scene": scene, "model_sha256": model_sha, "points": []}
    if not path.exists():
        return fresh
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: sweep table is not valid JSON ({e})") from None
    if table.get("scene") != scene:
        raise ValueError(f"{path}: sweep table is for scene {table.get('scene')!r}")
    if table.get("model_sha256") != model_sha:
        log.warning("%s: measured on another model; starting the table again", path)
        return fresh
    return table


def _measure(engine: Engine, scene: str, cfg: CompressionConfig) -> dict:
    r = engine.readout(scene, cfg)
    point = {k: r[k] for k in (*KEYS, "psnr", "ssim", "bytes", "ratio")}
    return {**point, "admm_lr": _lr(cfg.admm_steps)} if cfg.admm_steps else point


def run_sweep(
    scene: str,
    out: str | os.PathLike | None = None,
    admm_points: int = 0,
    admm_steps: int = 300,
    device: str | None = "auto",
    grid: dict | None = None,
    engine: Engine | None = None,
) -> dict:
    """Grow the table at ``out`` (default assets/SCENE.sweep.json); returns a summary."""
    path = Path(out) if out else sweep_path(scene)
    engine = engine or Engine(device)
    table = _load(path, scene, engine.base(scene).sha256)
    orig = engine.score(scene, None)
    table.update(psnr_original=orig["psnr"], ssim_original=orig["ssim"])
    table["bytes_original"] = engine.base(scene).bytes_original
    done = {_key(p) for p in table["points"]}
    grid = grid or GRID
    # the bits axis first (rank and prune off), so an interrupted sweep already spans it
    todo = [
        CompressionConfig(bits=b, rank=r, prune=p)
        for r, p, b in itertools.product(grid["rank"], grid["prune"], grid["bits"])
    ]
    computed = _run(engine, scene, todo, table, done, path)
    # refine the smallest instant-path settings that keep ≥ 95% of the PSNR
    frontier = [
        CompressionConfig(bits=p["bits"], rank=p["rank"], prune=p["prune"], admm_steps=admm_steps)
        for p in pareto_front([p for p in table["points"] if not p["admm_steps"]])
        if p["psnr"] >= 0.95 * orig["psnr"]
    ][:admm_points]
    computed += _run(engine, scene, frontier, table, done, path)
    atomic_write_bytes(path, json.dumps(table, indent=1).encode())
    return {
        "scene": scene,
        "table": str(path),
        "points": len(table["points"]),
        "computed": computed,
    }


def _run(engine: Engine, scene: str, cfgs: list, table: dict, done: set, path: Path) -> int:
    """Measure each config not yet in the table (or measured with another learning-rate
    schedule: that point is replaced), saving the table after each point."""
    computed = 0
    for cfg in cfgs:
        if _key({**cfg.to_dict(), "admm_lr": _lr(cfg.admm_steps)}) in done:
            continue
        point = _measure(engine, scene, cfg)
        stale = _setting(point)
        table["points"] = [p for p in table["points"] if _setting(p) != stale] + [point]
        done.add(_key(point))
        atomic_write_bytes(path, json.dumps(table, indent=1).encode())
        computed += 1
        log.info("%s: %s → %.2f dB, %d B", scene, cfg, point["psnr"], point["bytes"])
    return computed
