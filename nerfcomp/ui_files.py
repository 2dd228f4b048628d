"""The explorer's long jobs and files: orbit video, export, the sweep CSV and uploads.

Split from ``nerfcomp/ui.py`` (validation, the engine, the slider path); like it, each
function takes plain values, validates them (``ValueError`` → ``gr.Error``) and returns plain
values. These run in the app's "long" queue, one at a time, apart from the sliders.
"""

from __future__ import annotations

import os

import gradio as gr

from nerfcomp import figures, metrics, scenes, uploads
from nerfcomp.compress import CompressionConfig
from nerfcomp.outputs import output_path, png
from nerfcomp.ui import (
    _choice,
    _exact,
    _finite,
    _ground_truth,
    _number,
    _setting,
    available_scenes,
    check_scene,
    check_view,
    engine,
    gpu,
    load_sweep,
    scene_of,
    user_errors,
)

__all__ = ["export", "open_nrc", "orbit", "sweep_csv", "upload_checkpoint"]


def _file_name(scene: str, cfg: CompressionConfig, ext: str) -> str:
    rank = cfg.rank or "full"
    ends = "-ends32" if cfg.layers else ""
    admm = f"-admm{cfg.admm_steps}" if cfg.admm_steps else ""
    name = scene.replace(":", "-")  # upload:<sha>:<scene>
    return f"{name}-b{cfg.bits}-r{rank}-p{cfg.prune:g}{ends}{admm}.{ext}"


@user_errors
@gpu
def orbit(
    scene,
    bits,
    rank,
    prune,
    frames=24,
    size=100,
    keep_ends=False,
    float_format="k-means",
    admm_steps=0,
    progress=gr.Progress(),  # noqa: B008
):
    """An MP4 of the original and the compressed model side by side along the orbit path."""
    import imageio.v2 as imageio

    cfg, _ = _setting(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    frames = _number("frames", frames, 2, 240, integer=True)
    size = _number("size", size, 16, 256, integer=True)
    eng = engine()
    comp = eng.compress(scene, cfg)
    label = f"compressed, {comp.bytes / 1e3:,.0f} KB"
    path = output_path(_file_name(scene, cfg, "mp4"))
    with imageio.get_writer(
        path, fps=12, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
    ) as writer:
        for i, cam in enumerate(scenes.orbit_cameras(frames, size)):
            progress(i / frames, desc=f"frame {i + 1}/{frames}")
            pair = [figures.to_uint8(eng.render(scene, c, cam).image) for c in (None, cfg)]
            writer.append_data(figures.side_by_side(pair, ["original", label], scale=2))
    return path


@user_errors
@gpu
def export(
    scene,
    bits,
    rank,
    prune,
    keep_ends=False,
    float_format="k-means",
    admm_steps=0,
    eval_size=100,
):
    """The .nrc file of the setting and its exact score on every held-out view (rendered
    at ``eval_size``; what ``python -m nerfcomp decode FILE`` measures at 100)."""
    from nerfcomp.fileio import atomic_write_bytes

    cfg, refined = _setting(scene, bits, rank, prune, keep_ends, float_format, admm_steps)
    eval_size = _number("eval_size", eval_size, 16, 400, integer=True)
    eng = engine()
    comp = eng.compress(scene, cfg)
    path = output_path(_file_name(scene, cfg, "nrc"))
    nbytes = atomic_write_bytes(path, comp.payload)
    score, score0 = eng.score(scene, cfg, eval_size), eng.score(scene, None, eval_size)
    if eval_size == 100:
        _exact.put((scene, cfg), score)
        _exact.put((scene, None), score0)
    bytes_original = eng.base(scene).bytes_original
    result = {
        "scene": scene,
        **{k: v for k, v in cfg.to_dict().items() if k != "layers"},
        "float_layers": sorted(cfg.layers),
        "refined": refined,
        "psnr": score["psnr"],
        "ssim": score["ssim"],
        "psnr_original": score0["psnr"],
        "ssim_original": score0["ssim"],
        "psnr_views": score["psnr_views"],
        "test_views": score["test_views"],
        "eval_size": eval_size,
        "bytes": nbytes,
        "bytes_original": bytes_original,
        "ratio": round(bytes_original / nbytes, 3),
        "file": path.rsplit("/", 1)[-1],
    }
    return path, result


@user_errors
def sweep_csv(scene):
    """The scene's rate–distortion table as CSV."""
    import csv

    scene = check_scene(scene)
    table = load_sweep(scene)
    if table is None:
        raise ValueError(
            f"no sweep table for {scene} yet; compute it with: python -m nerfcomp sweep "
            f"--scene {scene}"
        )
    cols = ["bits", "rank", "prune", "admm_steps", "admm_lr", "admm_lr_final", "layers"]
    cols += ["psnr", "ssim", "bytes", "ratio"]
    path = output_path(f"{scene}-rate-distortion.csv")
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for p in sorted(table["points"], key=lambda p: p["bytes"]):
            overrides = (p.get("layers") or {}).items()  # as the CLI's --layer takes them
            layers = ";".join(
                f"{n}=" + ",".join(f"{k}:{v}" for k, v in lc.items() if v is not None)
                for n, lc in overrides
            )
            lr, lr_final = p.get("admm_lr") or ("", "")  # the refinement's learning rates
            w.writerow({**p, "layers": layers, "admm_lr": lr, "admm_lr_final": lr_final})
    return path


# --- uploads -----------------------------------------------------------------------------------


def _upload_path(file) -> str:
    """The server-side path of an uploaded file (a path, or gradio's FileData as a dict)."""
    path = file.get("path") if isinstance(file, dict) else file
    if not isinstance(path, str) or not path:
        raise ValueError("no file uploaded")
    return path


@user_errors
def upload_checkpoint(file, scene):
    """Explore an uploaded NeRF checkpoint (this project's safetensors format), scored
    against ``scene``'s ground truth: returns the scene picker (now offering the upload,
    selected) and a status line. Validated first (nerfcomp/uploads.py); never unpickled."""
    path = _upload_path(file)
    scene = _choice("scene", scene_of(scene) if isinstance(scene, str) else scene, scenes.SCENES)
    model, extra = uploads.check_checkpoint(path)
    name = engine().add_upload(path, scene, model)
    trained = extra.get("scene")
    note = f" (trained on {trained})" if isinstance(trained, str) and trained != scene else ""
    status = (
        f"**Uploaded** {model.config.width}-wide NeRF, {os.path.getsize(path) / 1e3:,.0f} KB"
        f"{note}: scored against the **{scene}** ground truth."
    )
    choices = [*available_scenes(), name]
    return gr.Dropdown(choices=choices, value=name), status


@user_errors
@gpu
def open_nrc(file, azimuth=30.0, elevation=30.0, size=100):
    """Decode an uploaded .nrc file and view it: (ground truth, decoded render) and its
    exact score on every held-out view of the scene its header names."""
    from nerfcomp.evaluate import evaluate_model, render_view

    path = _upload_path(file)
    azimuth, elevation, size = check_view(azimuth, elevation, size)
    model, meta = uploads.check_nrc(path)
    eng = engine()
    model = model.to(eng.device).eval()
    scene = meta["scene"]
    cam = scenes.camera_at(azimuth, elevation, size)
    now, gt = render_view(model, cam), _ground_truth(scene, azimuth, elevation, size)
    score = evaluate_model(model, scene)
    nbytes = os.path.getsize(path)
    result = {
        "scene": scene,
        **{k: meta.get("config", {}).get(k) for k in ("bits", "rank", "prune", "admm_steps")},
        "psnr": score["psnr"],
        "ssim": score["ssim"],
        "psnr_kind": "exact: all held-out views",
        "psnr_view": _finite(metrics.psnr(now.image, gt)),
        "bytes": nbytes,
    }
    if scene in available_scenes():
        result["bytes_original"] = eng.base(scene).bytes_original
        result["ratio"] = round(result["bytes_original"] / nbytes, 3)
        result["psnr_original"] = eng.score(scene, None)["psnr"]
    return (png(figures.to_uint8(gt)), png(figures.to_uint8(now.image))), result
