"""ADMM (learning–compression) steps on hand-built tensors and a tiny NeRF."""

import threading

import pytest
import torch

from nerfcomp import scenes
from nerfcomp.compress import CompressionConfig, compress
from nerfcomp.compress.admm import (
    Cancelled,
    c_step,
    finetune_stored,
    l_step,
    multiplier_step,
    refine,
)
from nerfcomp.model import NeRF, NeRFConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_rays():
    v = scenes.views("primitives", "train", size=12, n_train=6)
    return v.rays()


def test_multiplier_step_is_lambda_minus_mu_times_violation():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    theta = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        theta[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
    lam = {"0": torch.tensor([[0.5, 0.5], [0.5, 0.5]])}
    viol = multiplier_step(model, theta, lam, mu=2.0)
    # λ − μ(W − Δ(Θ)) = .5 − 2·[[0, 1], [2, 3]]
    torch.testing.assert_close(lam["0"], torch.tensor([[0.5, -1.5], [-3.5, -5.5]]))
    assert viol == pytest.approx((0 + 1 + 4 + 9) ** 0.5)


def test_c_step_projects_the_shifted_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    lam = {"0": torch.full((8, 8), 0.2)}
    theta = c_step(model, lam, mu=2.0, cfg=CompressionConfig(bits=1))
    # two centroids of W − λ/μ = W − .1, so every weight of Θ is one of two values
    assert theta[0].weight.unique().numel() <= 2
    shifted = model[0].weight - 0.1
    err = (theta[0].weight - shifted).abs().max()
    assert err < (shifted.max() - shifted.min())  # a projection of the shifted weights


def _trained_tiny_nerf(rays, steps: int = 150) -> NeRF:
    """A width-16 NeRF fitted briefly to the rays: what refine is for is a trained model (from
    a random one, a large early learning rate may as well empty the density)."""
    from nerfcomp.evaluate import grid_for
    from nerfcomp.train import TrainConfig, train_step

    torch.manual_seed(0)
    model = NeRF(NeRFConfig(width=16))
    cfg = TrainConfig("primitives", steps=steps, batch_rays=128, lr=5e-3, lr_final=5e-3)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g, grid = torch.Generator().manual_seed(0), grid_for(model)
    for _ in range(steps):
        train_step(model, opt, rays, grid, cfg, g)
    return model.eval()


def test_refine_keeps_the_format_and_beats_direct_compression():
    rays = tiny_rays()
    base = _trained_tiny_nerf(rays)
    cfg = CompressionConfig(bits=2, admm_steps=40)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    refined = refine(base, cfg, "primitives", rays=rays, batch_rays=128)
    for layer in refined.modules():
        if hasattr(layer, "stored"):
            for st in layer.stored.values():
                assert st.codebook.numel() <= 4
    # the refinement trains on the photometric loss: lower than direct compression's
    from nerfcomp.evaluate import grid_for
    from nerfcomp.render import RenderSettings
    from nerfcomp.train import photometric_loss

    def loss(m):
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            return photometric_loss(m, rays, 512, grid_for(m), RenderSettings(), g).item()

    assert loss(refined) < loss(compress(base, CompressionConfig(bits=2)))
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # untouched


def test_finetune_changes_codebooks_not_indices():
    torch.manual_seed(0)
    small = compress(NeRF(NeRFConfig(width=16)), CompressionConfig(bits=2))
    rays = tiny_rays()
    from nerfcomp.evaluate import grid_for
    from nerfcomp.render import RenderSettings
    from nerfcomp.train import photometric_loss

    g = torch.Generator().manual_seed(0)
    grid = grid_for(small)
    tuned = finetune_stored(
        small, lambda m: photometric_loss(m, rays, 128, grid, RenderSettings(), g), 10
    )
    before, after = small.trunk[1].stored["W"], tuned.trunk[1].stored["W"]
    assert not torch.equal(before.codebook, after.codebook)
    # the clustering is unchanged: equal indices give equal values, before and after
    same = before.indices[:, None] == before.indices[None, :]
    assert torch.equal(same, after.indices[:, None] == after.indices[None, :])


def test_cancel_stops_refinement():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        refine(
            NeRF(NeRFConfig(width=16)),
            CompressionConfig(bits=2, admm_steps=50),
            "primitives",
            rays=tiny_rays(),
            batch_rays=64,
            cancel=cancel,
        )


def test_l_step_follows_the_learning_rate_schedule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1.0)
    seen = []

    def loss_fn(m):
        seen.append(opt.param_groups[0]["lr"])
        return m(torch.ones(1, 2)).square().sum()

    target = {"0": torch.zeros(2, 2)}
    l_step(model, opt, target, mu=1e-3, loss_fn=loss_fn, steps=3, lr=lambda i: 0.1 / (i + 1))
    assert seen == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_finetune_decays_the_learning_rate_to_lr_final(monkeypatch):
    from nerfcomp.compress import admm

    lrs = []
    real = admm.set_lr
    monkeypatch.setattr(admm, "set_lr", lambda opt, lr: (lrs.append(lr), real(opt, lr)))
    small = compress(NeRF(NeRFConfig(width=16)), CompressionConfig(bits=2))
    finetune_stored(small, lambda m: sum(p.sum() for p in m.buffers()) * 0.0, 4, 1e-3, 1e-5)
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-3 * 0.01**0.75)
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
