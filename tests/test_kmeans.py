"""Batched 1-D k-means: hand-built cases, structure, batching, and quality against the exact DP."""

import kmeans1d
import pytest
import torch

from nerfcomp.compress.kmeans import distortion, kmeans_1d


@pytest.fixture(autouse=True)
def _one_thread():
    """Many small ops: with 2 threads on a busy 2-core machine each op waits for a descheduled
    thread, so these tests run single-threaded (the results do not depend on it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one(values: list[float], k: int) -> tuple[list[float], list[int]]:
    ((codebook, indices),) = kmeans_1d([torch.tensor(values)], k)
    return codebook.tolist(), indices.tolist()


def _exact_optimum(x: torch.Tensor, k: int) -> float:
    """Ckmeans.1d.dp (the kmeans1d package): the least sum of squared errors with k clusters."""
    labels, centroids = kmeans1d.cluster(x.tolist(), k)
    return distortion(x, torch.tensor(centroids, dtype=torch.float64), torch.tensor(labels))


def _laplace(n: int, g: torch.Generator) -> torch.Tensor:
    sign = torch.rand(n, generator=g) < 0.5
    return torch.empty(n).exponential_(generator=g) * (2.0 * sign - 1.0)


def test_hand_built_codebooks():
    # three pairs, three clusters: every value is its own centroid
    assert _one([0, 0, 1, 1, 10, 10], 3) == ([0.0, 1.0, 10.0], [0, 0, 1, 1, 2, 2])
    # two clusters: {0, 0, 1, 1} -> 0.5 (error 4 * 0.25 = 1) beats {0, 0} + {1, 1, 10, 10}
    assert _one([0, 0, 1, 1, 10, 10], 2) == ([0.5, 10.0], [0, 0, 0, 0, 1, 1])
    # evenly spaced: pairs
    assert _one([1, 2, 3, 4, 5, 6, 7, 8], 4) == ([1.5, 3.5, 5.5, 7.5], [0, 0, 1, 1, 2, 2, 3, 3])
    # the outlier gets its own cluster: {1, 1, 1, 1, 2, 3} -> 1.5, error 3.5
    assert _one([1, 1, 1, 1, 2, 3, 100], 2) == ([1.5, 100.0], [0, 0, 0, 0, 0, 0, 1])
    # input order is kept in the indices
    assert _one([10, 0, 1, 10, 0, 1], 3) == ([0.0, 1.0, 10.0], [2, 0, 1, 2, 0, 1])


def test_distortion_hand_built():
    x = torch.tensor([0.0, 1.0, 3.0])
    # reconstructed as 0.5, 0.5, 3: errors 0.25 + 0.25 + 0
    assert distortion(x, torch.tensor([0.5, 3.0]), torch.tensor([0, 0, 1])) == pytest.approx(0.5)


def test_fewer_distinct_values_than_clusters():
    assert _one([3, 1, 2], 8) == ([1.0, 2.0, 3.0], [2, 0, 1])
    assert _one([2, 2, 2], 3) == ([2.0], [0, 0, 0])
    assert _one([5], 4) == ([5.0], [0])
    assert _one([5], 1) == ([5.0], [0])
    # 31 distinct quarter steps, k = 64: each value is exact
    g = torch.Generator().manual_seed(0)
    x = ((torch.randn(3000, generator=g) * 4).round() / 4).clamp(-4, 3.5)
    ((codebook, indices),) = kmeans_1d([x], 64)
    assert torch.equal(codebook, x.unique())
    assert torch.equal(codebook[indices], x)


@pytest.mark.parametrize("k", [1, 2, 5, 16, 100, 256])
def test_structure(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(1000, generator=g) * 0.05
    x[:300] = 0.0  # many ties
    ((codebook, indices),) = kmeans_1d([x], k)
    k_eff = min(k, len(x.unique()))
    assert codebook.dtype == torch.float32 and codebook.shape == (k_eff,)
    assert indices.dtype == torch.int64 and indices.shape == x.shape
    assert bool((codebook[1:] > codebook[:-1]).all())  # sorted, distinct
    assert int(indices.min()) >= 0 and int(indices.max()) < k_eff
    counts = torch.bincount(indices, minlength=k_eff)
    assert int(counts.min()) >= 1  # every entry used
    means = torch.zeros(k_eff, dtype=torch.float64).index_add_(0, indices, x.double()) / counts
    torch.testing.assert_close(codebook.double(), means, rtol=1e-6, atol=1e-7)  # cell means


def test_batch_equals_one_by_one_and_deterministic():
    g = torch.Generator().manual_seed(1)
    values = [
        torch.randn(5000, generator=g),
        _laplace(777, g) * 0.1,
        torch.randn(3, generator=g),
        torch.tensor([4.0]),
        torch.randn(20000, generator=g).double() * 0.01,
        torch.tensor([1.0, 1.0, 2.0, 2.0, 2.0]),
    ]
    ks = [256, 8, 4, 2, 32, 16]
    batched = kmeans_1d(values, ks)
    again = kmeans_1d(values, ks)
    for v, k, (codebook, indices), (c2, i2) in zip(values, ks, batched, again, strict=True):
        ((c1, i1),) = kmeans_1d([v], k)
        assert torch.equal(codebook, c1) and torch.equal(indices, i1)
        assert torch.equal(codebook, c2) and torch.equal(indices, i2)


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_within_a_thousandth_of_the_exact_optimum(dist):
    g = torch.Generator().manual_seed(2)
    results = {}
    for n in (1500, 6000):
        x = torch.randn(n, generator=g) if dist == "gauss" else _laplace(n, g)
        ks = [2, 4, 8, 16, 64, 256]
        for k, (codebook, indices) in zip(ks, kmeans_1d([x * 0.05] * len(ks), ks), strict=True):
            results[n, k] = distortion(x * 0.05, codebook, indices) / _exact_optimum(x * 0.05, k)
    assert max(results.values()) <= 1.001, results


def _hard_sample(name: str, n: int, g: torch.Generator) -> torch.Tensor:
    """Samples on which Lloyd's local optimum is far off (heavy tails, ties, flat density)."""
    x = torch.randn(n, generator=g)
    if name == "student_t3":  # outliers: the init over-fills the tails by many clusters
        x = x / ((torch.randn(n, 3, generator=g) ** 2).sum(dim=1) / 3).sqrt()
    elif name == "rounded":  # ~180 distinct values: most clusters are one or two runs
        x = (x * 20).round() / 20
    elif name == "pruned":  # half exact zeros
        x[torch.rand(n, generator=g) < 0.5] = 0.0
    elif name == "uniform":  # flat: many near-equal local optima
        x = torch.rand(n, generator=g)
    return x * 0.05


@pytest.mark.parametrize(
    ("name", "n", "k"),
    [
        ("student_t3", 1000, 256),
        ("rounded", 12000, 64),
        ("pruned", 12000, 128),
        ("uniform", 3000, 256),
    ],
)
def test_within_a_thousandth_on_hard_samples(name, n, k):
    x = _hard_sample(name, n, torch.Generator().manual_seed(4))
    ((codebook, indices),) = kmeans_1d([x], k)
    assert distortion(x, codebook, indices) <= 1.001 * _exact_optimum(x, k)


def test_leaves_the_thread_count_alone():
    torch.set_num_threads(2)
    kmeans_1d([torch.randn(100)], 4)
    assert torch.get_num_threads() == 2


def test_overlapping_calls_restore_the_thread_count():
    from nerfcomp.compress import kmeans

    torch.set_num_threads(2)
    first, second = kmeans._one_thread(), kmeans._one_thread()  # two sessions' k-means
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert torch.get_num_threads() == 1
    second.__exit__(None, None, None)
    assert torch.get_num_threads() == 2  # not the 1 the second call found on entry


def test_rejects_bad_arguments():
    assert kmeans_1d([], 4) == []
    with pytest.raises(ValueError):
        kmeans_1d([torch.ones(3)], 0)
    with pytest.raises(ValueError):
        kmeans_1d([torch.ones(3), torch.ones(2)], [2])
    with pytest.raises(ValueError):
        kmeans_1d([torch.ones(0)], 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(3)
    values = [torch.randn(n, generator=g) * 0.05 for n in (128, 4000, 16384)]
    ks = [16, 256, 64]
    cpu = kmeans_1d(values, ks)
    gpu = kmeans_1d([v.cuda() for v in values], ks)
    for v, (c_cpu, i_cpu), (c_gpu, i_gpu) in zip(values, cpu, gpu, strict=True):
        assert c_gpu.is_cuda and i_gpu.is_cuda
        d_cpu, d_gpu = distortion(v, c_cpu, i_cpu), distortion(v, c_gpu.cpu(), i_gpu.cpu())
        assert d_gpu == pytest.approx(d_cpu, rel=1e-6)
        assert float((i_gpu.cpu() != i_cpu).float().mean()) < 1e-3
