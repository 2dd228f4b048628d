"""The explorer's logic: validated inputs → engine calls → images, readouts, figures, files.

``app.py`` only lays out components and wires them to the functions here. Each event function
takes plain values (what a Gradio component or ``gradio_client`` sends), validates them with a
clear message (a ``ValueError``, shown as ``gr.Error``) and returns plain values and Plotly
figures. Models load lazily on the first call, in one engine shared by all sessions; GPU work
runs inside functions wrapped by ``gpu`` (ZeroGPU's ``spaces.GPU`` when present, else a no-op).
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import threading
import time
from dataclasses import replace
from numbers import Real

import gradio as gr
import torch

from nerfcomp import figures, metrics, scenes, uploads
from nerfcomp.compress import CompressionConfig, LayerConfig, linear_names
from nerfcomp.compress.config import ALLOWED_BITS
from nerfcomp.compress.engine import ByteLRU, Engine
from nerfcomp.outputs import png
from nerfcomp.tables import smallest_uniform

log = logging.getLogger(__name__)

try:  # ZeroGPU (Hugging Face Spaces): GPU work in functions decorated with spaces.GPU
    import spaces

    gpu = spaces.GPU
except ImportError:

    def gpu(fn=None, **_):
        """No-op stand-in for ``spaces.GPU`` outside ZeroGPU."""
        return fn if fn is not None else (lambda f: f)


FLOAT_FORMATS = {"k-means": None, "fp16": 16, "float32": 32}
ERROR_VS = ("original NeRF", "ground truth")
SIZES = (64, 100, 128, 160, 200)
FAST_RAYS = 4096
ERROR_VMAX = 0.25  # error map scale: |error| in [0, 1] units, clipped here
DEFAULT_LAYER = "trunk.1"
MAX_UPLOAD_MB = uploads.MAX_BYTES >> 20
FULL_RANK = 128  # the NeRF's width: the largest rank any of its layers has

_engine: Engine | None = None
_engine_lock = threading.Lock()
_exact = ByteLRU(4 << 20)  # (scene, cfg) → exact held-out score, from Refine / Export
_cancels: dict[str, threading.Event] = {}  # session → its running refinement's cancel flag


def engine() -> Engine:
    """The engine shared by every session, created on first use (never at import)."""
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = Engine()
            log.info("engine on %s", _engine.device)
        return _engine


def user_errors(fn):
    """Turn ``ValueError`` (bad input, failed refinement) into ``gr.Error`` with its text."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as e:
                raise gr.Error(str(e), print_exception=False) from e

        return gen

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e), print_exception=False) from e

    return wrapper


# --- inputs ----------------------------------------------------------------------------------


def available_scenes() -> list[str]:
    """Shipped scenes whose checkpoint exists."""
    return [name for name, s in scenes.SCENES.items() if s.checkpoint.exists()]


def _shown(x, limit: int = 60) -> str:
    """``repr(x)`` for an error message, cut short (the API can send megabytes)."""
    text = repr(x)
    return text if len(text) <= limit else text[:limit] + "…"


def _number(name: str, x, lo: float, hi: float, integer: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, Real) or not math.isfinite(float(x)):
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {_shown(x)}")
    if not lo <= float(x) <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {_shown(x)}")
    if integer and float(x) != int(x):
        raise ValueError(f"{name} must be a whole number, got {_shown(x)}")
    return int(x) if integer else float(x)


def _choice(name: str, x, choices) -> str:
    try:
        known = x in choices
    except TypeError:  # unhashable: a list or dict sent through the API
        known = False
    if not known:
        raise ValueError(f"{name} must be one of {', '.join(map(str, choices))}; got {_shown(x)}")
    return x


def _bits(x) -> int:
    ok = isinstance(x, Real) and not isinstance(x, bool) and math.isfinite(float(x))
    if not ok or float(x) != int(x) or int(x) not in ALLOWED_BITS:
        raise ValueError(f"bits must be a whole number 1..8, or 16 (fp16) or 32; got {_shown(x)}")
    return int(x)


def check_view(azimuth, elevation, size) -> tuple[float, float, int]:
    """The camera controls, checked: azimuth and elevation in degrees, size in pixels."""
    return (
        _number("azimuth", azimuth, -360, 360),
        _number("elevation", elevation, -89, 89),
        _number("size", size, 16, 400, integer=True),
    )


def check_scene(scene) -> str:
    """A shipped scene with a checkpoint, or an uploaded checkpoint's name (``upload:…``)."""
    have = available_scenes()
    if isinstance(scene, str) and scene.startswith("upload:"):
        if engine().has_base(scene):
            return scene
        raise ValueError(
            f"the uploaded checkpoint {_shown(scene)} is no longer loaded (only the last "
            f"{engine().max_uploads} uploads are kept); upload it again"
        )
    if scene not in have:
        known = ", ".join(have) or "none (train one: python -m nerfcomp train --scene NAME)"
        raise ValueError(f"scene must be a scene with a checkpoint ({known}); got {_shown(scene)}")
    return scene


def scene_of(name: str) -> str:
    """The procedural scene whose ground truth scores the model ``name``."""
    return name.split(":")[-1] if name.startswith("upload:") else name


@functools.lru_cache(maxsize=8)
def cpu_model(scene: str) -> torch.nn.Module:
    """The scene's (or upload's) NeRF on the CPU, for shapes and layer names."""
    from nerfcomp.model import load_checkpoint

    if scene.startswith("upload:"):
        from nerfcomp.evaluate import module_device

        model = engine().base(scene).model
        return model if module_device(model).type == "cpu" else copy.deepcopy(model).cpu()
    return load_checkpoint(scenes.get_scene(scene).checkpoint, "cpu")[0]


def end_layers(names: list[str], model: torch.nn.Module) -> list[str]:
    """The first Linear layer and the output heads (≤ 4 outputs, e.g. σ and rgb)."""
    heads = [n for n in names if model.get_submodule(n).out_features <= 4]
    return sorted({names[0], names[-1], *heads}, key=names.index)


def make_config(
    scene, bits, rank, prune, keep_ends=False, float_format="k-means", admm_steps=0
) -> CompressionConfig:
    """The compression setting of the controls. bits: 1..8 (k-means), or 16 / 32, which
    ``float_format`` "fp16" / "float32" also select; rank: 1..FULL_RANK, FULL_RANK, 0 or None =
    no factorization; keep_ends: the first and last layers stay float32."""
    scene = check_scene(scene)
    fmt = _choice("float_format", float_format, tuple(FLOAT_FORMATS))
    bits = FLOAT_FORMATS[fmt] or _bits(bits)
    if rank is not None:
        rank = _number("rank", rank, 0, FULL_RANK, integer=True)
    prune = _number("prune", prune, 0.0, 0.99)
    steps = _number("admm_steps", admm_steps, 0, 100_000, integer=True)
    if not isinstance(keep_ends, bool):
        raise ValueError(f"keep_ends must be true or false, got {keep_ends!r}")
    layers = {}
    if keep_ends:
        model = cpu_model(scene)
        keep = LayerConfig(bits=32, rank=0, prune=0.0)
        layers = dict.fromkeys(end_layers(linear_names(model), model), keep)
    return CompressionConfig(
        bits=bits,
        rank=None if rank in (None, 0, FULL_RANK) else rank,
        prune=prune,
        admm_steps=steps,
        layers=layers,
    )


def _refined_available(scene: str, cfg: CompressionConfig) -> bool:
    """Whether the engine holds the ADMM-refined model of ``cfg`` (a read-only peek, so that
    ``compress`` never starts a refinement of minutes)."""
    eng = engine()
    return cfg.admm_steps > 0 and eng.cached(scene, cfg) is not None


def _setting(scene, bits, rank, prune, keep_ends, float_format, admm_steps):
    """(config to show, refined?): the refined model when it has been computed, else instant."""
    cfg = make_config(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    if _refined_available(scene, cfg):
        return cfg, True
    return replace(cfg, admm_steps=0), False


# --- the main event ----------------------------------------------------------------------------


@functools.cache
def _warm_up(scene: str) -> None:
    """One tiny render first, so the original's (cached) render time is not a cold one."""
    from nerfcomp.evaluate import render_view

    eng = engine()
    render_view(eng.base(scene).model, scenes.camera_at(0, 0, 8), eng.grid(scene, None))


@functools.lru_cache(maxsize=32)
def _ground_truth(scene: str, azimuth: float, elevation: float, size: int) -> torch.Tensor:
    cam = scenes.camera_at(azimuth, elevation, size)
    return scenes.render_ground_truth(scenes.get_scene(scene), cam)[0]  # (H, W, 3)


def _finite(x: float, nd: int = 3) -> float | None:
    return round(x, nd) if math.isfinite(x) else None


def _timer():
    t = [time.perf_counter()]

    def lap() -> float:
        now = time.perf_counter()
        ms, t[0] = (now - t[0]) * 1e3, now
        return round(ms, 1)

    return lap


@user_errors
@gpu
def compress(
    scene,
    bits,
    rank,
    prune,
    azimuth=30.0,
    elevation=30.0,
    size=100,
    keep_ends=False,
    float_format="k-means",
    admm_steps=0,
    error_vs="original NeRF",
):
    """Compress the scene's NeRF, render one view of both models, score and chart them.

    Returns (original, compressed) images, the error map, readout cards (HTML), the readout
    (JSON, with a ``timing_ms`` breakdown), a size line, and the bytes-per-layer and
    rate–distortion figures. admm_steps > 0 shows the refined model if /refine computed it."""
    lap, t0, cpu0 = _timer(), time.perf_counter(), time.process_time()
    cfg, refined = _setting(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    azimuth, elevation, size = check_view(azimuth, elevation, size)
    _choice("error_vs", error_vs, ERROR_VS)
    eng, timing = engine(), {}
    _warm_up(scene)
    lap()
    comp = eng.compress(scene, cfg)
    timing["compress"] = lap()
    eng.grid(scene, cfg)
    timing["grid"] = lap()
    cam = scenes.camera_at(azimuth, elevation, size)
    orig, now = eng.render(scene, None, cam), eng.render(scene, cfg, cam)
    gt = _ground_truth(scene_of(scene), azimuth, elevation, size)
    timing["render"] = lap()
    readout = _readout(scene, cfg, refined, comp.bytes, orig, now, gt)
    readout["view"] = {"azimuth": azimuth, "elevation": elevation, "size": size}
    timing["metrics"] = lap()
    err = (now.image - (orig.image if error_vs == ERROR_VS[0] else gt)).abs().mean(dim=-1)
    error_img = figures.error_map_image(err.numpy(), ERROR_VMAX)
    fig_bytes = figures.bytes_per_layer(
        eng.compress(scene, CompressionConfig(bits=32)).breakdown, comp.breakdown
    )
    sweep = load_sweep(scene)
    original = {"bytes": readout["bytes_original"], "psnr": readout["psnr_test_original"]}
    original["psnr"] = (sweep or {}).get("psnr_original") or original["psnr"]
    fig_rd = figures.rate_distortion(
        scene, sweep, {**readout, "psnr": readout["psnr_test"]}, original
    )
    timing["figures"] = lap()
    timing["server_total"] = round((time.perf_counter() - t0) * 1e3, 1)
    timing["server_cpu"] = round((time.process_time() - cpu0) * 1e3, 1)  # all threads
    readout["timing_ms"] = timing
    log.info("compress %s %s: %s", scene, cfg.to_dict(), timing)
    images = (png(figures.to_uint8(orig.image)), png(figures.to_uint8(now.image)))
    size_line = f"**{comp.bytes / 1e3:,.1f} KB** file, {readout['ratio']:.1f}× smaller"
    return images, png(error_img), readout_cards(readout), readout, size_line, fig_bytes, fig_rd


def _readout(scene: str, cfg, refined: bool, nbytes: int, orig, now, gt) -> dict:
    """The JSON readout: this view against the ground truth for both models, the held-out
    PSNR (exact when Refine or Export measured it, else the fixed ray subset), the bytes."""
    eng = engine()
    view = {
        "psnr": metrics.psnr(now.image, gt),
        "psnr_original": metrics.psnr(orig.image, gt),
        "ssim": metrics.ssim(now.image, gt),
        "ssim_original": metrics.ssim(orig.image, gt),
    }
    exact, exact0 = _exact.get((scene, cfg)), _exact.get((scene, None))
    if exact and exact0:
        test, test0, kind = exact["psnr"], exact0["psnr"], "exact: all held-out views"
    else:
        test, test0 = eng.score_fast(scene, cfg, FAST_RAYS), eng.score_fast(scene, None, FAST_RAYS)
        kind = f"fixed subset of {FAST_RAYS} held-out test rays"
    bytes_original = eng.base(scene).bytes_original
    return {
        "scene": scene,
        **{k: v for k, v in cfg.to_dict().items() if k != "layers"},
        "float_layers": sorted(cfg.layers),
        "refined": refined,
        **{k: _finite(v, 4 if k.startswith("ssim") else 3) for k, v in view.items()},
        "psnr_test": test,
        "psnr_test_original": test0,
        "psnr_test_kind": kind,
        "psnr_percent": round(100 * test / test0, 2),
        "bytes": nbytes,
        "bytes_original": bytes_original,
        "ratio": round(bytes_original / nbytes, 3),
        "render_ms": round(now.ms, 1),
        "render_ms_original": round(orig.ms, 1),
    }


def readout_cards(r: dict) -> str:
    """The readouts as large cards, readable on a projector."""
    fast = r["psnr_test_kind"].startswith("fixed")
    refined = " · ADMM-refined" if r["refined"] else ""
    cards = [
        ("PSNR, this view", f"{r['psnr']:.2f} dB", f"original {r['psnr_original']:.2f} dB"),
        ("SSIM, this view", f"{r['ssim']:.3f}", f"original {r['ssim_original']:.3f}"),
        (
            "Held-out PSNR" + ("*" if fast else ""),
            f"{r['psnr_test']:.2f} dB",
            f"{r['psnr_percent']:.1f}% of {r['psnr_test_original']:.2f} dB",
        ),
        ("File", f"{r['bytes'] / 1e3:,.1f} KB", f"float32 {r['bytes_original'] / 1e3:,.0f} KB"),
        ("Smaller by", f"{r['ratio']:.1f}×", f"{r['bits']} bit{refined}"),
        ("Render", f"{r['render_ms']:.0f} ms", f"original {r['render_ms_original']:.0f} ms"),
    ]
    html = "".join(
        f"<div class='nc-card'><div class='nc-label'>{label}</div>"
        f"<div class='nc-value'>{value}</div><div class='nc-sub'>{sub}</div></div>"
        for label, value, sub in cards
    )
    note = f"* on a {r['psnr_test_kind']}; exact after Refine or Export." if fast else ""
    return f"<div class='nc-cards'>{html}</div><div class='nc-note'>{note}</div>"


def estimate(scene, bits, rank, prune, keep_ends=False, float_format="k-means") -> str:
    """A size estimate from the layer shapes alone (no k-means, no coding): shown while
    a slider is being dragged."""
    cfg = make_config(scene, bits, rank, prune, keep_ends, float_format)
    model = cpu_model(scene)
    total = 600  # header, CRC
    for name in linear_names(model):
        layer, lc = model.get_submodule(name), cfg.for_layer(name)
        m, n = layer.weight.shape
        r = lc.rank if lc.rank and lc.rank * (m + n) < m * n else None
        numel = r * (m + n) if r else m * n
        kept = numel * (1 - lc.prune)
        per = lc.bits / 8 if lc.bits <= 8 else lc.bits / 8
        total += kept * per + (2 * 2**lc.bits if lc.bits <= 8 else 0)
        total += numel / 8 if lc.prune > 0 else 0
        total += m * (2 if lc.bits <= 16 else 4)
    if scene.startswith("upload:"):
        base = engine().base(scene).bytes_original
    else:
        base = scenes.get_scene(scene).checkpoint.stat().st_size
    return f"≈ **{total / 1e3:,.0f} KB**, ≈ {base / total:.1f}× smaller (estimate while dragging)"


# --- the sweep table and presets ---------------------------------------------------------------

SWEEP_DIR = scenes.ASSETS  # where `python -m nerfcomp sweep` writes SCENE.sweep.json
RENDERS_FLOOR = 0.85  # "still renders": held-out PSNR at least this fraction of the original's


def load_sweep(scene: str) -> dict | None:
    """The scene's rate–distortion table, or None when it has not been computed (or is bad)."""
    if scene not in scenes.SCENES:
        return None  # uploads have no sweep table
    path = SWEEP_DIR / f"{scene}.sweep.json"
    try:
        return _read_sweep(path, path.stat().st_mtime_ns)
    except OSError:
        return None


@functools.lru_cache(maxsize=8)
def _read_sweep(path, mtime_ns: int) -> dict | None:
    import json

    try:
        table = json.loads(path.read_text())
        if table.get("points") and table.get("psnr_original"):
            return table
    except (OSError, ValueError, AttributeError) as e:
        log.warning("ignoring unreadable sweep table %s: %s", path, e)
    return None


def _controls(bits, rank, prune, keep_ends=False, admm_steps=0) -> tuple:
    """Control values: bits slider, format, rank slider, prune, keep ends, ADMM steps."""
    fmt = {16: "fp16", 32: "float32"}.get(bits, "k-means")
    return (
        bits if bits <= 8 else 8,
        fmt,
        rank or FULL_RANK,
        prune,
        keep_ends,
        admm_steps or DEFAULT_ADMM_STEPS,
    )


DEFAULT_ADMM_STEPS = 300


def _sweep_pick(scene: str, floor: float, label: str) -> tuple:
    table = load_sweep(scene)
    if table is None:
        raise ValueError(
            f"no sweep table for {scene} yet, so no '{label}' preset; compute it with: "
            f"python -m nerfcomp sweep --scene {scene}"
        )
    p = smallest_uniform(table["points"], floor * table["psnr_original"])  # sliders: uniform
    if p is None:
        raise ValueError(f"no point of the {scene} sweep keeps {100 * floor:.0f}% of the PSNR")
    note = (
        f" It is ADMM-refined ({p['admm_steps']} steps): press **Refine** to compute it."
        if p.get("admm_steps")
        else ""
    )
    status = (
        f"**{label}** (≥ {100 * floor:.0f}% of {table['psnr_original']:.2f} dB): "
        f"{p['bits']} bits, rank {p['rank'] or 'full'}, prune {p['prune']:.2f} → "
        f"{p['psnr']:.2f} dB in {p['bytes'] / 1e3:,.1f} KB ({p['ratio']:.1f}×).{note}"
    )
    return (*_controls(p["bits"], p["rank"], p["prune"], False, p.get("admm_steps")), status)


@user_errors
def preset_report(scene):
    """The original report's setting: 3-bit k-means on the hidden layers, the first and last
    layers float32. Returns the control values and a status line."""
    check_scene(scene)
    status = "**The original report's setting**: 3-bit k-means on the hidden layers; the first "
    status += "layer and the output heads stay float32."
    return (*_controls(3, None, 0.0, True, 0), status)


@user_errors
def preset_best(scene):
    """The smallest file of the sweep that keeps ≥ 99% of the original's held-out PSNR."""
    return _sweep_pick(check_scene(scene), 0.99, "Best ≥ 99% PSNR")


@user_errors
def preset_smallest(scene):
    """The smallest file of the sweep that still renders (≥ RENDERS_FLOOR of the PSNR)."""
    return _sweep_pick(check_scene(scene), RENDERS_FLOOR, "Smallest that still renders")


def view_presets() -> dict[str, tuple[float, float]]:
    """Named camera poses (azimuth, elevation), the held-out test views among them."""
    named = {"three-quarter": (30.0, 30.0), "front": (0.0, 15.0), "side": (90.0, 15.0)}
    named["top"] = (0.0, 80.0)
    for i, cam in enumerate(scenes.test_cameras()):
        named[f"held-out test view {i + 1}"] = (cam.azimuth, cam.elevation)
    return named


@user_errors
def view_angles(view):
    """(azimuth, elevation) of a named view."""
    presets = view_presets()
    return presets[_choice("view", view, tuple(presets))]


@user_errors
def scene_layers(scene):
    """The layer picker for a scene: its Linear layers."""
    names = linear_names(cpu_model(check_scene(scene)))
    return gr.Dropdown(choices=names, value=DEFAULT_LAYER if DEFAULT_LAYER in names else names[0])


# --- inside the compression: stages and one layer ----------------------------------------------


def fixed_length_bytes(model: torch.nn.Module, breakdown: dict) -> int:
    """Bytes of the same content with fixed-length indices (⌈log₂ k⌉ bits each) and a
    bitmap per pruning mask instead of entropy coding: the "k-means" stage of the waterfall."""
    from nerfcomp.compress import CompressedLinear

    total = sum(breakdown.get("(file)", {}).values())
    for name, m in model.named_modules():
        if not isinstance(m, CompressedLinear):
            continue
        total += breakdown.get(name, {}).get("biases", 0)
        for st in m.stored.values():
            kept = st.numel if st.mask is None else int(st.mask.sum())
            total += math.ceil(st.numel / 8) if st.mask is not None else 0
            if st.quantized:
                k = st.codebook.numel()
                total += math.ceil(kept * math.ceil(math.log2(max(k, 2))) / 8) + 2 * k
            else:
                total += kept * (2 if st.bits == 16 else 4)
    return total


def stages(scene: str, cfg: CompressionConfig, refined: bool) -> list[dict]:
    """Bytes and held-out PSNR (fixed ray subset) after each stage of the scheme."""
    eng = engine()
    base = eng.base(scene)
    out = [{"label": "float32", "bytes": base.bytes_original, "psnr": eng.score_fast(scene, None)}]
    instant = replace(cfg, admm_steps=0)
    steps = []
    if cfg.prune > 0:
        steps.append((f"pruned {100 * cfg.prune:.0f}%", replace(instant, bits=32, rank=None)))
    if cfg.rank:
        steps.append((f"rank {cfg.rank}", replace(instant, bits=32)))
    if cfg.bits <= 8:
        steps.append((f"k-means {cfg.bits} bit", instant))
    elif cfg.bits == 16:
        steps.append(("fp16", instant))
    for label, c in steps:
        comp = eng.compress(scene, c)
        nbytes = fixed_length_bytes(comp.model, comp.breakdown) if c.bits <= 8 else comp.bytes
        out.append({"label": label, "bytes": nbytes, "psnr": eng.score_fast(scene, c)})
    comp = eng.compress(scene, instant)
    psnr = out[-1]["psnr"] if len(out) > 1 else eng.score_fast(scene, instant)
    out.append({"label": "entropy-coded", "bytes": comp.bytes, "psnr": psnr})
    if refined:
        done = eng.compress(scene, cfg)
        out.append({"label": "ADMM", "bytes": done.bytes, "psnr": eng.score_fast(scene, cfg)})
    return out


def layer_figures(scene: str, cfg: CompressionConfig, layer: str):
    """(weight histogram with its codebook, singular-value spectrum with the rank cut)."""
    from nerfcomp.compress import factors_are_smaller, tensors_to_store

    eng = engine()
    base = eng.base(scene)
    layer = _choice("layer", layer, tuple(linear_names(base.model)))
    weight = base.model.get_submodule(layer).weight.detach()
    m, n = weight.shape
    lc = cfg.for_layer(layer)
    rank = lc.rank if lc.rank and factors_are_smaller(m, n, lc.rank) else None
    items = tensors_to_store(weight, rank, lc.prune, base.svds[layer])
    values = {p: (v if k is None else v[k]).cpu().numpy() for p, (v, k) in items.items()}
    stored = eng.compress(scene, replace(cfg, admm_steps=0)).model.get_submodule(layer).stored
    books = {p: st.codebook.cpu().numpy() if st.quantized else None for p, st in stored.items()}
    spectrum = base.svds[layer][1].cpu().numpy()
    return (
        figures.weight_histogram(layer, values, books),
        figures.singular_spectrum(layer, spectrum, rank, m * n / (m + n)),
    )


@user_errors
@gpu
def inspect_setting(
    scene,
    bits,
    rank,
    prune,
    layer=DEFAULT_LAYER,
    keep_ends=False,
    float_format="k-means",
    admm_steps=0,
):
    """The waterfall of bytes through the stages, and one layer's histogram and spectrum."""
    cfg, refined = _setting(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    return (figures.waterfall(stages(scene, cfg, refined)), *layer_figures(scene, cfg, layer))


# --- Refine with ADMM --------------------------------------------------------------------------


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "local"


@user_errors
@gpu
def refine(
    scene,
    bits,
    rank,
    prune,
    admm_steps=DEFAULT_ADMM_STEPS,
    keep_ends=False,
    float_format="k-means",
    request: gr.Request = None,
    progress=gr.Progress(),  # noqa: B008
):
    """Run ADMM refinement of the current setting, yielding (status, PSNR curve, result) as it
    goes; the result has the exact held-out score. The refined model stays cached."""
    import queue
    import re

    cfg = make_config(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    if cfg.admm_steps < 1:
        raise ValueError("admm_steps must be at least 1 to refine")
    eng, cancel, events, item = engine(), threading.Event(), queue.Queue(), ()
    _cancels[_session(request)] = cancel
    done: dict = {}

    def work() -> None:
        try:
            done["model"] = eng.compress(scene, cfg, lambda f, m: events.put((f, m)), cancel)
            done["score"], done["score0"] = eng.score(scene, cfg), eng.score(scene, None)
        except Exception as e:  # cancelled or failed: reported below
            done["error"] = e
        finally:
            events.put(None)

    threading.Thread(target=work, daemon=True, name="refine").start()
    history, last = [], 0.0
    try:
        while (item := events.get()) is not None:
            fraction, message = item
            progress(fraction, desc=message)
            if found := re.search(r"([\d.]+)\s*dB", message):
                history.append((fraction, float(found.group(1))))
            if time.perf_counter() - last > 0.5:
                last = time.perf_counter()
                curve = figures.admm_curve(history, cfg.admm_steps)
                yield f"Refining… {100 * fraction:.0f}% · {message}", curve, None
    finally:  # also when Gradio closes this generator (Cancel button, client gone)
        if item is not None:
            cancel.set()
        _cancels.pop(_session(request), None)
    if "error" in done:
        e = done["error"]
        what = "cancelled" if cancel.is_set() else f"failed: {type(e).__name__}: {e}"
        raise ValueError(f"ADMM refinement {what}")
    score = done["score"]
    _exact.put((scene, cfg), score)
    _exact.put((scene, None), done["score0"])
    result = {
        "scene": scene,
        **{k: v for k, v in cfg.to_dict().items() if k != "layers"},
        "psnr": score["psnr"],
        "ssim": score["ssim"],
        "psnr_original": done["score0"]["psnr"],
        "bytes": done["model"].bytes,
        "bytes_original": eng.base(scene).bytes_original,
        "psnr_kind": "exact: all held-out views",
    }
    result["ratio"] = round(result["bytes_original"] / result["bytes"], 3)
    status = (
        f"**Refined** ({cfg.admm_steps} steps): {score['psnr']:.2f} dB on all held-out views, "
        f"{result['bytes'] / 1e3:,.1f} KB. Cached: coming back to this setting is instant."
    )
    yield status, figures.admm_curve(history, cfg.admm_steps), result


def cancel_refine(request: gr.Request = None) -> str:
    """Stop this session's running refinement (Refine, or Auto with ADMM steps)."""
    flag = _cancels.get(_session(request))
    if flag is None:
        return "Nothing to cancel."
    flag.set()
    return "Cancelling…"
