"""Automatic per-layer allocation for a target, verified by real evaluations (issue 6).

``auto_allocate`` measures the engine's sensitivity table once per model, picks per-layer
settings for the target with ``allocate.allocate``, and scores every pick on every held-out
view. The table's prediction is close but not exact (a few thousand probe rays, and layers'
errors do not add up exactly), so the budget handed to ``allocate`` is rescaled by what the
evaluations measured, a few rounds at most; the smallest file that met the target is kept.

With ``admm_steps`` the allocation is then refined by ADMM with its per-layer constraints.
ADMM wins back much of what the instant allocation loses, so for a PSNR target it searches
smaller byte budgets by bisection, each allocation refined and scored (minutes per round).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nerfcomp.compress.allocate import SensitivityTable, allocate, config_from_choice
from nerfcomp.compress.config import CompressionConfig

__all__ = ["AutoResult", "auto_allocate"]

Progress = Callable[[float, str], None]


@dataclass
class AutoResult:
    """The allocation found, as a config, with its measured file and scores."""

    config: CompressionConfig  # admm_steps included when refined
    psnr: float  # over every held-out view, of the file's model
    psnr_original: float
    bytes: int  # of the file
    met: bool  # whether the target holds (measured)
    target: dict  # {"psnr_drop_percent": p} or {"target_bytes": n}
    predicted: dict  # the table's bytes and psnr for the chosen allocation (before ADMM)
    rounds: list[dict] = field(default_factory=list)  # every allocation verified
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {
            **self.target,
            "met": self.met,
            "psnr": self.psnr,
            "psnr_original": self.psnr_original,
            "psnr_percent": round(100 * self.psnr / self.psnr_original, 2),
            "bytes": self.bytes,
            "config": self.config.to_dict(),
            "predicted": self.predicted,
            "rounds": self.rounds,
            "seconds": round(self.seconds, 2),
        }


class _Search:
    """Allocations tried for one target: each compressed, scored and remembered."""

    def __init__(self, engine, name: str, report: Progress, stages: int, cancel) -> None:
        self.engine, self.name, self.cancel = engine, name, cancel
        self._report, self.stages, self.stage = report, stages, 0
        self.table: SensitivityTable = engine.sensitivity(name, self.progress, cancel)
        self.stage = 1
        self.original = engine.score(name, None)["psnr"]
        self.tried: list[tuple[dict, CompressionConfig]] = []

    def progress(self, fraction: float, message: str) -> None:
        """Progress within the current stage (the table, then one per allocation tried)."""
        self._report(min(1.0, (self.stage + fraction) / self.stages), message)

    def verify(self, choice: dict[str, int], budget: float, admm_steps: int = 0) -> dict:
        cfg = config_from_choice(self.table, choice, admm_steps)
        size, mse = self.table.predict(choice)
        what = f"ADMM ({admm_steps} steps)" if admm_steps else "instant"
        self.progress(0.0, f"checking allocation {len(self.tried) + 1} ({what}) on every view")
        comp = self.engine.compress(self.name, cfg, self.progress, self.cancel)
        row = {
            "budget": round(budget, 4),
            "admm_steps": admm_steps,
            "bytes": comp.bytes,
            "psnr": self.engine.score(self.name, cfg)["psnr"],
            "predicted_bytes": size,
            "predicted_psnr": round(self.original - 10 * math.log10(mse / self.table.mse0), 3),
        }
        self.tried.append((row, cfg))
        self.stage += 1
        return row


def auto_allocate(
    engine,
    name: str,
    target_psnr_drop: float | None = None,
    target_bytes: int | None = None,
    admm_steps: int = 0,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    rounds: int = 3,
    admm_rounds: int = 3,
) -> AutoResult:
    """Per-layer settings of base ``name`` for a target: the fewest bytes that keep PSNR
    >= (1 - target_psnr_drop/100) x the original's on every held-out view, or the best
    PSNR in a file of at most target_bytes.

    engine: a ``compress.engine.Engine``; rounds: instant allocations verified at most;
    admm_rounds: ADMM-refined allocations tried at most (with admm_steps; for a byte target,
    more than one only when a refined file came out over the budget).
    progress(fraction, message) is called as it goes. Raises ValueError for a bad target.
    """
    if (target_psnr_drop is None) == (target_bytes is None):
        raise ValueError("give exactly one of target_psnr_drop (percent) and target_bytes")
    if target_psnr_drop is not None and not 0.0 < float(target_psnr_drop) < 100.0:
        raise ValueError(f"target_psnr_drop must be a percent in (0, 100), got {target_psnr_drop}")
    if target_bytes is not None and int(target_bytes) < 1:
        raise ValueError(f"target_bytes must be a positive number of bytes, got {target_bytes}")
    if int(admm_steps) < 0:
        raise ValueError(f"admm_steps must be >= 0, got {admm_steps}")
    if int(rounds) < 1 or int(admm_rounds) < 1:
        raise ValueError(f"rounds and admm_rounds must be >= 1, got {rounds}, {admm_rounds}")
    start, report = time.perf_counter(), progress or (lambda f, m: None)
    stages = 1 + rounds + (admm_rounds + 1 if admm_steps else 0)  # for the progress bar
    search = _Search(engine, name, report, stages, cancel)
    if target_bytes is not None:
        target = {"target_bytes": int(target_bytes)}
        met = lambda row: row["bytes"] <= target_bytes  # noqa: E731
        _search_bytes(search, int(target_bytes), rounds)
        if admm_steps:
            _refine_bytes(search, int(target_bytes), int(admm_steps), admm_rounds)
    else:
        floor = search.original * (1.0 - float(target_psnr_drop) / 100.0)
        target = {"psnr_drop_percent": float(target_psnr_drop)}
        met = lambda row: row["psnr"] >= floor  # noqa: E731
        _search_psnr(search, search.original - floor, rounds, met)
        if admm_steps:
            _search_admm(search, int(admm_steps), admm_rounds, met)
    tried = [t for t in search.tried if bool(t[0]["admm_steps"]) == bool(admm_steps)]
    row, cfg = _best(tried, met, smaller=target_bytes is None)
    report(1.0, "done")
    return AutoResult(
        cfg,
        row["psnr"],
        search.original,
        row["bytes"],
        met(row),
        target,
        {"bytes": row["predicted_bytes"], "psnr": row["predicted_psnr"]},
        [r for r, _ in search.tried],
        time.perf_counter() - start,
    )


def _best(tried: list, met: Callable[[dict], bool], smaller: bool) -> tuple:
    """Among those that met the target, the smallest file (smaller) or the best PSNR; when
    none did, the closest: the best PSNR (smaller) or the smallest file."""
    feasible = [t for t in tried if met(t[0])]
    if feasible:
        key = (lambda t: -t[0]["bytes"]) if smaller else (lambda t: t[0]["psnr"])
        return max(feasible, key=key)
    key = (lambda t: t[0]["psnr"]) if smaller else (lambda t: -t[0]["bytes"])
    return max(tried, key=key)


def _search_psnr(search: _Search, drop_db: float, rounds: int, met) -> None:
    """Instant allocations for a PSNR drop of ``drop_db``: the table's error budget is
    ``scale`` x that drop, rescaled by the measured drop and kept between the scales known to
    meet the target and to miss it, until one meets it using most of the allowed drop."""
    table, scale, good, bad, seen = search.table, _FIRST_SCALE, 0.0, math.inf, set()
    for _ in range(rounds):
        choice = allocate(table, max_mse=table.mse0 * 10 ** (scale * drop_db / 10))
        key = tuple(sorted(choice.items()))
        if key in seen:  # the same allocation again: it fell short, or it was fine
            scale = scale * 0.6 if bad <= scale else scale * 1.5
            continue
        seen.add(key)
        row = search.verify(choice, scale)
        measured = search.original - row["psnr"]
        if met(row):
            good = max(good, scale)
            if measured >= _CLOSE_ENOUGH * drop_db:
                return
        else:
            bad = min(bad, scale)
        step = drop_db / max(measured, 0.05 * drop_db)
        guess = scale * min(2.0, step) if met(row) else scale * min(0.6, step)
        if good > 0 and bad < math.inf and not good < guess < bad:
            guess = math.sqrt(good * bad)
        scale = guess


# The first allocation aims at this fraction of the allowed drop (the table's prediction
# errs both ways by ~0.1 dB); a met target that used at least _CLOSE_ENOUGH of the drop ends
# the search: each round is a full evaluation (0.5-1.5 s on 2 CPU cores).
_FIRST_SCALE, _CLOSE_ENOUGH = 0.8, 0.6


def _search_bytes(search: _Search, budget: int, rounds: int) -> None:
    """Instant allocations for a file of at most ``budget`` bytes; where the file came out
    larger than the table said, the next round asks for that much less."""
    limit = budget
    for _ in range(rounds):
        row = search.verify(allocate(search.table, max_bytes=limit), limit)
        if row["bytes"] <= budget:
            return
        limit -= row["bytes"] - budget


def _refine_bytes(search: _Search, budget: int, steps: int, rounds: int) -> None:
    """The best instant allocation within ``budget`` bytes, refined by ADMM. ADMM changes how
    well the indices compress (measured: a file 3% over its budget), so where the refined file
    came out larger than ``budget``, the next round refines an allocation for that much less;
    ``rounds`` refinements at most."""
    fits = lambda row: row["bytes"] <= budget  # noqa: E731
    row, _ = _best(search.tried, fits, smaller=False)
    limit, refined = row["budget"], set()
    for _ in range(rounds):
        choice = allocate(search.table, max_bytes=int(limit))
        while tuple(sorted(choice.items())) in refined and limit >= 2:  # the same: ask for less
            limit *= 0.98
            choice = allocate(search.table, max_bytes=int(limit))
        refined.add(tuple(sorted(choice.items())))
        row = search.verify(choice, limit, steps)
        if fits(row):
            return
        limit -= row["bytes"] - budget


def _search_admm(search: _Search, steps: int, rounds: int, met) -> None:
    """ADMM-refined allocations for the PSNR target: byte budgets bisected (geometrically)
    between one that missed the target and one that met it, starting below the best instant
    allocation's size, which ADMM only has to improve on."""
    instant = [r for r, _ in search.tried if met(r)]
    hi = min((r["bytes"] for r in instant), default=None)
    if hi is None:  # no instant allocation met it: refine the closest one
        row, _ = _best(search.tried, met, smaller=True)
        hi = row["bytes"]
    lo, budget = None, 0.6 * hi
    for _ in range(rounds):
        row = search.verify(allocate(search.table, max_bytes=int(budget)), budget, steps)
        if met(row):
            hi = min(hi, row["bytes"])
        else:
            lo = budget if lo is None else max(lo, budget)
        budget = 0.6 * hi if lo is None else math.sqrt(lo * hi)
    if not any(met(r) for r, _ in search.tried if r["admm_steps"]):
        search.verify(allocate(search.table, max_bytes=int(hi)), hi, steps)
