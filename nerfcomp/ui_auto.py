"""The explorer's Auto panel: per-layer settings found for a target, shown and editable.

``auto_find`` asks the engine for the smallest file that keeps a PSNR target (or the best
PSNR in a size), verified on every held-out view; ``auto_apply`` compresses with a per-layer
table the user edited. Both return the allocation as a table, the original and the allocated
model side by side, the rate–distortion chart (the sweep's uniform settings and their
frontier for comparison), the bytes per layer and the exact readout. Like ``ui.py``, each
function validates plain values (``ValueError`` → ``gr.Error``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

import gradio as gr

from nerfcomp import figures, scenes
from nerfcomp.compress import CompressionConfig, linear_names
from nerfcomp.compress.allocate import config_from_settings
from nerfcomp.compress.config import ALLOWED_BITS, ResolvedLayer
from nerfcomp.outputs import png
from nerfcomp.tables import smallest_uniform
from nerfcomp.ui import (
    _cancels,
    _choice,
    _number,
    _session,
    _shown,
    check_scene,
    check_view,
    cpu_model,
    engine,
    gpu,
    load_sweep,
    user_errors,
)

__all__ = ["GOALS", "TABLE_HEADERS", "auto_apply", "auto_find"]

GOALS = ("% of original PSNR", "file size (KB)")
TABLE_HEADERS = ["layer", "bits", "rank", "prune", "KB", "probe ΔPSNR (dB)"]


def _camera(azimuth, elevation, size) -> scenes.Camera:
    return scenes.camera_at(*check_view(azimuth, elevation, size))


@user_errors
@gpu
def auto_find(
    scene,
    goal=GOALS[0],
    percent=99.0,
    kb=60.0,
    admm_steps=0,
    azimuth=30.0,
    elevation=30.0,
    size=100,
    request: gr.Request = None,
    progress=gr.Progress(),  # noqa: B008
):
    """Find per-layer settings for the target: PSNR >= ``percent``% of the original's on
    every held-out view, or a file of at most ``kb`` KB; ``admm_steps`` > 0 refines the
    allocation by ADMM after (minutes; the Cancel button stops it). Returns (status, table,
    images, rate–distortion and bytes-per-layer figures, readout)."""
    scene = check_scene(scene)
    _choice("goal", goal, GOALS)
    percent = _number("target PSNR (% of the original's)", percent, 50.0, 99.99)
    kb = _number("target size (KB)", kb, 1.0, 100_000.0)
    steps = _number("admm_steps", admm_steps, 0, 100_000, integer=True)
    cam = _camera(azimuth, elevation, size)
    if goal == GOALS[0]:
        target = {"target_psnr_drop": round(100.0 - percent, 6)}
    else:
        target = {"target_bytes": int(kb * 1000)}

    def report(fraction: float, message: str) -> None:
        progress(fraction, desc=message)

    session, cancel = _session(request), threading.Event()
    _cancels[session] = cancel  # the session's Cancel button sets it
    try:
        found = engine().auto(scene, admm_steps=steps, progress=report, cancel=cancel, **target)
    finally:
        _cancels.pop(session, None)
    return _show(scene, found.config, cam, found.to_dict())


@user_errors
@gpu
def auto_apply(scene, table, azimuth=30.0, elevation=30.0, size=100):
    """Compress with the per-layer settings of an edited allocation table (rows: layer, bits,
    rank, prune; the other columns are ignored); same outputs as ``auto_find``."""
    scene = check_scene(scene)
    cam = _camera(azimuth, elevation, size)
    names = linear_names(cpu_model(scene))
    settings = _settings_from_table(table, names)
    return _show(scene, config_from_settings(settings), cam, None)


def _rows(table) -> list[list]:
    """The rows of a Dataframe value: a pandas DataFrame, {"data": rows} or a list of rows."""
    if hasattr(table, "values") and hasattr(table, "columns"):  # pandas, when preprocessed
        return table.values.tolist()
    if isinstance(table, Mapping):
        table = table.get("data")
    if not isinstance(table, list) or not all(isinstance(r, list | tuple) for r in table):
        raise ValueError(
            f"the allocation table must be rows of (layer, bits, rank, prune); got {_shown(table)}"
        )
    return [list(r) for r in table]


def _settings_from_table(table, names: list[str]) -> dict[str, ResolvedLayer]:
    rows = _rows(table)
    settings: dict[str, ResolvedLayer] = {}
    for row in rows:
        if len(row) < 4:
            raise ValueError(f"each table row needs layer, bits, rank, prune; got {_shown(row)}")
        layer, bits, rank, prune = row[:4]
        if layer not in names:
            raise ValueError(f"unknown layer {_shown(layer)}; the model has {', '.join(names)}")
        if layer in settings:
            raise ValueError(f"layer {layer} appears twice in the table")
        settings[layer] = ResolvedLayer(
            _cell_int(f"{layer} bits", bits, ALLOWED_BITS),
            _cell_rank(layer, rank),
            _cell_float(f"{layer} prune", prune),
        )
    missing = [n for n in names if n not in settings]
    if missing:
        raise ValueError(f"the table lacks layers {', '.join(missing)}")
    return settings


def _cell_number(name: str, x) -> float:
    if isinstance(x, str):
        try:
            x = float(x.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {_shown(x)}") from None
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        raise ValueError(f"{name} must be a number, got {_shown(x)}")
    return float(x)


def _cell_int(name: str, x, allowed) -> int:
    v = _cell_number(name, x)
    if v != int(v) or int(v) not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {_shown(x)}")
    return int(v)


def _cell_rank(layer: str, x) -> int | None:
    if x is None or (isinstance(x, str) and x.strip().lower() in ("", "full", "none")):
        return None
    if isinstance(x, float) and math.isnan(x):  # an emptied pandas cell
        return None
    v = _cell_number(f"{layer} rank", x)
    if v != int(v) or v < 0:
        raise ValueError(f"{layer} rank must be 'full' or a whole number >= 1, got {_shown(x)}")
    return int(v) or None


def _cell_float(name: str, x) -> float:
    v = _cell_number(name, x)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {_shown(x)}")
    return v


def _show(scene: str, cfg: CompressionConfig, cam: scenes.Camera, found: dict | None):
    """Everything the panel shows for the allocation ``cfg``."""
    eng = engine()
    comp = eng.compress(scene, cfg)
    score, score0 = eng.score(scene, cfg), eng.score(scene, None)
    base = eng.base(scene)
    table = _table(scene, cfg, comp.breakdown)
    orig, now = eng.render(scene, None, cam), eng.render(scene, cfg, cam)
    images = (png(figures.to_uint8(orig.image)), png(figures.to_uint8(now.image)))
    sweep = load_sweep(scene)
    point = {**cfg.to_dict(), "bytes": comp.bytes, "psnr": score["psnr"]}
    original = {"bytes": base.bytes_original, "psnr": score0["psnr"]}
    fig_rd = figures.rate_distortion(
        scene, sweep, point, original, label="auto allocation", uniform_front=True
    )
    fig_bytes = figures.bytes_per_layer(
        eng.compress(scene, CompressionConfig(bits=32)).breakdown, comp.breakdown
    )
    readout = {
        "scene": base.scene,
        "psnr": score["psnr"],
        "psnr_original": score0["psnr"],
        "psnr_percent": round(100 * score["psnr"] / score0["psnr"], 2),
        "ssim": score["ssim"],
        "bytes": comp.bytes,
        "bytes_original": base.bytes_original,
        "ratio": round(base.bytes_original / comp.bytes, 3),
        "config": cfg.to_dict(),
        "psnr_kind": "exact: all held-out views",
    }
    if found is not None:
        readout["auto"] = {k: v for k, v in found.items() if k not in readout and k != "config"}
    status = _status(readout, found, sweep)
    return status, table, images, fig_rd, fig_bytes, readout


def _status(r: dict, found: dict | None, sweep: dict | None) -> str:
    """One line on the allocation, then how it compares with the sweep's uniform settings."""
    head = (
        f"**{r['psnr']:.2f} dB** ({r['psnr_percent']:.2f}% of the original) on every held-out "
        f"view · **{r['bytes'] / 1e3:,.1f} KB** ({r['ratio']:.1f}× smaller)"
    )
    if found is not None:
        met = "target met" if found["met"] else "**target not met**: the closest found"
        head = f"{met} · {head} · {found['seconds']:.1f} s"
    lines = [head]
    for what, admm in (("instant", False), ("any, ADMM included", True)):
        u = smallest_uniform((sweep or {}).get("points", []), r["psnr"], admm)
        if u is None:
            lines.append(f"smallest uniform setting at ≥ this PSNR ({what}): none in the sweep")
            continue
        rank = u.get("rank") or "full"
        steps = f", ADMM {u['admm_steps']}" if u.get("admm_steps") else ""
        change = 100 * (r["bytes"] / u["bytes"] - 1)
        lines.append(
            f"smallest uniform setting at ≥ this PSNR ({what}): {u['bits']} bit, rank {rank}, "
            f"prune {u['prune']:g}{steps}, {u['bytes'] / 1e3:,.1f} KB, {u['psnr']:.2f} dB: "
            f"this allocation is **{change:+.0f}%** in bytes"
        )
    return "<br>".join(lines)


def _table(scene: str, cfg: CompressionConfig, breakdown: dict) -> list[list]:
    """Rows: layer, bits, rank ("full" when dense), prune, KB in the file, and the PSNR the
    probe says that layer's setting costs (when the sensitivity table has it)."""
    eng = engine()
    sens, model = eng.cached_sensitivity(scene), eng.compress(scene, cfg).model
    rows = []
    for layer in linear_names(cpu_model(scene)):
        m = model.get_submodule(layer)  # the rank the file really keeps
        s = cfg.for_layer(layer)._replace(rank=m.stored["A"].shape[1] if m.factorized else None)
        kb = round(sum(breakdown.get(layer, {}).values()) / 1e3, 2)
        cost = ""
        if sens is not None:
            hit = [d for setting, _, d in sens.rows.get(layer, []) if setting == s]
            if hit:
                cost = round(10 * math.log10((sens.mse0 + hit[0]) / sens.mse0), 3)
        rows.append([layer, s.bits, "full" if s.rank is None else s.rank, s.prune, kb, cost])
    return rows
