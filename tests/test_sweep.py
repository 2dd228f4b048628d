"""The sweep table: resumable, never recomputes a finished point."""

import json

import pytest

from nerfcomp import tables
from nerfcomp.compress import admm, sweep
from nerfcomp.compress.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = {"bits": [4, 2], "rank": [None], "prune": [0.0, 0.5]}


def test_interrupted_sweep_resumes_without_recomputing(tiny_checkpoint, tmp_path, monkeypatch):
    engine = Engine("cpu")
    name = engine.add_upload(tiny_checkpoint, "primitives")
    out = tmp_path / "t.sweep.json"
    real, calls = sweep._measure, []

    def measure(e, scene, cfg):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two points
        calls.append(cfg)
        return real(e, scene, cfg)

    monkeypatch.setattr(sweep, "_measure", measure)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(name, out, grid=GRID, engine=engine)
    assert len(json.loads(out.read_text())["points"]) == 2  # saved after each point
    calls.clear()
    monkeypatch.setattr(sweep, "_measure", lambda e, s, c: calls.append(c) or real(e, s, c))
    summary = sweep.run_sweep(name, out, grid=GRID, engine=engine)
    assert summary["computed"] == 2 and len(calls) == 2
    table = json.loads(out.read_text())
    assert len(table["points"]) == 4
    assert {(p["bits"], p["prune"]) for p in table["points"]} == {
        (4, 0.0),
        (4, 0.5),
        (2, 0.0),
        (2, 0.5),
    }
    assert all(p["bytes"] > 0 and p["ratio"] > 1 for p in table["points"])


def test_an_admm_point_of_another_learning_rate_schedule_is_measured_again(
    tiny_checkpoint, tmp_path
):
    engine = Engine("cpu")
    name = engine.add_upload(tiny_checkpoint, "primitives")
    out = tmp_path / "t.sweep.json"
    grid = {"bits": [8], "rank": [None], "prune": [0.0]}
    run = lambda: sweep.run_sweep(name, out, 1, 2, grid=grid, engine=engine)  # noqa: E731
    assert run()["computed"] == 2
    refined = lambda t: [p for p in t["points"] if p["admm_steps"]]  # noqa: E731
    table = json.loads(out.read_text())
    assert [p["admm_lr"] for p in refined(table)] == [list(admm.schedule(2))]
    assert "admm_lr" not in table["points"][0]  # the instant point
    assert run()["computed"] == 0
    refined(table)[0].update(admm_lr=[5e-4, 5e-4], psnr=99.0)  # refined with an old schedule
    out.write_text(json.dumps(table))
    assert run()["computed"] == 1
    (point,) = refined(json.loads(out.read_text()))  # replaced, not added
    assert point["psnr"] != 99.0 and point["admm_lr"] == list(admm.schedule(2))


def test_pareto_front():
    pts = [
        {"bytes": 10, "psnr": 20.0},
        {"bytes": 20, "psnr": 25.0},
        {"bytes": 30, "psnr": 24.0},  # dominated by the 20-byte point
        {"bytes": 40, "psnr": 30.0},
    ]
    assert [p["bytes"] for p in tables.pareto_front(pts)] == [10, 20, 40]


def test_a_table_of_another_model_is_started_again(tiny_checkpoint, tmp_path):
    engine = Engine("cpu")
    name = engine.add_upload(tiny_checkpoint, "primitives")
    out = tmp_path / "t.sweep.json"
    grid = {"bits": [2], "rank": [None], "prune": [0.0]}
    sweep.run_sweep(name, out, grid=grid, engine=engine)
    table = json.loads(out.read_text())
    assert table["model_sha256"] == engine.base(name).sha256
    table["model_sha256"] = "retrained"
    table["points"][0]["psnr"] = 99.0  # stale: must not survive
    out.write_text(json.dumps(table))
    assert sweep.run_sweep(name, out, grid=grid, engine=engine)["computed"] == 1
    assert json.loads(out.read_text())["points"][0]["psnr"] != 99.0


def test_smallest_uniform_skips_per_layer_points_and_prefers_the_better_psnr_at_equal_bytes():
    pts = [
        {"bytes": 10, "psnr": 30.0, "layers": {"a": {"bits": 8}}},  # per layer: not uniform
        {"bytes": 20, "psnr": 29.0, "admm_steps": 300},
        {"bytes": 20, "psnr": 29.5, "admm_steps": 300},
        {"bytes": 30, "psnr": 29.2},
        {"bytes": 40, "psnr": 27.0},
    ]
    assert tables.smallest_uniform(pts, 29.0) == pts[2]
    assert tables.smallest_uniform(pts, 29.0, admm=False) == pts[3]
    assert tables.smallest_uniform(pts, 31.0) is None


def test_the_chart_names_the_learning_rate_schedule_of_a_refined_point():
    from nerfcomp import figures

    refined = {"bits": 4, "rank": None, "prune": 0.0, "psnr": 29.0, "bytes": 50}
    sweep_table = {
        "points": [
            {"bits": 8, "rank": None, "prune": 0.0, "psnr": 30.0, "bytes": 100},
            {**refined, "admm_steps": 1000, "admm_lr": [2e-3, 5e-5]},
            {**refined, "admm_steps": 300, "admm_lr": [1e-4, 1e-4]},
        ]
    }
    fig = figures.rate_distortion("s", sweep_table, {"bits": 5, "bytes": 45, "psnr": 28.0},
                                  {"bytes": 400, "psnr": 31.0})  # fmt: skip
    (text,) = [list(t.text) for t in fig.data if t.name == "sweep + ADMM"]
    assert text == [
        "4 bit, rank full, prune 0.00, ADMM 1000 (lr 2e-03→5e-05)",
        "4 bit, rank full, prune 0.00, ADMM 300 (lr 1e-04)",
    ]
