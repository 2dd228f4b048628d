"""Training: a tiny run learns and writes its files; an interrupted run resumes exactly."""

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from nerfcomp import scenes
from nerfcomp.metrics import psnr
from nerfcomp.model import NeRFConfig, load_checkpoint
from nerfcomp.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_thread")

# image_size 16, n_train 8, seed 0: every run here shares one cached set of training views
TINY = TrainConfig(
    scene="primitives",
    steps=64,
    batch_rays=256,
    image_size=16,
    n_train=8,
    grid_resolution=16,
    grid_every=16,
    model=NeRFConfig(width=32),
)
# smaller still, for the resume checks (they compare runs, not quality)
MICRO = TrainConfig(
    scene="primitives",
    steps=32,
    batch_rays=64,
    image_size=16,
    n_train=8,
    grid_resolution=16,
    grid_every=8,
    save_every=16,
    model=NeRFConfig(width=16, pos_freqs=4, dir_freqs=2),
)


class Interrupted(Exception):
    pass


def recorder(log: list, stop_at: int | None = None):
    """A progress callback that records (step, steps, stats), optionally 'crashing' at a step."""

    def progress(step: int, steps: int, stats: dict) -> None:
        log.append((step, steps, stats))
        if step == stop_at:
            raise Interrupted

    return progress


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "primitives.safetensors"
    log: list = []
    metrics = train(TINY, out, progress=recorder(log))
    return out, metrics, log


def test_config_validation():
    with pytest.raises(ValueError, match="unknown scene 'lego'"):
        TrainConfig(scene="lego")
    for bad in ({"steps": 0}, {"batch_rays": True}, {"image_size": 1.5}):
        with pytest.raises(ValueError, match="must be a positive int"):
            TrainConfig(scene="primitives", **bad)
    with pytest.raises(ValueError, match="lr_final"):
        TrainConfig(scene="primitives", lr=1e-3, lr_final=1e-2)


def test_learning_rate_decays_exponentially():
    cfg = TrainConfig(scene="primitives", steps=100, lr=1e-2, lr_final=1e-4)
    assert cfg.lr_at(0) == pytest.approx(1e-2)
    assert cfg.lr_at(50) == pytest.approx(1e-3)  # the geometric mean at half way
    assert cfg.lr_at(100) == pytest.approx(1e-4)
    assert cfg.lr_at(500) == pytest.approx(1e-4)  # held after the end


def test_tiny_run_loss_drops(tiny_run):
    _, _, log = tiny_run
    assert [(s, n) for s, n, _ in log] == [(16, 64), (32, 64), (48, 64), (64, 64)]
    losses = [stats["loss"] for _, _, stats in log]
    for _, _, stats in log:
        assert stats["psnr"] == pytest.approx(-10 * math.log10(stats["loss"]))
    assert 0 < losses[-1] < 0.85 * losses[0]


def test_tiny_run_writes_checkpoint_and_metrics(tiny_run):
    out, metrics, _ = tiny_run
    model, extra = load_checkpoint(out)
    assert extra == {"scene": "primitives", "steps": 64}
    assert model.config == TINY.model
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert metrics["scene"] == "primitives" and metrics["steps"] == 64
    assert metrics["config"]["batch_rays"] == 256 and metrics["model"]["width"] == 32
    assert metrics["test_views"] == 8 and len(metrics["psnr_views"]) == 8
    # PSNR over all views comes from the mean MSE of the views
    mean_mse = sum(10 ** (-p / 10) for p in metrics["psnr_views"]) / 8
    assert metrics["psnr"] == pytest.approx(-10 * math.log10(mean_mse), abs=0.02)
    assert 0 < metrics["ssim"] <= 1
    # a quality floor: clearly better than rendering every test view all white (9.7 dB)
    test_views = scenes.views("primitives", "test", 16)
    white = psnr(torch.ones_like(test_views.images), test_views.images)
    assert metrics["psnr"] > white + 1.0


def test_resume_continues_from_the_saved_step(tmp_path):
    state = tmp_path / "state.safetensors"
    first: list = []
    short = replace(MICRO, steps=16, save_every=16)
    train(
        short,
        tmp_path / "a.safetensors",
        state_path=state,
        progress=recorder(first),
        evaluate=False,
    )
    assert [s for s, _, _ in first] == [8, 16]
    assert state.exists()
    second: list = []
    train(
        MICRO,
        tmp_path / "b.safetensors",
        state_path=state,
        progress=recorder(second),
        evaluate=False,
    )
    assert [(s, n) for s, n, _ in second] == [(24, 32), (32, 32)]  # not 8, 16, ... again
    # it kept learning from where it was: no jump back to the initial loss
    assert second[0][2]["loss"] < first[0][2]["loss"]


def test_interrupted_run_resumes_bit_identically(tmp_path):
    straight = tmp_path / "straight.safetensors"
    train(MICRO, straight, evaluate=False)

    state, resumed = tmp_path / "state.safetensors", tmp_path / "resumed.safetensors"
    log: list = []
    with pytest.raises(Interrupted):  # 'crash' at step 24: the last state is from step 16
        train(MICRO, resumed, state_path=state, progress=recorder(log, stop_at=24))
    assert not resumed.exists()
    train(MICRO, resumed, state_path=state, progress=recorder(log), evaluate=False)
    assert [s for s, _, _ in log] == [8, 16, 24, 24, 32]
    a, b = load_file(str(straight)), load_file(str(resumed))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_state_is_refused(tmp_path):
    state = tmp_path / "state.safetensors"
    state.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="cannot resume"):
        train(MICRO, tmp_path / "m.safetensors", state_path=state, evaluate=False)


def test_views_are_cached():
    assert scenes.views("primitives", "train", 16, 8, 0) is scenes.views(
        "primitives", "train", 16, 8, 0
    )
