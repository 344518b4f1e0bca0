"""The CPU kernels: GEMM assignment equals faiss's exact search, chunking changes no bit, k-means is faiss's."""

import faiss
import numpy as np
import pytest

from ecos_pl.protocol import compress, kernels, nearest_centroid


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _faiss_search(x, c):
    index = faiss.IndexFlatL2(c.shape[1])
    index.add(np.ascontiguousarray(c, dtype=np.float32))
    d, i = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return d[:, 0], i[:, 0].astype(np.int64)


def _mixture(n=6000, d=24, k=12, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    means = _unit(rng.standard_normal((k, d)))
    x = means[rng.integers(0, k, n)] + rng.standard_normal((n, d)).astype(np.float32) * spread / np.sqrt(d)
    return _unit(x)


@pytest.mark.parametrize("n,d,r", [(5000, 16, 37), (9000, 64, 256), (300, 8, 5)])
def test_gemm_assignment_is_faiss_exact_search_except_near_ties(n, d, r):
    rng = np.random.default_rng(n)
    x = _unit(rng.standard_normal((n, d)))
    c = rng.standard_normal((r, d)).astype(np.float32)
    got_d, got_i = kernels.nearest_rows(x, c)
    want_d, want_i = _faiss_search(x, c)
    assert got_d.dtype == np.float32 and got_i.dtype == np.int64
    np.testing.assert_allclose(got_d, want_d, rtol=1e-5, atol=1e-5)
    differ = np.flatnonzero(got_i != want_i)
    assert len(differ) <= max(1, n // 1000)
    for i in differ:  # only near-ties may differ: both centroids are (almost) equally near in float64
        a, b = (np.sum((x[i].astype(np.float64) - c[j]) ** 2) for j in (got_i[i], want_i[i]))
        assert abs(a - b) <= 1e-5 * max(a, b) + 1e-6


def test_an_exact_tie_goes_to_the_lower_index():
    c = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)
    x = np.array([[0.6, 0.8], [1, 0], [np.sqrt(0.5), np.sqrt(0.5)]], dtype=np.float32)
    _, idx = kernels.nearest_rows(x, c)
    assert idx.tolist() == [1, 0, 0]


def test_chunking_changes_no_bit():
    rng = np.random.default_rng(1)
    x = _unit(rng.standard_normal((3 * kernels.BLOCK_ROWS + 123, 32)))
    c = rng.standard_normal((50, 32)).astype(np.float32)
    whole = kernels.nearest_rows(x, c, chunks=[(0, len(x))])
    for size in (kernels.BLOCK_ROWS, 1000, 777, 2 * kernels.BLOCK_ROWS):
        part = kernels.nearest_rows(x, c, chunks=kernels.row_chunks(len(x), size))
        np.testing.assert_array_equal(part[0], whole[0])
        np.testing.assert_array_equal(part[1], whole[1])
    again = kernels.nearest_rows(x, c)
    np.testing.assert_array_equal(again[0], whole[0])


def test_row_chunks_cover_every_row_and_fold_a_short_tail():
    chunks = kernels.row_chunks(3 * 4096 + 7, 4096)
    assert chunks == [(0, 4096), (4096, 8192), (8192, 12295)]
    assert kernels.row_chunks(100, 4096) == [(0, 100)]
    assert kernels.row_chunks(0, 4096) == []
    assert kernels.default_chunk_rows(1000) * 1000 * 4 <= kernels.CHUNK_BUFFER_BYTES
    assert kernels.default_chunk_rows(10**6) == kernels.BLOCK_ROWS  # one block at least, even for a huge R


def test_nearest_centroid_on_cpu_is_the_gemm_kernel_and_accepts_a_float16_memmap(tmp_path):
    x = _mixture(n=2000)
    c = x[:10].copy()
    want = kernels.nearest_rows(x, c)
    got = nearest_centroid(x, c, use_gpu=False)
    np.testing.assert_array_equal(got[1], want[1])
    path = tmp_path / "x.npy"
    np.save(path, x.astype(np.float16))
    half = nearest_centroid(np.load(path, mmap_mode="r"), c, use_gpu=False)
    assert half[0].dtype == np.float32 and half[1].shape == (2000,)


def test_centroid_sums_add_rows_in_order_like_faiss():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5000, 16)).astype(np.float32)
    labels = rng.integers(0, 40, 5000)
    labels[labels == 7] = 8  # one empty cluster
    sums, counts = kernels.centroid_sums(x, labels, 40)
    want = np.zeros((40, 16), dtype=np.float32)
    np.add.at(want, labels, x)  # sequential, in row order
    np.testing.assert_array_equal(sums, want)
    np.testing.assert_array_equal(counts, np.bincount(labels, minlength=40))


@pytest.mark.parametrize(
    "n,d,k,mpc,seed,duplicates",
    [(5000, 16, 50, 20, 3, False), (12000, 24, 100, 40, 7, False), (3000, 8, 200, 5, 0, True)],
)
def test_kmeans_with_faiss_search_is_faiss_kmeans_bit_for_bit(n, d, k, mpc, seed, duplicates):
    """Same subsample, init, centroid update, empty-cluster splits and early stop as faiss's Clustering."""
    x = _unit(np.random.default_rng(seed).standard_normal((n, d)))
    if duplicates:
        x[: n // 2] = x[0]  # many identical rows: empty clusters, split every iteration
    ref = faiss.Kmeans(d, k, niter=15, seed=seed, max_points_per_centroid=mpc, min_points_per_centroid=1)
    ref.train(x)
    ours, iterations = kernels.kmeans(x, k, niter=15, seed=seed, max_points_per_centroid=mpc, assign=_faiss_search)
    np.testing.assert_array_equal(ours, ref.centroids)
    assert iterations == len(ref.iteration_stats)
    if duplicates:
        assert sum(s["nsplit"] for s in ref.iteration_stats) > 0


def test_kmeans_on_gemm_matches_faiss_kmeans_and_is_deterministic():
    x = _mixture(n=8000, d=32, k=16, seed=4)
    ref = faiss.Kmeans(32, 40, niter=20, seed=5, max_points_per_centroid=64, min_points_per_centroid=1)
    ref.train(x)
    ours, _ = kernels.kmeans(x, 40, niter=20, seed=5, max_points_per_centroid=64)
    again, _ = kernels.kmeans(x, 40, niter=20, seed=5, max_points_per_centroid=64)
    np.testing.assert_array_equal(ours, again)
    np.testing.assert_allclose(ours, ref.centroids, atol=1e-5)  # only rounding of the assignment differs


def test_compress_on_cpu_reports_its_iterations_and_matches_faiss_assignment():
    x = _mixture(n=6000, d=24, seed=6)
    message, clusters = compress(x, 30, seed=2, niter=25, use_gpu=False)
    assert 1 <= clusters.kmeans_iterations <= 25
    _, want = _faiss_search(x, message.centroids)
    assert np.mean(clusters.assignments == want) > 0.999


def test_the_blas_thread_count_changes_no_bit():
    """OpenBLAS splits a GEMM over rows and columns, never over the summed dimension."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    x = _unit(rng.standard_normal((2 * kernels.BLOCK_ROWS, 64)))
    c = rng.standard_normal((90, 64)).astype(np.float32)
    many = kernels.nearest_rows(x, c)
    with threadpool_limits(1, user_api="blas"):
        one = kernels.nearest_rows(x, c)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])
