"""The cached engine: incrementality is checked by counting work, never by timing."""

import threading

import pytest
import torch

from nerfcomp.compress import CompressionConfig, decode
from nerfcomp.compress.engine import ByteLRU, Engine

pytestmark = pytest.mark.usefixtures("one_thread")

# width-16 NeRF: 12 Linear layers; at rank 4 the factors are smaller than W for the 8 trunk
# layers, `feature` and `view`; `sigma` (1×16) and `rgb` (3×8) stay dense.
N_LAYERS = 12
N_FACTORIZED_AT_RANK_4 = 10


@pytest.fixture
def engine(tiny_checkpoint):
    e = Engine("cpu")
    name = e.add_upload(tiny_checkpoint, "primitives")
    return e, name


def test_bits_change_reruns_only_kmeans(engine):
    e, name = engine
    assert e.counters["svd"] == N_LAYERS  # once, when the base is registered
    e.compress(name, CompressionConfig(bits=4))
    assert e.counters["kmeans_tensors"] == N_LAYERS
    assert e.counters["stage1"] == N_LAYERS
    e.compress(name, CompressionConfig(bits=3))  # only bits changed: k-means again, no stage 1
    assert e.counters["kmeans_tensors"] == 2 * N_LAYERS
    assert e.counters["stage1"] == N_LAYERS
    assert e.counters["svd"] == N_LAYERS
    first = e.compress(name, CompressionConfig(bits=4))  # back: nothing recomputed
    assert e.counters["kmeans_tensors"] == 2 * N_LAYERS
    assert e.counters["assemble"] == 2
    assert e.compress(name, CompressionConfig(bits=4)) is first


def test_rank_change_reuses_layers_that_stay_dense(engine):
    e, name = engine
    e.compress(name, CompressionConfig(bits=4))
    e.compress(name, CompressionConfig(bits=4, rank=4))
    # factorized layers store A and B, clustered anew; the dense ones are reused
    assert e.counters["kmeans_tensors"] == N_LAYERS + 2 * N_FACTORIZED_AT_RANK_4
    assert e.counters["svd"] == N_LAYERS


def test_payload_is_the_file_and_decodes_to_the_same_model(engine, tmp_path):
    e, name = engine
    comp = e.compress(name, CompressionConfig(bits=3, rank=4, prune=0.3))
    path = tmp_path / "m.nrc"
    path.write_bytes(comp.payload)
    assert comp.bytes == path.stat().st_size
    assert sum(sum(row.values()) for row in comp.breakdown.values()) == comp.bytes
    again = decode(comp.payload)
    x, d = torch.rand(64, 3) * 2 - 1, torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        for a, b in zip(comp.model(x, d), again(x, d), strict=True):
            assert torch.equal(a, b)


def test_renders_and_scores_are_cached(engine):
    from nerfcomp.scenes import camera_at

    e, name = engine
    cfg = CompressionConfig(bits=2)
    cam = camera_at(30.0, 20.0, size=24)
    a = e.render(name, cfg, cam)
    assert e.render(name, cfg, cam) is a
    assert e.counters["render"] == 1 and e.counters["grid"] == 1
    fast = e.score_fast(name, cfg, n_rays=256)
    assert e.score_fast(name, cfg, n_rays=256) == fast
    assert e.counters["score_fast"] == 1


def test_concurrent_sessions_get_the_same_answers(engine, tiny_checkpoint):
    e, name = engine
    cfgs = [CompressionConfig(bits=b, prune=p) for b in (2, 3, 4) for p in (0.0, 0.5)]
    results, errors = {}, []

    def work(cfg):
        try:
            results[cfg] = e.compress(name, cfg).payload
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in cfgs * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    alone = Engine("cpu")  # the same calls made one at a time on a fresh engine
    alone_name = alone.add_upload(tiny_checkpoint, "primitives")
    for cfg in cfgs:
        assert results[cfg] == alone.compress(alone_name, cfg).payload


def test_byte_lru_evicts_least_recent():
    lru = ByteLRU(max_bytes=3 * 400)
    for i in range(4):
        lru.put(i, torch.zeros(100))  # 400 bytes each
    assert 0 not in lru and all(i in lru for i in (1, 2, 3))
    lru.get(1)
    lru.put(4, torch.zeros(100))
    assert 1 in lru and 2 not in lru
    assert lru.bytes <= 3 * 400


def test_unknown_scene_and_missing_checkpoint_are_value_errors(tmp_path):
    e = Engine("cpu")
    with pytest.raises(ValueError, match="unknown scene 'nope'"):
        e.compress("nope", CompressionConfig())
    with pytest.raises(ValueError, match="checkpoint not found"):
        e.add_upload(tmp_path / "missing.safetensors", "primitives")


def test_settings_that_give_the_same_model_share_its_renders(engine):
    """On a width-16 NeRF no layer factorizes at rank ≥ 14, so rank 14 is full rank: the
    same tensors, hence the same grid and render, computed once."""
    from nerfcomp.scenes import camera_at

    e, name = engine
    cam = camera_at(10.0, 20.0, size=16)
    full, r14 = CompressionConfig(bits=3), CompressionConfig(bits=3, rank=14)
    assert e.compress(name, full).digest == e.compress(name, r14).digest
    grids, renders = e.counters["grid"], e.counters["render"]
    assert e.render(name, r14, cam) is e.render(name, full, cam)
    assert e.counters["render"] == renders + 1 and e.counters["grid"] == grids + 1
    r4 = CompressionConfig(bits=3, rank=4)
    assert e.compress(name, r4).digest != e.compress(name, full).digest
