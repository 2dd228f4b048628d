"""Plotly charts and image compositions for the explorer (pure functions of plain data).

Charts take numbers, not models, so they can be tested and reused outside the app:
bytes per layer, rate–distortion with its Pareto frontier, the waterfall of bytes through the
stages, a layer's weight histogram with its k-means codebook, its singular-value spectrum, the
ADMM PSNR curve. Images are uint8 numpy arrays (H, W, 3), sent as PNG by the app.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image, ImageDraw, ImageFont
from plotly.colors import sequential
from plotly.subplots import make_subplots

from nerfcomp.tables import pareto_front

__all__ = [
    "PART_COLORS",
    "admm_curve",
    "bytes_per_layer",
    "error_map_image",
    "pareto_front",
    "rate_distortion",
    "side_by_side",
    "singular_spectrum",
    "to_uint8",
    "waterfall",
    "weight_histogram",
]

FONT = dict(size=14)
PART_COLORS = {  # what the file stores, codec.PARTS order
    "indices": "#4c78a8",
    "codebooks": "#f58518",
    "factors": "#54a24b",
    "masks": "#b279a2",
    "biases": "#e45756",
    "dense": "#9d755d",
    "params": "#bab0ac",
    "header": "#72b7b2",
}
CURRENT = "#d62728"
TICKS = [v * 10**e for e in range(3, 8) for v in (1, 2, 5)]  # bytes, for log axes


def _layout(fig: go.Figure, title: str, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=16)),
        height=height,
        margin=dict(l=60, r=20, t=60, b=50),
        font=FONT,
        template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=-0.22, x=0),
        **kw,
    )
    return fig


def _kb(n: float) -> str:
    return f"{n / 1e3:,.1f} KB"


# --- bytes ---------------------------------------------------------------------------------


def bytes_per_layer(
    original: Mapping[str, Mapping[str, int]], compressed: Mapping[str, Mapping[str, int]]
) -> go.Figure:
    """Per layer: the float32 file's bytes (top) and the compressed file's (bottom), each bar
    stacked by what is stored; each row has its own scale.

    original, compressed: codec ``size_breakdown`` rows, layer → part → bytes."""
    layers = [name for name in compressed if name in original]
    totals = [sum(sum(r.values()) for r in rows.values()) for rows in (original, compressed)]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=[f"float32: {_kb(totals[0])}", f"now: {_kb(totals[1])}"],
    )
    for row, rows in enumerate((original, compressed), start=1):
        for part, color in PART_COLORS.items():
            y = [rows[n].get(part, 0) / 1e3 for n in layers]
            if any(y):
                fig.add_bar(
                    x=layers,
                    y=y,
                    name=part,
                    marker_color=color,
                    legendgroup=part,
                    showlegend=row == 2 or not any(compressed[n].get(part, 0) for n in layers),
                    hovertemplate="%{x}: %{y:.2f} KB",
                    row=row,
                    col=1,
                )
        fig.update_yaxes(title_text="KB", row=row, col=1)
    fig.update_layout(barmode="stack")
    ratio = totals[0] / max(totals[1], 1)
    return _layout(fig, f"Bytes per layer, by what the file stores ({ratio:.1f}× smaller)", 420)


def waterfall(stages: Sequence[Mapping]) -> go.Figure:
    """Bytes through the stages (first absolute, then the change each stage makes) and,
    below, the PSNR after each. stages: [{"label", "bytes", "psnr"}, ...]."""
    labels = [f"{s['label']}<br>{_kb(s['bytes'])}" for s in stages]
    sizes = [s["bytes"] / 1e3 for s in stages]
    deltas = [sizes[0]] + [b - a for a, b in zip(sizes, sizes[1:], strict=False)]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38])
    fig.add_trace(
        go.Waterfall(
            x=labels,
            y=deltas,
            measure=["absolute"] + ["relative"] * (len(stages) - 1),
            decreasing=dict(marker_color="#54a24b"),
            increasing=dict(marker_color="#e45756"),
            totals=dict(marker_color="#4c78a8"),
            name="bytes",
            hovertemplate="%{x}<extra></extra>",
        ),
        row=1,
        col=1,
    )
    psnr = [s["psnr"] for s in stages]
    fig.add_scatter(
        x=labels,
        y=psnr,
        mode="lines+markers+text",
        text=[f"{p:.2f} dB" for p in psnr],
        textposition="top center",
        marker=dict(size=10, color=CURRENT),
        line=dict(color=CURRENT),
        name="PSNR (held-out rays)",
        row=2,
        col=1,
    )
    finite = [p for p in psnr if math.isfinite(p)] or [0.0]
    fig.update_yaxes(title_text="KB", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="dB", range=[min(finite) - 2, max(finite) + 3], row=2, col=1)
    return _layout(fig, "Bytes through the stages, and the PSNR after each", 420)


# --- rate–distortion ------------------------------------------------------------------------


def _setting(p: Mapping) -> str:
    rank = "full" if p.get("rank") in (None, 0) else p["rank"]
    admm = f", ADMM {p['admm_steps']}" if p.get("admm_steps") else ""
    if p.get("admm_lr"):
        first, last = p["admm_lr"]
        admm += f" (lr {first:.0e})" if first == last else f" (lr {first:.0e}→{last:.0e})"
    per_layer = ", ".join(f"{n} {_layer(lc)}" for n, lc in (p.get("layers") or {}).items())
    per_layer = f"<br>per layer: {per_layer}" if per_layer else ""
    return f"{p['bits']} bit, rank {rank}, prune {p.get('prune', 0):.2f}{admm}{per_layer}"


def _layer(lc: Mapping) -> str:
    """A per-layer override, shortly: "5 bit", "5 bit r16", "4 bit p0.5"."""
    text = f"{lc.get('bits')} bit" if lc.get("bits") is not None else "default bits"
    text += f" r{lc['rank']}" if lc.get("rank") else ""
    return text + (f" p{lc['prune']:g}" if lc.get("prune") else "")


def rate_distortion(
    scene: str,
    sweep: Mapping | None,
    current: Mapping,
    original: Mapping,
    label: str = "current setting",
    uniform_front: bool = False,
) -> go.Figure:
    """PSNR vs bytes: the sweep's points and Pareto frontier, the float32 original and the
    current setting (named ``label`` in the legend); ``uniform_front``: the frontier of the
    uniform settings only (no per-layer overrides), to compare an allocation with.
    ``uirevision`` is the scene, so the user's zoom survives updates.

    sweep: the sweep table ({"points": [...]}) or None; current: {"bytes", "psnr", "bits",
    "rank", "prune"}; original: {"bytes", "psnr"}."""
    fig = go.Figure()
    points = list(sweep["points"]) if sweep else []
    for refined, symbol, name in [(False, "circle", "sweep"), (True, "diamond", "sweep + ADMM")]:
        pts = [p for p in points if bool(p.get("admm_steps")) == refined]
        if pts:
            fig.add_scatter(
                x=[p["bytes"] for p in pts],
                y=[p["psnr"] for p in pts],
                mode="markers",
                name=name,
                marker=dict(symbol=symbol, size=8, color="#9ecae1" if not refined else "#3182bd"),
                text=[_setting(p) for p in pts],
                hovertemplate="%{text}<br>%{x:,} B, %{y:.2f} dB<extra></extra>",
            )
    front = pareto_front([p for p in points if not (uniform_front and p.get("layers"))])
    if front:
        fig.add_scatter(
            x=[p["bytes"] for p in front],
            y=[p["psnr"] for p in front],
            mode="lines",
            name="uniform settings' frontier" if uniform_front else "Pareto frontier",
            line=dict(color="#08519c", width=2, shape="hv"),
            hoverinfo="skip",
        )
    fig.add_hline(
        y=0.99 * original["psnr"],
        line=dict(dash="dot", color="#888"),
        annotation_text="99% of original PSNR",
        annotation_position="bottom left",
    )
    fig.add_scatter(
        x=[original["bytes"]],
        y=[original["psnr"]],
        mode="markers",
        name="float32 original",
        marker=dict(symbol="square", size=12, color="#555"),
        hovertemplate="float32: %{x:,} B, %{y:.2f} dB<extra></extra>",
    )
    fig.add_scatter(
        x=[current["bytes"]],
        y=[current["psnr"]],
        mode="markers",
        name=label,
        marker=dict(symbol="star", size=20, color=CURRENT, line=dict(width=1, color="white")),
        text=[_setting(current)],
        hovertemplate="%{text}<br>%{x:,} B, %{y:.2f} dB (held-out rays)<extra></extra>",
    )
    if not sweep:
        fig.add_annotation(
            text=f"no sweep table yet: python -m nerfcomp sweep --scene {scene}",
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.05,
            showarrow=False,
            font=dict(size=13, color="#666"),
        )
    fig.update_layout(
        xaxis=dict(
            type="log",
            title="file size",
            tickvals=TICKS,
            ticktext=[_kb(t).replace(".0 ", " ") for t in TICKS],
        ),
        yaxis=dict(title="PSNR on held-out views (dB)"),
        uirevision=scene,
    )
    return _layout(fig, "Rate–distortion", height=380)


# --- inside one layer ------------------------------------------------------------------------


def weight_histogram(
    layer: str,
    values: Mapping[str, np.ndarray],
    codebooks: Mapping[str, np.ndarray | None],
) -> go.Figure:
    """Histogram of each stored tensor's kept weights with its k-means centroids (ticks on
    the axis) and decision boundaries (dashed, midway between centroids).

    values: part name ("W", or "A" and "B") → kept values (n,); codebooks: → (k,) or None."""
    parts = list(values)
    fig = make_subplots(rows=1, cols=len(parts), subplot_titles=[f"{layer}.{p}" for p in parts])
    for col, part in enumerate(parts, start=1):
        v = np.asarray(values[part], dtype=np.float64)
        counts, edges = np.histogram(v, bins=120)
        fig.add_bar(
            x=(edges[:-1] + edges[1:]) / 2,
            y=counts,
            width=np.diff(edges),
            marker_color="#9ecae1",
            name="weights",
            showlegend=col == 1,
            row=1,
            col=col,
        )
        cb = codebooks.get(part)
        if cb is None or len(cb) == 0:
            continue
        cb = np.sort(np.asarray(cb, dtype=np.float64))
        top = float(counts.max()) * 1.05
        bounds = (cb[:-1] + cb[1:]) / 2
        bx = [x for b in bounds for x in (b, b, None)]
        by = [y for _ in bounds for y in (0.0, top, None)]
        fig.add_scatter(
            x=bx,
            y=by,
            mode="lines",
            line=dict(color="#888", dash="dash", width=1),
            name="decision boundaries",
            showlegend=col == 1,
            hoverinfo="skip",
            row=1,
            col=col,
        )
        fig.add_scatter(
            x=cb,
            y=np.zeros_like(cb),
            mode="markers",
            marker=dict(symbol="triangle-up", size=9, color=CURRENT),
            name=f"centroids (k = {len(cb)})",
            showlegend=col == 1,
            hovertemplate="centroid %{x:.4f}<extra></extra>",
            row=1,
            col=col,
        )
    fig.update_layout(bargap=0)
    return _layout(fig, f"{layer}: weights and their k-means codebook")


def singular_spectrum(
    layer: str, singular_values: np.ndarray, rank: int | None, break_even: float
) -> go.Figure:
    """Singular values of a layer's weight (log scale), the rank cut and the break-even rank
    r·(m + n) = m·n above which factors are no smaller than W (the layer stays dense)."""
    s = np.asarray(singular_values, dtype=np.float64)
    idx = np.arange(1, len(s) + 1)
    energy = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-30)
    fig = go.Figure()
    kept = idx <= (rank or len(s))
    fig.add_bar(x=idx[kept], y=s[kept], name="kept", marker_color="#4c78a8")
    if not kept.all():
        fig.add_bar(x=idx[~kept], y=s[~kept], name="cut", marker_color="#d9d9d9")
    fig.add_vline(
        x=break_even + 0.5,
        line=dict(dash="dot", color="#888"),
        annotation_text=f"break-even r = {break_even:.0f}",
        annotation_position="top right",
    )
    if rank:
        fig.add_vline(
            x=rank + 0.5,
            line=dict(color=CURRENT, width=3),
            annotation_text=f"rank {rank}: keeps {100 * energy[rank - 1]:.1f}% of ‖W‖²",
            annotation_position="top left",
        )
        title = f"{layer}: singular values, rank cut at {rank}"
    else:
        title = f"{layer}: singular values (kept dense)"
    fig.update_layout(
        barmode="overlay",
        bargap=0,
        yaxis=dict(type="log", title="σᵢ", dtick=1, exponentformat="power"),
        xaxis=dict(title="i"),
    )
    return _layout(fig, title)


def admm_curve(history: Sequence[tuple[float, float]], steps: int) -> go.Figure:
    """PSNR as ADMM refinement goes: history [(fraction done, psnr dB), ...]."""
    fig = go.Figure()
    if history:
        fig.add_scatter(
            x=[round(f * steps) for f, _ in history],
            y=[p for _, p in history],
            mode="lines+markers",
            line=dict(color=CURRENT),
            name="PSNR",
        )
    fig.update_layout(
        xaxis=dict(title="ADMM step", range=[0, steps]), yaxis_title="train PSNR (dB)"
    )
    return _layout(fig, "ADMM refinement: PSNR as it goes", height=280)


# --- images ----------------------------------------------------------------------------------


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) float in [0, 1] (tensor or array) → uint8 array."""
    a = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _colormap(values: np.ndarray, name: str = "Inferno") -> np.ndarray:
    """values in [0, 1] → (…, 3) uint8 by linear interpolation of a Plotly colour scale."""
    stops = getattr(sequential, name)
    rgb = np.array([[int(h[i : i + 2], 16) for i in (1, 3, 5)] for h in stops], dtype=np.float64)
    pos = np.linspace(0.0, 1.0, len(stops))
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, pos, rgb[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def error_map_image(error: np.ndarray, vmax: float, display: int = 256) -> np.ndarray:
    """Absolute error (H, W) ≥ 0 as a colour map clipped at ``vmax``, enlarged (nearest) to
    about ``display`` pixels, with a colour bar and its scale on the right. → (H', W', 3)."""
    e = np.asarray(error, dtype=np.float64)
    k = max(1, display // max(e.shape))
    img = _colormap(e / vmax).repeat(k, axis=0).repeat(k, axis=1)
    h = img.shape[0]
    bar_w, pad, text_w = 14, 6, 64
    canvas = Image.new("RGB", (img.shape[1] + pad + bar_w + text_w, h + 24), "white")
    canvas.paste(Image.fromarray(img), (0, 12))
    ramp = _colormap(np.linspace(1.0, 0.0, h))[:, None, :].repeat(bar_w, axis=1)
    x0 = img.shape[1] + pad
    canvas.paste(Image.fromarray(ramp), (x0, 12))
    draw, font = ImageDraw.Draw(canvas), _font(12)
    for frac in (0.0, 0.5, 1.0):
        y = 12 + round((1 - frac) * (h - 1))
        draw.line([(x0 + bar_w, y), (x0 + bar_w + 4, y)], fill="black")
        label = f"{frac * vmax:.3g}" + ("+" if frac == 1.0 else "")
        draw.text((x0 + bar_w + 6, y - 7), label, fill="black", font=font)
    return np.asarray(canvas)


def side_by_side(images: Sequence[np.ndarray], labels: Sequence[str], scale: int = 2) -> np.ndarray:
    """uint8 images (H, W, 3) of one size, enlarged ×scale, side by side with a caption strip;
    width and height even (H.264 needs them even)."""
    big = [np.asarray(a).repeat(scale, axis=0).repeat(scale, axis=1) for a in images]
    h, w = big[0].shape[:2]
    gap, strip = 4, 22
    width = len(big) * w + (len(big) - 1) * gap
    canvas = Image.new("RGB", (width + width % 2, h + strip + (h + strip) % 2), "white")
    draw, font = ImageDraw.Draw(canvas), _font(14)
    for i, (a, label) in enumerate(zip(big, labels, strict=True)):
        x = i * (w + gap)
        canvas.paste(Image.fromarray(a), (x, strip))
        draw.text((x + 4, 3), label, fill="black", font=font)
    return np.asarray(canvas)
