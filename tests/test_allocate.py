"""Per-layer allocation: the table search, the probe, LC rank selection, the file (issue 6)."""

import itertools
import json
import random

import pytest
import torch

from nerfcomp.compress import CompressionConfig, LayerConfig, compress, decode, encode, read_header
from nerfcomp.compress.allocate import (
    Probe,
    SensitivityTable,
    allocate,
    candidate_settings,
    config_from_choice,
    lc_rank_selection,
    sensitivity_table,
)
from nerfcomp.compress.config import ResolvedLayer
from nerfcomp.compress.layers import quantize_stored, tensors_to_store
from nerfcomp.compress.lowrank import svd_from_weight
from nerfcomp.model import NeRF, NeRFConfig
from nerfcomp.render import OccupancyGrid, RenderSettings

S = ResolvedLayer  # (bits, rank, prune)


def _table(rows: dict[str, list[tuple[int, float]]], mse0: float = 1.0) -> SensitivityTable:
    """A table whose settings are named by their row: (bytes, added mse) per candidate."""
    return SensitivityTable(
        mse0,
        {n: [(S(i + 1, None, 0.0), b, d) for i, (b, d) in enumerate(r)] for n, r in rows.items()},
    )


def _brute_force(table: SensitivityTable, max_mse=None, max_bytes=None):
    names = list(table.rows)
    best = None
    for idx in itertools.product(*(range(len(table.rows[n])) for n in names)):
        choice = dict(zip(names, idx, strict=True))
        size, mse = table.predict(choice)
        if max_mse is not None and mse <= max_mse and (best is None or size < best[0]):
            best = (size, mse)
        if max_bytes is not None and size <= max_bytes and (best is None or mse < best[1]):
            best = (size, mse)
    return best


def test_allocator_spends_bytes_where_the_error_is_by_construction():
    # "a" is sensitive (each step down costs a lot of error), "b" is not: the budget of 0.1
    # added mse lets "b" drop to its smallest setting and keeps "a" at its exact one.
    table = _table(
        {"a": [(1000, 0.0), (500, 0.5), (250, 2.0)], "b": [(1000, 0.0), (500, 0.01), (250, 0.02)]}
    )
    choice = allocate(table, max_mse=1.1)
    assert choice == {"a": 0, "b": 2}
    assert table.predict(choice) == (1250, pytest.approx(1.02))
    # with a byte budget instead: 1250 bytes buys the same answer, 1000 forces "a" down once
    assert allocate(table, max_bytes=1250) == {"a": 0, "b": 2}
    assert allocate(table, max_bytes=1000) == {"a": 1, "b": 1}


def test_allocator_meets_the_budget_and_equals_exhaustive_search_on_random_tables():
    rng = random.Random(0)
    for trial in range(60):
        rows = {}
        for layer in range(4):
            sizes = sorted(rng.sample(range(50, 2000), 5), reverse=True)
            errs = [0.0] + sorted(rng.uniform(0, 1) for _ in range(4))  # row 0: lossless
            rows[f"l{layer}"] = list(zip(sizes, errs, strict=True))
        table = _table(rows, mse0=0.5)
        budget = 0.5 + rng.uniform(0.2, 2.0)
        choice = allocate(table, max_mse=budget)
        size, mse = table.predict(choice)
        assert mse <= budget
        optimum = _brute_force(table, max_mse=budget)
        assert size == optimum[0], (trial, size, optimum)  # exact: 1-byte quanta here
        byte_budget = rng.randint(800, 6000)
        choice = allocate(table, max_bytes=byte_budget)
        size, mse = table.predict(choice)
        optimum = _brute_force(table, max_bytes=byte_budget)
        if optimum is None:  # nothing fits: the smallest file
            assert size == sum(min(b for _, b, _ in rows) for rows in table.rows.values())
        else:
            assert size <= byte_budget and mse == pytest.approx(optimum[1])


def test_allocator_returns_the_closest_choice_when_nothing_fits_and_rejects_bad_calls():
    table = _table({"a": [(100, 0.0), (50, 1.0)]}, mse0=1.0)
    assert allocate(table, max_mse=0.5) == {"a": 0}  # the most accurate, still over budget
    assert allocate(table, max_bytes=10) == {"a": 1}  # the smallest, still over budget
    with pytest.raises(ValueError, match="exactly one"):
        allocate(table)
    with pytest.raises(ValueError, match="exactly one"):
        allocate(table, max_mse=1.0, max_bytes=10)


def test_config_from_choice_uses_the_most_common_setting_as_default():
    table = SensitivityTable(
        1.0,
        {
            "x": [(S(4, None, 0.0), 10, 0.0), (S(8, None, 0.0), 20, 0.0)],
            "y": [(S(4, None, 0.0), 10, 0.0)],
            "w": [(S(8, 32, 0.0), 10, 0.0), (S(4, None, 0.0), 10, 0.0)],
            "z": [(S(4, None, 0.0), 10, 0.0), (S(3, 16, 0.5), 5, 0.0)],
        },
    )
    cfg = config_from_choice(table, {"x": 1, "y": 0, "w": 1, "z": 1}, admm_steps=7)
    assert (cfg.bits, cfg.rank, cfg.prune, cfg.admm_steps) == (4, None, 0.0, 7)
    assert cfg.for_layer("x") == S(8, None, 0.0)
    assert cfg.for_layer("y") == S(4, None, 0.0)
    assert cfg.for_layer("z") == S(3, 16, 0.5)


def test_candidate_settings_try_ranks_only_where_factors_are_smaller():
    dense_only = candidate_settings((3, 64))  # r·67 < 192 never holds for r = 16 or 32
    assert {s.rank for s in dense_only} == {None}
    square = candidate_settings((128, 128))
    assert {s.rank for s in square} == {None, 16, 32}
    assert {s.bits for s in square} == {2, 3, 4, 5, 6, 7, 8, 16}


def _tiny_nerf() -> NeRF:
    torch.manual_seed(0)
    model = NeRF(NeRFConfig(width=16, depth=3, skip=1)).eval()
    with torch.no_grad():
        model.sigma.bias.fill_(2.0)  # dense everywhere: every ray has samples
    return model


def _probe(model: NeRF) -> Probe:
    g = torch.Generator().manual_seed(0)
    origins = torch.tensor([[0.0, 0.0, -3.0]]).repeat(64, 1)
    dirs = torch.nn.functional.normalize(
        torch.tensor([0.0, 0.0, 1.0]) + 0.2 * torch.randn(64, 3, generator=g), dim=-1
    )
    full = OccupancyGrid(torch.ones(8, 8, 8, dtype=torch.bool), 1.5)
    settings = RenderSettings(aabb=1.5, step_size=0.05)
    return Probe(model, origins, dirs, torch.rand(64, 3, generator=g), full, settings)


def _stored_fn(model):
    def stored(wanted):
        items = [
            tensors_to_store(
                model.get_submodule(layer).weight,
                s.rank,
                s.prune,
                svd_from_weight(model.get_submodule(layer).weight),
            )
            for layer, s in wanted
        ]
        flat = [(i, part, item) for i, parts in enumerate(items) for part, item in parts.items()]
        bits = [wanted[i][1].bits for i, _, _ in flat]
        out = [{} for _ in wanted]
        for (i, part, _), st in zip(flat, quantize_stored([f[2] for f in flat], bits), strict=True):
            out[i][part] = st
        return out

    return stored


def test_sensitivity_finds_a_layer_that_cannot_change_the_image_and_the_allocator_starves_it():
    model = _tiny_nerf()
    with torch.no_grad():  # the colour head ignores `feature`: its output is multiplied by 0
        model.view.weight[:, : model.config.width] = 0.0
    probe = _probe(model)
    assert probe.samples > 64 * 10
    shape = lambda name: tuple(model.get_submodule(name).weight.shape)  # noqa: E731
    settings = {
        n: candidate_settings(shape(n), (2, 4, 8, 16)) for n in ("trunk.0", "feature", "rgb")
    }
    table = sensitivity_table(model, probe, settings, _stored_fn(model))
    assert all(d == 0.0 for _, _, d in table.rows["feature"])  # exactly: replayed upstream
    assert table.rows["trunk.0"][0][2] > 0.0  # 2 bits of the first layer does change colours
    # errors fall as bits rise (dense rows, bits 2 → 16) and bytes rise
    dense = [r for r in table.rows["trunk.0"] if r[0].rank is None and r[0].prune == 0.0]
    assert [r[1] for r in dense] == sorted(r[1] for r in dense)
    assert dense[-1][2] < dense[0][2]
    budget = table.mse0 + 0.25 * table.rows["trunk.0"][0][2]
    choice = allocate(table, max_mse=budget)
    smallest = min(range(len(table.rows["feature"])), key=lambda i: table.rows["feature"][i][1])
    assert choice["feature"] == smallest
    assert table.predict(choice)[1] <= budget
    # the probe's mse after the swap is back to the original's: the model is restored
    assert probe.mse_with("rgb", model.rgb) == 0.0


def test_lc_rank_selection_trades_error_for_storage_by_alpha():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    v, _ = torch.linalg.qr(torch.randn(64, 64, generator=g))
    s = torch.tensor([10.0, 8.0] + [1e-3] * 62)  # rank 2 up to tiny noise
    svds = {"w": svd_from_weight(u @ torch.diag(s) @ v.T)}
    assert lc_rank_selection(svds, alpha=0.0) == {"w": None}  # storage is free: keep W
    assert lc_rank_selection(svds, alpha=1e-6) == {"w": 2}  # the two real directions
    assert lc_rank_selection(svds, alpha=10.0) == {"w": 1}  # storage dominates


def test_per_layer_configs_round_trip_through_the_file():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(37, 70), torch.nn.ReLU(), torch.nn.Linear(70, 70), torch.nn.Linear(70, 5)
    )
    cfg = CompressionConfig(
        bits=4,
        layers={
            "0": LayerConfig(bits=8),
            "2": LayerConfig(bits=3, rank=16, prune=0.25),
            "3": LayerConfig(bits=16, rank=0),
        },
    )
    small = compress(model, cfg)
    data = encode(small, {"config": cfg.to_dict()})
    again = decode(data)
    x = torch.randn(9, 37)
    assert torch.equal(again(x), small(x))
    meta = json.loads(json.dumps(read_header(data)["meta"]))
    assert CompressionConfig.from_dict(meta["config"]) == cfg
    assert [
        m.stored["W" if "W" in m.stored else "A"].bits for m in again if hasattr(m, "stored")
    ] == [8, 3, 16]
    assert again[2].factorized and not again[0].factorized


def test_the_auto_panel_chart_draws_the_uniform_settings_frontier():
    from nerfcomp import figures

    sweep = {
        "points": [
            {"bits": 8, "rank": None, "prune": 0.0, "psnr": 30.0, "bytes": 100},
            {"bits": 4, "rank": None, "prune": 0.0, "psnr": 20.0, "bytes": 50},
            {"bits": 3, "rank": None, "prune": 0.0, "psnr": 29.0, "bytes": 40,
             "layers": {"a": {"bits": 8}}},
        ]
    }  # fmt: skip
    current, original = {"bits": 5, "bytes": 45, "psnr": 28.0}, {"bytes": 400, "psnr": 31.0}
    fronts = {}
    for uniform in (False, True):
        fig = figures.rate_distortion("s", sweep, current, original, "auto", uniform)
        line = next(t for t in fig.data if t.mode == "lines")
        fronts[uniform] = (line.name, list(line.x))
    assert fronts[False] == ("Pareto frontier", [40, 100])  # the mixed point leads
    assert fronts[True] == ("uniform settings' frontier", [50, 100])
