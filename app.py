"""nerfcomp explorer: move the sliders, watch the NeRF's size, images and PSNR change.

    python app.py            # serves on GRADIO_SERVER_PORT (default 7860)

Components and event wiring only; the logic lives in ``nerfcomp/ui.py``,
``nerfcomp/ui_files.py`` and ``nerfcomp/ui_auto.py`` (importable and testable without a
browser). Models load on the first request, never at import.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from nerfcomp import ui, ui_auto, ui_files  # noqa: E402

HOW_IT_WORKS = Path(__file__).with_name("docs") / "how-it-works.md"
CSS = """
.nc-cards {display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 10px;}
.nc-card {border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 8px 12px;}
.nc-label {font-size: 1rem; opacity: .75;}
.nc-value {font-size: 2.3rem; font-weight: 700; line-height: 1.15;}
.nc-sub {font-size: 1rem; opacity: .75;}
.nc-note {font-size: .9rem; opacity: .7; margin-top: 4px;}
.nc-big p {font-size: 1.25rem;}
#nc-views img {image-rendering: pixelated;}
"""
THEME = gr.themes.Default(
    text_size=gr.themes.sizes.text_lg,
    font=["system-ui", "sans-serif"],  # no web fonts: the app needs no network
    font_mono=["ui-monospace", "monospace"],
)
# uploads over 2× the app's own limit are refused by Gradio before they reach the disk
LAUNCH = {"css": CSS, "theme": THEME, "share": False, "max_file_size": 2 * ui.uploads.MAX_BYTES}


def build_demo() -> gr.Blocks:
    """The explorer's Blocks; nothing heavy happens until an event runs."""
    names, views = ui.available_scenes(), ui.view_presets()
    with gr.Blocks(
        title="nerfcomp explorer", analytics_enabled=False, delete_cache=(900, 3600)
    ) as demo:
        gr.Markdown(
            "# nerfcomp: compress a NeRF, live\nPrune, factorize and quantize the MLP that "
            "holds the scene; compare the renders, the PSNR and the bytes of the real file."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                scene = gr.Dropdown(names, value=names[0] if names else None, label="Scene")
                bits = gr.Slider(
                    1,
                    8,
                    value=4,
                    step=1,
                    label="Bits",
                    info="k-means: a codebook of 2ᵇ values per tensor",
                )
                fmt = gr.Radio(list(ui.FLOAT_FORMATS), value="k-means", label="Weights")
                rank = gr.Slider(
                    1,
                    ui.FULL_RANK,
                    value=ui.FULL_RANK,
                    step=1,
                    label="Rank",
                    info=f"{ui.FULL_RANK} = full; factors only where r(m+n) < mn",
                )
                prune = gr.Slider(
                    0,
                    0.95,
                    value=0,
                    step=0.05,
                    label="Prune",
                    info="fraction of weights set to zero",
                )
                keep_ends = gr.Checkbox(False, label="Keep first & last layers float32")
                size_line = gr.Markdown(elem_classes="nc-big")
                with gr.Row():
                    p_report = gr.Button("Original report's setting", size="sm")
                    p_best = gr.Button("Best ≥ 99% PSNR", size="sm")
                    p_small = gr.Button("Smallest that still renders", size="sm")
                preset_status = gr.Markdown()
                with gr.Accordion("Camera", open=True):
                    view = gr.Dropdown(list(views), value="three-quarter", label="View")
                    azimuth = gr.Slider(-180, 180, value=30, step=1, label="Azimuth (°)")
                    elevation = gr.Slider(-10, 89, value=30, step=1, label="Elevation (°)")
                    size = gr.Radio(list(ui.SIZES), value=100, label="Preview resolution (px)")
                    error_vs = gr.Radio(
                        list(ui.ERROR_VS), value=ui.ERROR_VS[0], label="Error map against"
                    )
            with gr.Column(scale=2):
                with gr.Row():
                    pair = gr.ImageSlider(
                        format="png",
                        label="original ◀ ▶ compressed",
                        elem_id="nc-views",
                        height=420,
                        max_height=380,  # the image fits under the label, uncropped
                        scale=3,
                    )
                    error_img = gr.Image(
                        format="png", label="|error|", height=420, scale=2, elem_id="nc-error"
                    )
                cards = gr.HTML()
                readout = gr.JSON(label="Readout", elem_id="nc-readout", max_height=260)
        with gr.Row():
            rd_plot = gr.Plot(label="Rate–distortion")
            bytes_plot = gr.Plot(label="Bytes per layer")
        with gr.Row():
            stages_plot = gr.Plot(label="Stages")
            with gr.Column():
                layer = gr.Dropdown([ui.DEFAULT_LAYER], value=ui.DEFAULT_LAYER, label="Layer")
                spectrum_plot = gr.Plot(label="Singular values")
        hist_plot = gr.Plot(label="Weights and codebook")
        with gr.Accordion("Auto: per-layer settings for a target", open=True):
            gr.Markdown(
                "Not every layer is equally sensitive. nerfcomp measures what each layer's "
                "bits, rank and pruning cost in PSNR and in bytes, picks per layer the smallest "
                "file that keeps your target, and checks it on every held-out view. Edit the "
                "table and press *Apply* to try your own allocation."
            )
            with gr.Row():
                with gr.Column(scale=1, min_width=320):
                    goal = gr.Radio(list(ui_auto.GOALS), value=ui_auto.GOALS[0], label="Target")
                    target_pct = gr.Slider(
                        90, 99.9, value=99, step=0.1, label="Keep PSNR ≥ (% of the original's)"
                    )
                    target_kb = gr.Number(60, minimum=1, label="File size ≤ (KB)")
                    auto_steps = gr.Number(
                        0, precision=0, minimum=0, label="ADMM steps after (0: instant, ~10 s)"
                    )
                    with gr.Row():
                        auto_btn = gr.Button("Find allocation", variant="primary")
                        auto_cancel = gr.Button("Cancel", variant="stop")
                    auto_status = gr.Markdown()
                    alloc = gr.Dataframe(
                        headers=ui_auto.TABLE_HEADERS,
                        column_count=len(ui_auto.TABLE_HEADERS),
                        datatype=["str", "number", "str", "number", "number", "str"],
                        type="array",
                        interactive=True,
                        label="Allocation (edit bits, rank, prune)",
                        elem_id="nc-alloc",
                    )
                    apply_btn = gr.Button("Apply edited table")
                with gr.Column(scale=2):
                    auto_pair = gr.ImageSlider(format="png", label="original ◀ ▶ auto allocation")
                    with gr.Row():
                        auto_rd = gr.Plot(label="Rate–distortion")
                        auto_bytes = gr.Plot(label="Bytes per layer")
                    auto_json = gr.JSON(
                        label="Allocation (exact)", max_height=260, elem_id="nc-auto"
                    )
        with gr.Row():
            with gr.Column():
                gr.Markdown("### Refine with ADMM")
                steps = gr.Number(ui.DEFAULT_ADMM_STEPS, precision=0, minimum=1, label="ADMM steps")
                with gr.Row():
                    refine_btn = gr.Button("Refine", variant="primary")
                    cancel_btn = gr.Button("Cancel", variant="stop")
                refine_status = gr.Markdown()
                admm_plot = gr.Plot(label="ADMM")
                refine_json = gr.JSON(label="Refined (exact)", visible=True)
            with gr.Column():
                gr.Markdown("### Orbit video")
                frames = gr.Slider(8, 96, value=24, step=4, label="Frames")
                orbit_btn = gr.Button("Render orbit")
                video = gr.Video(label="original | compressed", autoplay=True, loop=True)
            with gr.Column():
                gr.Markdown("### Export")
                export_btn = gr.Button("Download .nrc file (exact score)")
                nrc_file = gr.File(label=".nrc file")
                export_json = gr.JSON(label="Exact score of the file")
                eval_size = gr.Number(100, precision=0, visible=False, label="eval_size")
                csv_btn = gr.Button("Download rate–distortion table (CSV)")
                csv_file = gr.File(label="CSV")
        with gr.Accordion("Your own model", open=False):
            gr.Markdown(
                "Explore **your NeRF checkpoint** (this project's safetensors format, as written "
                "by `python -m nerfcomp train`), scored against a scene's ground truth, or "
                "**open a .nrc file** to decode and view it. Files are checked before use "
                f"(at most {ui.MAX_UPLOAD_MB} MB; pickles are never loaded)."
            )
            with gr.Row():
                with gr.Column():
                    ckpt_file = gr.File(
                        label="Explore a checkpoint (.safetensors)",
                        file_types=[".safetensors"],
                        type="filepath",
                    )
                    gt_scene = gr.Dropdown(
                        list(ui.scenes.SCENES), value="primitives", label="Score against scene"
                    )
                    upload_status = gr.Markdown()
                with gr.Column():
                    nrc_in = gr.File(label="Open a .nrc file", file_types=[".nrc"], type="filepath")
                    nrc_pair = gr.ImageSlider(format="png", label="ground truth ◀ ▶ decoded file")
                    nrc_json = gr.JSON(label="Decoded file (exact score)")
        with gr.Accordion("How it works", open=False):
            gr.Markdown(
                HOW_IT_WORKS.read_text(),
                latex_delimiters=[
                    {"left": "$$", "right": "$$", "display": True},
                    {"left": "$", "right": "$", "display": False},
                ],
            )

        setting = [scene, bits, rank, prune]
        main_in = [*setting, azimuth, elevation, size, keep_ends, fmt, steps, error_vs]
        main_out = [pair, error_img, cards, readout, size_line, bytes_plot, rd_plot]
        inspect_in = [*setting, layer, keep_ends, fmt, steps]
        inspect_out = [stages_plot, hist_plot, spectrum_plot]
        controls = [bits, fmt, rank, prune, keep_ends, steps]
        # the slider path: two users' calls run at once; long jobs (refine, video, export,
        # uploads) queue one at a time on their own, so they never hold the slider path
        engine = {"concurrency_id": "engine", "concurrency_limit": 2, "preprocess": False}
        long = {"concurrency_id": "long", "concurrency_limit": 1, "preprocess": False}
        quiet = {**engine, "api_visibility": "private", "show_progress": "minimal"}

        def refresh(event):  # after an event that changed the controls: recompute everything
            return event.then(ui.compress, main_in, main_out, **quiet).then(
                ui.inspect_setting, inspect_in, inspect_out, **quiet
            )

        on_release = [
            bits.release,
            rank.release,
            prune.release,
            azimuth.release,
            elevation.release,
            size.input,
            keep_ends.input,
            fmt.input,
            error_vs.input,
            steps.submit,
            demo.load,
        ]
        gr.on(
            on_release,
            ui.compress,
            main_in,
            main_out,
            api_name="compress",
            trigger_mode="always_last",
            show_progress="minimal",
            **engine,
        ).then(ui.inspect_setting, inspect_in, inspect_out, **quiet)
        gr.on(
            [bits.input, rank.input, prune.input],
            ui.estimate,
            [*setting, keep_ends, fmt],
            size_line,
            api_name="estimate",
            trigger_mode="always_last",
            show_progress="hidden",
            preprocess=False,
            concurrency_limit=4,
        )
        layer.input(
            ui.inspect_setting,
            inspect_in,
            inspect_out,
            api_name="inspect",
            trigger_mode="always_last",
            show_progress="minimal",
            **engine,
        )
        demo.load(ui.scene_layers, scene, layer, api_visibility="private")
        raw = {"preprocess": False}  # the handlers validate what they get, with short messages
        refresh(scene.input(ui.scene_layers, scene, layer, api_name="scene", **raw))
        refresh(view.input(ui.view_angles, view, [azimuth, elevation], api_name="view", **raw))
        for btn, fn, name in [
            (p_report, ui.preset_report, "preset_report"),
            (p_best, ui.preset_best, "preset_best"),
            (p_small, ui.preset_smallest, "preset_smallest"),
        ]:
            refresh(btn.click(fn, scene, [*controls, preset_status], api_name=name, **raw))
        run = refine_btn.click(
            ui.refine,
            [*setting, steps, keep_ends, fmt],
            [refine_status, admm_plot, refine_json],
            api_name="refine",
            **long,
        )
        run.success(ui.compress, main_in, main_out, **quiet)
        cancel_btn.click(
            ui.cancel_refine, None, refine_status, api_name="cancel", cancels=[run], queue=False
        )
        orbit_btn.click(
            ui_files.orbit,
            [*setting, frames, size, keep_ends, fmt, steps],
            video,
            api_name="orbit",
            **long,
        )
        export_btn.click(
            ui_files.export,
            [*setting, keep_ends, fmt, steps, eval_size],
            [nrc_file, export_json],
            api_name="export",
            **long,
        )
        auto_out = [auto_status, alloc, auto_pair, auto_rd, auto_bytes, auto_json]
        camera = [azimuth, elevation, size]
        auto_btn.click(
            ui_auto.auto_find,
            [scene, goal, target_pct, target_kb, auto_steps, *camera],
            auto_out,
            api_name="auto",
            **long,
        )
        apply_btn.click(
            ui_auto.auto_apply, [scene, alloc, *camera], auto_out, api_name="auto_apply", **long
        )
        auto_cancel.click(ui.cancel_refine, None, auto_status, api_name="cancel_auto", queue=False)
        csv_btn.click(ui_files.sweep_csv, scene, csv_file, api_name="sweep_csv", **raw)
        refresh(
            ckpt_file.upload(
                ui_files.upload_checkpoint,
                [ckpt_file, gt_scene],
                [scene, upload_status],
                api_name="upload_checkpoint",
                **{**long, "preprocess": True},  # the file: moved into Gradio's cache first
            ).success(ui.scene_layers, scene, layer, api_visibility="private")
        )
        nrc_in.upload(
            ui_files.open_nrc,
            [nrc_in, azimuth, elevation, size],
            [nrc_pair, nrc_json],
            api_name="open_nrc",
            **{**long, "preprocess": True},
        )
    return demo


if __name__ == "__main__":
    build_demo().queue().launch(**LAUNCH)
