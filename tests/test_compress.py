"""Config validation, the compression stages and compress() on tiny seeded MLPs."""

import json
import math

import pytest
import torch
from torch import nn

import nerfcomp.compress.layers as layers_mod
from nerfcomp.compress import (
    CompressedLinear,
    CompressionConfig,
    LayerConfig,
    compress,
    factors_are_smaller,
    factors_from_svd,
    linear_names,
    magnitude_mask,
    prune_,
    quantize_stored,
    svd_from_weight,
    tensors_to_store,
)


def mlp(seed: int = 0, width: int = 32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(12, width), nn.ReLU(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 3)
    )


def stored_tensors(model: nn.Module):
    for name, m in model.named_modules():
        if isinstance(m, CompressedLinear):
            for part, st in m.stored.items():
                yield name, part, st


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    ref, approx = ref.detach(), approx.detach()
    return 10 * math.log10(float(ref.pow(2).sum() / (ref - approx).pow(2).sum()))


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": 12}, "bits"),
        ({"bits": 64}, "bits"),
        ({"bits": True}, "bits"),
        ({"bits": 4.0}, "bits"),
        ({"bits": "4"}, "bits"),
        ({"rank": 0}, "rank"),
        ({"rank": -3}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"rank": True}, "rank"),
        ({"prune": -0.1}, "prune"),
        ({"prune": 1.0}, "prune"),
        ({"prune": float("nan")}, "prune"),
        ({"prune": float("inf")}, "prune"),
        ({"prune": True}, "prune"),
        ({"prune": "0.5"}, "prune"),
        ({"admm_steps": -1}, "admm_steps"),
        ({"admm_steps": 1.5}, "admm_steps"),
        ({"admm_steps": False}, "admm_steps"),
        ({"layers": "trunk.0"}, "layers"),
        ({"layers": {"0": 3}}, "layers"),
        ({"layers": {"0": {"bits": 9}}}, "bits"),
        ({"layers": {"0": {"rank": -1}}}, "rank"),
        ({"layers": {"0": {"prune": 1.5}}}, "prune"),
        ({"layers": {"0": {"size": 1}}}, "size"),
    ],
)
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CompressionConfig(**kwargs)


def test_config_is_hashable_json_and_resolves_overrides():
    cfg = CompressionConfig(
        bits=4, rank=8, prune=0.25, layers={"2": LayerConfig(bits=8, rank=0), "4": {"prune": 0.5}}
    )
    same = CompressionConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert same == cfg and hash(same) == hash(cfg)
    assert {cfg: 1}[same] == 1
    assert cfg.for_layer("0") == (4, 8, 0.25)
    assert cfg.for_layer("2") == (8, None, 0.25)  # rank=0: keep this layer dense
    assert cfg.for_layer("4") == (4, 8, 0.5)
    assert CompressionConfig(bits=4) != CompressionConfig(bits=3)


def test_unknown_layer_name_in_config_raises():
    with pytest.raises(ValueError, match="trunk.9"):
        compress(mlp(), CompressionConfig(layers={"trunk.9": LayerConfig(bits=2)}))


# ---------------------------------------------------------------- stages


def test_magnitude_mask_hand_built():
    t = torch.tensor([0.1, -0.5, 0.3, -0.2])
    assert magnitude_mask(t, 0.5).tolist() == [False, True, True, False]
    assert magnitude_mask(t, 0.0).all()
    # ties at the threshold are pruned together: sparsity 1.0 ≥ 0.25
    assert not magnitude_mask(torch.ones(4), 0.25).any()
    # ⌈0.3·10⌉ = 3 pruned, never round(...) below the fraction
    assert (~magnitude_mask(torch.arange(1.0, 11.0), 0.34)).sum() == 4


@pytest.mark.parametrize("p", [0.1, 0.33, 0.5, 0.9, 0.999])
def test_magnitude_mask_sparsity_at_least_p(p):
    t = torch.randn(37, 11, generator=torch.Generator().manual_seed(1))
    assert (~magnitude_mask(t, p)).sum() >= math.ceil(p * t.numel() - 1e-9)


def test_prune_in_place():
    m = mlp()
    prune_(m, 0.5)
    for lin in (m[0], m[2], m[4]):
        assert (lin.weight == 0).float().mean() >= 0.5


def test_svd_factors_reconstruct_and_size_rule():
    w = torch.randn(20, 9, generator=torch.Generator().manual_seed(0))
    u, s, vh = svd_from_weight(w)
    assert u.dtype == torch.float32 and s.shape == (9,)
    a, b = factors_from_svd(u, s, vh, 9)
    assert a.shape == (20, 9) and b.shape == (9, 9)
    torch.testing.assert_close(a @ b, w, atol=1e-5, rtol=1e-5)
    assert factors_are_smaller(128, 128, 63) and not factors_are_smaller(128, 128, 64)
    assert not factors_are_smaller(13, 7, 5)  # 5·20 = 100 ≥ 91


def test_tensors_to_store_with_cached_svd_matches():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(2))
    fresh = tensors_to_store(w, 4, 0.3)
    cached = tensors_to_store(w, 4, 0.3, svd=svd_from_weight(w))
    assert set(fresh) == {"A", "B"}
    for k in fresh:
        assert torch.equal(fresh[k][0], cached[k][0]) and torch.equal(fresh[k][1], cached[k][1])
    assert set(tensors_to_store(w, 30, 0.0)) == {"W"}  # 30·70 ≥ 1200: dense kept
    values, mask = tensors_to_store(w, None, 0.0)["W"]
    assert mask is None and torch.equal(values, w)


def test_quantize_stored_is_one_batched_kmeans_call(monkeypatch):
    calls = []
    real = layers_mod.kmeans_1d
    monkeypatch.setattr(layers_mod, "kmeans_1d", lambda v, k: calls.append(k) or real(v, k))
    g = torch.Generator().manual_seed(3)
    items = [(torch.randn(8, 5, generator=g), None) for _ in range(3)]
    out = quantize_stored(items + [(torch.randn(4, 4, generator=g), None)], [2, 3, 16, 4])
    assert calls == [[4, 8, 16]]
    assert [st.codebook is not None for st in out] == [True, True, False, True]
    assert torch.equal(out[2].values, items[2][0].half().float())


# ---------------------------------------------------------------- compress


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_at_most_2_pow_bits_values_and_sparsity(bits, prune):
    small = compress(mlp(), CompressionConfig(bits=bits, prune=prune))
    for _, _, st in stored_tensors(small):
        w = st.dense()
        kept = w[st.mask] if st.mask is not None else w.reshape(-1)
        assert kept.unique().numel() <= 2**bits
        assert st.codebook.numel() <= 2**bits
        assert (w == 0).sum() >= math.ceil(prune * w.numel() - 1e-9)


def test_rank_at_most_r_and_dense_where_factors_are_not_smaller():
    model = mlp(width=32)  # 12→32 (r=4: 176 < 384), 32→32, 32→3 (4·35 ≥ 96: dense)
    small = compress(model, CompressionConfig(bits=32, rank=4))
    parts = {
        name: set(m.stored) for name, m in small.named_modules() if isinstance(m, CompressedLinear)
    }
    assert parts == {"0": {"A", "B"}, "2": {"A", "B"}, "4": {"W"}}
    for name in ("0", "2"):
        assert torch.linalg.matrix_rank(small.get_submodule(name).weight) <= 4
    assert torch.equal(small[4].weight, model[4].weight)


def test_input_model_untouched_and_types_replaced():
    model = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    small = compress(model, CompressionConfig(bits=3, rank=4, prune=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear, nn.Tanh, nn.Linear]
    assert [type(m) for m in small][::2] == [CompressedLinear] * 3
    assert linear_names(model) == ["0", "2", "4"] and linear_names(small) == []


def test_odd_generic_mlp_and_root_linear():
    torch.manual_seed(0)
    odd = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))
    x = torch.randn(6, 7)
    small = compress(odd, CompressionConfig(bits=4, prune=0.2))
    assert small(x).shape == (6, 5)
    assert sqnr_db(odd(x), small(x)) > 10  # 20% pruned at 4 bits: 12.7 dB
    root = compress(nn.Linear(7, 13), CompressionConfig(bits=16))
    assert isinstance(root, CompressedLinear) and root(x).shape == (6, 13)


def test_bits_32_is_exact_and_bits_16_rounds_weights_and_biases():
    model, x = mlp(), torch.randn(9, 12)
    assert torch.equal(compress(model, CompressionConfig(bits=32))(x), model(x))
    half = compress(model, CompressionConfig(bits=16))
    assert torch.equal(half[0].W, model[0].weight.half().float())
    assert torch.equal(half[0].bias, model[0].bias.half().float())
    q8 = compress(model, CompressionConfig(bits=8))
    assert torch.equal(q8[2].bias, model[2].bias.half().float())  # biases fp16 for bits ≤ 16
    assert torch.equal(q8[2].stored["W"].codebook.half().float(), q8[2].stored["W"].codebook)


def test_sqnr_floor_at_8_bits():
    model = mlp(width=64)
    x = torch.randn(256, 12, generator=torch.Generator().manual_seed(5))
    assert sqnr_db(model(x), compress(model, CompressionConfig(bits=8))(x)) > 30
    assert sqnr_db(model(x), compress(model, CompressionConfig(bits=4))(x)) > 15


def test_per_layer_bits_in_one_compress():
    cfg = CompressionConfig(bits=2, layers={"2": LayerConfig(bits=6), "4": LayerConfig(bits=16)})
    small = compress(mlp(width=32), cfg)
    assert small[0].stored["W"].codebook.numel() <= 4
    assert 4 < small[2].stored["W"].codebook.numel() <= 64
    assert small[4].stored["W"].codebook is None and small[4].stored["W"].bits == 16
