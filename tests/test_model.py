"""The NeRF MLP, its positional encoding, and safetensors checkpoints (+ atomic writes)."""

import json
import math
import os
import random

import pytest
import torch
from safetensors.torch import save_file

import nerfcomp.model as model_mod
from nerfcomp.fileio import atomic_write, atomic_write_bytes
from nerfcomp.model import (
    CHECKPOINT_FORMAT,
    NeRF,
    NeRFConfig,
    encode_positions,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = NeRFConfig(width=16, pos_freqs=3, dir_freqs=2)


@pytest.fixture
def tiny_nerf() -> NeRF:
    torch.manual_seed(0)
    return NeRF(TINY)


def probe(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=g) * 2 - 1
    d = torch.randn(n, 3, generator=g)
    return x, d / d.norm(dim=-1, keepdim=True)


# --- positional encoding, NeRF §5.1 --------------------------------------------------------


@pytest.mark.parametrize("n_freqs", [0, 1, 4, 10])
def test_encoding_shape(n_freqs):
    assert encode_positions(torch.zeros(7, 5, 3), n_freqs).shape == (7, 5, 3 + 6 * n_freqs)


def test_encoding_values_at_a_hand_picked_point():
    x = torch.tensor([[0.25, 0.5, -0.125]], dtype=torch.float64)
    r = math.sqrt(0.5)
    s8, c8 = math.sin(math.pi / 8), math.cos(math.pi / 8)
    # γ(x) = (x, sin(2^k π x) for k = 0, 1, 2, cos(2^k π x) for k = 0, 1, 2)
    expected = [
        *(0.25, 0.5, -0.125),
        *(r, 1.0, -s8),  # sin(π x): sin(π/4), sin(π/2), sin(-π/8)
        *(1.0, 0.0, -r),  # sin(2π x): sin(π/2), sin(π), sin(-π/4)
        *(0.0, 0.0, -1.0),  # sin(4π x): sin(π), sin(2π), sin(-π/2)
        *(r, 0.0, c8),  # cos(π x)
        *(0.0, -1.0, r),  # cos(2π x)
        *(-1.0, 1.0, 0.0),  # cos(4π x)
    ]
    torch.testing.assert_close(
        encode_positions(x, 3), torch.tensor([expected], dtype=torch.float64), atol=1e-12, rtol=0
    )


# --- the MLP -------------------------------------------------------------------------------


def test_forward_shapes_and_ranges(tiny_nerf):
    x, d = probe()
    x = x * 3  # also outside the cube
    rgb, sigma = tiny_nerf(x, d)
    assert rgb.shape == (64, 3) and sigma.shape == (64,)
    assert (sigma >= 0).all()
    assert (rgb >= 0).all() and (rgb <= 1).all()
    assert torch.equal(tiny_nerf.density(x), sigma)


def test_default_architecture():
    model = NeRF()
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert list(linears) == [*(f"trunk.{i}" for i in range(8)), "sigma", "feature", "view", "rgb"]
    widths = {n: (m.in_features, m.out_features) for n, m in linears.items()}
    assert widths["trunk.0"] == (63, 128)  # 3 + 6·10
    assert widths["trunk.4"] == (128 + 63, 128)  # the skip: input concatenated again
    assert widths["view"] == (128 + 27, 64)  # 3 + 6·4 direction features
    assert widths["rgb"] == (64, 3)
    # 8192 + 6·16512 + 24576 + 129 + 16512 + 9984 + 195
    assert sum(p.numel() for p in model.parameters()) == 158660


def test_skip_connection_feeds_the_encoded_input(tiny_nerf):
    seen = {}
    hook = tiny_nerf.trunk[TINY.skip].register_forward_hook(
        lambda mod, inp, out: seen.update(h=inp[0])
    )
    x, d = probe(8)
    tiny_nerf(x, d)
    hook.remove()
    assert seen["h"].shape == (8, TINY.width + TINY.pos_dim)
    assert torch.equal(seen["h"][:, TINY.width :], encode_positions(x, TINY.pos_freqs))


def test_aabb_scales_the_input():
    torch.manual_seed(0)
    unit = NeRF(TINY)
    big = NeRF(NeRFConfig(width=16, pos_freqs=3, dir_freqs=2, aabb=2.0))
    big.load_state_dict(unit.state_dict())
    x, d = probe(16)
    torch.testing.assert_close(big(2 * x, d), unit(x, d))


@pytest.mark.parametrize(
    "kwargs",
    [{"width": 2}, {"depth": 1}, {"skip": 0}, {"skip": 8}, {"aabb": -1.0}, {"width": 32.0}],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError, match="NeRFConfig"):
        NeRFConfig(**kwargs)


# --- checkpoints ---------------------------------------------------------------------------


def test_checkpoint_round_trip(tiny_nerf, tmp_path):
    path = tmp_path / "m.safetensors"
    nbytes = save_checkpoint(tiny_nerf, path, extra={"scene": "glossy", "steps": 3})
    assert nbytes == os.path.getsize(path)
    loaded, extra = load_checkpoint(path)
    assert extra == {"scene": "glossy", "steps": 3}
    assert loaded.config == TINY and not loaded.training
    x, d = probe()
    rgb, sigma = tiny_nerf(x, d)
    rgb2, sigma2 = loaded(x, d)
    assert torch.equal(rgb, rgb2) and torch.equal(sigma, sigma2)
    meta = read_checkpoint_meta(path)
    assert meta["format"] == CHECKPOINT_FORMAT and meta["config"]["width"] == 16
    assert os.listdir(tmp_path) == ["m.safetensors"]  # no temp file left


def write_raw(path, tensors: dict, config: dict | str) -> None:
    """A checkpoint with our format tag around any tensors and config (a str goes in as is)."""
    text = config if isinstance(config, str) else json.dumps(config)
    meta = {"format": CHECKPOINT_FORMAT, "config": text, "extra": "{}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def test_load_missing_file(tmp_path):
    with pytest.raises(ValueError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("keep", [4, 100, 0.5, -1], ids=["8-byte-header", "header", "half", "-1"])
def test_load_truncated_file(tiny_nerf, tmp_path, keep):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_nerf, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path)


def test_load_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path)


def test_load_pickle_is_refused(tiny_nerf, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(tiny_nerf.state_dict(), path)
    with pytest.raises(ValueError, match="not a readable safetensors checkpoint"):
        load_checkpoint(path)


def test_load_wrong_shapes(tiny_nerf, tmp_path):
    path = tmp_path / "m.safetensors"
    config = {**tiny_nerf.arch_spec(), "width": 32}  # the tensors are width 16
    write_raw(path, tiny_nerf.state_dict(), config)
    with pytest.raises(ValueError, match="tensor shapes do not match the config at .*feature"):
        load_checkpoint(path)
    extra_tensor = {**tiny_nerf.state_dict(), "bonus.weight": torch.zeros(2)}
    write_raw(path, extra_tensor, tiny_nerf.arch_spec())
    with pytest.raises(ValueError, match="bonus.weight"):
        load_checkpoint(path)


@pytest.mark.parametrize("metadata", [None, {"format": "pt"}, {"format": "nerfcomp-nerf-v0"}])
def test_load_foreign_safetensors(tiny_nerf, tmp_path, metadata):
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_nerf.state_dict().items()}, str(path), metadata)
    with pytest.raises(ValueError, match="not a nerfcomp NeRF checkpoint"):
        load_checkpoint(path)


def test_load_non_finite_weights(tiny_nerf, tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = dict(tiny_nerf.state_dict())
    tensors["rgb.bias"] = torch.tensor([0.0, math.inf, 0.0])
    write_raw(path, tensors, tiny_nerf.arch_spec())
    with pytest.raises(ValueError, match="non-finite"):
        load_checkpoint(path)


@pytest.mark.parametrize("config", ["{not json", json.dumps({"width": 16, "colour": 3})])
def test_load_corrupt_config(tiny_nerf, tmp_path, config):
    path = tmp_path / "m.safetensors"
    write_raw(path, tiny_nerf.state_dict(), config)
    with pytest.raises(ValueError, match="corrupt|unknown NeRF config fields"):
        load_checkpoint(path)


@pytest.mark.parametrize("config", ["5", "null"])
def test_load_config_not_an_object(tiny_nerf, tmp_path, config):
    path = tmp_path / "m.safetensors"
    write_raw(path, tiny_nerf.state_dict(), config)
    with pytest.raises(ValueError):
        load_checkpoint(path)


# --- atomic writes -------------------------------------------------------------------------


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "f.bin"
    assert atomic_write_bytes(path, b"old contents") == 12

    def half_then_crash(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(b"new, half wri")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_save_checkpoint_interrupted_keeps_old_checkpoint(tiny_nerf, tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_checkpoint(tiny_nerf, path, extra={"v": 1})

    def crash(tensors, tmp, metadata=None):
        with open(tmp, "wb") as f:
            f.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(model_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(NeRF(TINY), path, extra={"v": 2})
    assert load_checkpoint(path)[1] == {"v": 1}
    assert os.listdir(tmp_path) == ["m.safetensors"]
