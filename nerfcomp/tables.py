"""Rate–distortion table helpers (plain data): the points of a sweep table are dicts with at
least ``bytes`` and ``psnr``, and the sweep's ``admm_steps`` / ``layers`` where it has them.
Shared by the sweep, the charts and the app's presets without importing the engine."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["pareto_front", "smallest_uniform"]


def pareto_front(points: Iterable[Mapping]) -> list[Mapping]:
    """The points no other point beats on both bytes (fewer) and PSNR (higher), by bytes."""
    front: list[Mapping] = []
    for p in sorted(points, key=lambda p: (p["bytes"], -p["psnr"])):
        if not front or p["psnr"] > front[-1]["psnr"]:
            front.append(p)
    return front


def smallest_uniform(points: Iterable[Mapping], psnr: float, admm: bool = True) -> Mapping | None:
    """The smallest point with one setting for every layer (no per-layer overrides) and PSNR
    >= psnr, the better PSNR among equal sizes; admm False: among the instant ones only."""
    ok = [
        p
        for p in points
        if not p.get("layers") and p["psnr"] >= psnr and (admm or not p.get("admm_steps"))
    ]
    return min(ok, key=lambda p: (p["bytes"], -p["psnr"])) if ok else None
