"""Engine.auto and `python -m nerfcomp auto`: targets met as measured on every held-out view,
the sensitivity table measured once, the file's bytes and PSNR the reported ones (issue 6)."""

import json

import pytest

from nerfcomp.__main__ import main
from nerfcomp.compress import CompressionConfig
from nerfcomp.compress.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    e = Engine("cpu")
    return e, e.add_upload(tiny_checkpoint, "primitives")


def test_auto_meets_a_psnr_target_measured_on_every_view(tiny):
    e, name = tiny
    found = e.auto(name, target_psnr_drop=2.0)
    assert found.met
    assert found.psnr >= found.psnr_original * 0.98
    assert found.psnr == e.score(name, found.config)["psnr"]  # every held-out view
    assert found.bytes == e.compress(name, found.config).bytes
    assert found.bytes < e.compress(name, CompressionConfig(bits=16)).bytes
    assert found.config.admm_steps == 0 and 1 <= len(found.rounds) <= 3
    table = e.cached_sensitivity(name)
    assert table is not None and set(table.rows) == set(e.base(name).svds)
    assert e.counters["sensitivity"] == 1
    looser = e.auto(name, target_psnr_drop=10.0)  # the table is measured once per model
    assert e.counters["sensitivity"] == 1
    assert looser.met and looser.psnr >= looser.psnr_original * 0.9


def test_auto_fits_a_byte_budget(tiny):
    e, name = tiny
    budget = e.compress(name, CompressionConfig(bits=4)).bytes
    found = e.auto(name, target_bytes=budget)
    assert found.met and found.bytes <= budget
    assert found.bytes == e.compress(name, found.config).bytes
    assert found.target == {"target_bytes": budget}
    tiny_budget = e.auto(name, target_bytes=10)  # nothing fits: the smallest there is
    assert not tiny_budget.met and tiny_budget.bytes > 10


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"target_psnr_drop": 1.0, "target_bytes": 100}, "exactly one"),
        ({"target_psnr_drop": 0.0}, "percent in"),
        ({"target_psnr_drop": 100.0}, "percent in"),
        ({"target_bytes": 0}, "positive"),
        ({"target_psnr_drop": 1.0, "admm_steps": -1}, "admm_steps"),
        ({"target_psnr_drop": 1.0, "admm_rounds": 0}, "admm_rounds"),
    ],
)
def test_auto_rejects_bad_targets(tiny, kwargs, message):
    e, name = tiny
    with pytest.raises(ValueError, match=message):
        e.auto(name, **kwargs)


def test_cli_auto_writes_the_file_it_reports(capsys, tiny_checkpoint, tmp_path):
    out = tmp_path / "auto.nrc"
    args = ["--scene", "primitives", "--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    rc = main(["auto", *args, "--target-psnr-drop", "2%", "--out", str(out), "--json"])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    found = json.loads(stdout)
    assert found["met"] and found["psnr_drop_percent"] == 2.0
    assert found["bytes"] == out.stat().st_size
    assert found["psnr"] >= 0.98 * found["psnr_original"]
    assert {"scene", "bits", "psnr", "psnr_original", "ssim", "bytes", "ratio"} <= set(found)
    assert main(["decode", str(out), "--device", "cpu", "--json"]) == 0
    decoded = json.loads(capsys.readouterr()[0])
    assert decoded["psnr"] == found["psnr"] and decoded["bytes"] == found["bytes"]
    assert decoded.get("layers", {}) == found["config"]["layers"]


def test_cli_auto_one_line_errors(capsys):
    assert main(["auto", "--scene", "primitives", "--target-psnr-drop", "lots"]) == 2
    assert "expected a percent" in capsys.readouterr().err
    assert main(["auto", "--scene", "primitives"]) == 2  # no target
    assert "one of the arguments" in capsys.readouterr().err


def test_auto_stops_when_cancelled(tiny):
    import threading

    e, name = tiny
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ValueError, match="cancelled"):  # in the table or in ADMM, whichever
        e.auto(name, target_psnr_drop=2.0, admm_steps=50, cancel=cancel)


def test_a_refined_file_over_its_byte_budget_is_refined_again_with_less(tiny, monkeypatch):
    from nerfcomp.compress import auto

    e, name = tiny
    budget = e.compress(name, CompressionConfig(bits=4)).bytes
    real, limits = auto._Search.verify, []

    def verify(self, choice, limit, admm_steps=0):
        row = real(self, choice, limit, admm_steps)
        if admm_steps:
            limits.append(limit)
            if len(limits) == 1:
                row["bytes"] = budget + 500  # ADMM made the indices compress worse
        return row

    monkeypatch.setattr(auto._Search, "verify", verify)
    found = e.auto(name, target_bytes=budget, admm_steps=2)
    assert len(limits) == 2 and limits[1] <= limits[0] - 500
    assert found.met and found.bytes <= budget and found.config.admm_steps == 2
    assert found.bytes == e.compress(name, found.config).bytes
