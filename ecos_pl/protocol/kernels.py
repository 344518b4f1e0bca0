"""Nearest-centroid assignment and Lloyd k-means on numpy's BLAS: the protocol's CPU compute.

Why not faiss on CPU: faiss's wheels bundle their own OpenBLAS (0.3.15 in faiss
1.15.1), which picks its kernel from a 2021 CPU table. On this project's 2-core
AMD EPYC it takes the AVX2 "Zen" kernel (about 0.85× numpy's AVX-512 SGEMM);
where it does not recognise the CPU (or `OPENBLAS_CORETYPE` is unset-but-empty)
it falls back to "Prescott" (SSE3) and runs at about 0.22× of numpy's SGEMM,
which is the 1/5 of issue 18. numpy's OpenBLAS is current, so the same GEMM
runs at the machine's rate wherever the protocol runs. faiss stays the engine on
GPU (`compress.py`) and for k > 1 neighbours (`label.py`, `samplers.py`).

`kmeans` is faiss's `Clustering` (random init, the same subsample and initial
centroids from faiss's own RNG, sums in point order, faiss's empty-cluster
split); only the assignment's rounding differs, so a point at a near-tie
between two centroids can fall on the other side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import faiss
import numpy as np

#: rows per GEMM block; a chunk is a whole number of blocks.
BLOCK_ROWS = 4096
#: the [rows, R] float32 score buffer of one chunk stays under this many bytes.
CHUNK_BUFFER_BYTES = 64 * 2**20
#: faiss's relative perturbation when it splits a cluster to refill an empty one.
SPLIT_EPS = np.float32(1.0 / 1024.0)


def row_chunks(n: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Row ranges of `chunk_rows` rows; a tail shorter than one block is folded into the chunk before it.

    A tiny last GEMM would be slow and may take another BLAS code path; the
    results do not depend on where the chunks fall (tests/test_kernels.py).
    """
    size = max(1, int(chunk_rows))
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min(BLOCK_ROWS, size):
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def default_chunk_rows(n_centroids: int) -> int:
    """Rows per chunk: whole blocks whose score buffer fits `CHUNK_BUFFER_BYTES` (one block at least)."""
    blocks = max(1, CHUNK_BUFFER_BYTES // (BLOCK_ROWS * max(1, n_centroids) * 4))
    return blocks * BLOCK_ROWS


def nearest_rows(
    x: np.ndarray,
    centroids: np.ndarray,
    *,
    chunks: Iterable[tuple[int, int]] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid of every row: (squared L2 distance float32 [N], index int64 [N]).

    Per chunk one SGEMM `x @ (-2 c)ᵀ` (scaling by -2 is exact, so this is
    -2·x·c bit for bit), `+ ‖c‖²`, argmin (the lowest index wins a tie), then
    `‖x‖²` added back and clamped at zero, as faiss does. Memory beyond the
    outputs is one chunk's [rows, R] buffer.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    n, r = x.shape[0], c.shape[0]
    neg2_ct = np.ascontiguousarray((c * np.float32(-2.0)).T)
    c_sq = np.einsum("ij,ij->i", c, c)
    chunks = row_chunks(n, default_chunk_rows(r)) if chunks is None else list(chunks)
    sq_dist = np.empty(n, dtype=np.float32)
    idx = np.empty(n, dtype=np.int64)
    buf = np.empty((max((hi - lo for lo, hi in chunks), default=0), r), dtype=np.float32)
    for lo, hi in chunks:
        block = np.asarray(x[lo:hi], dtype=np.float32)
        scores = np.matmul(block, neg2_ct, out=buf[: hi - lo])
        scores += c_sq
        best = scores.argmin(axis=1)
        partial = np.take_along_axis(scores, best[:, None], axis=1)[:, 0]
        np.maximum(partial + np.einsum("ij,ij->i", block, block), 0.0, out=sq_dist[lo:hi])
        idx[lo:hi] = best
        if on_chunk is not None:
            on_chunk(lo, hi)
    return sq_dist, idx


def centroid_sums(x: np.ndarray, assign: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster float32 sums of the rows, added in row order (as faiss does), and the cluster sizes.

    One vectorised step per rank inside the clusters (the j-th member of every
    cluster at once), so the Python loop runs max(size) times, not N times.
    """
    counts = np.bincount(assign, minlength=k)
    order = np.argsort(assign, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.zeros((k, x.shape[1]), dtype=np.float32)
    active = np.flatnonzero(counts)
    for j in range(int(counts.max(initial=0))):
        active = active[counts[active] > j]
        sums[active] += x[order[starts[active] + j]]
    return sums, counts


def _rand_perm(n: int, seed: int) -> np.ndarray:
    """faiss's `rand_perm` (its own mt19937 and shuffle), so subsample and init are faiss's."""
    perm = np.empty(n, dtype=np.int32)
    faiss.rand_perm(faiss.swig_ptr(perm), n, int(seed))
    return perm


def split_empty_clusters(centroids: np.ndarray, sizes: np.ndarray, n: int) -> int:
    """Refill each empty cluster by splitting a big one, as faiss's `split_clusters` does (same RNG stream).

    The donor is drawn with probability (size - 1) / (n - k), scanning clusters in
    order; after 10·k misses the largest cluster gives. Returns the number of splits.
    """
    k = len(sizes)
    hassign = sizes.astype(np.float32)
    rng = None
    splits = 0
    up, down = np.float32(1) + SPLIT_EPS, np.float32(1) - SPLIT_EPS
    even = (np.arange(centroids.shape[1]) % 2) == 0
    for ci in np.flatnonzero(hassign == 0):
        rng = rng or faiss.RandomGenerator(1234)
        cj, found = 0, False
        for tries in range(10 * k):
            cj = tries % k
            p = np.float32((np.float64(hassign[cj]) - 1.0) / np.float64(np.float32(n - k)))
            if np.float32(rng.rand_float()) < p:
                found = True
                break
        if not found:
            cj = int(np.argmax(hassign))
        donor = centroids[cj].copy()
        centroids[ci] = donor * np.where(even, up, down)
        centroids[cj] = donor * np.where(even, down, up)
        hassign[ci] = hassign[cj] / np.float32(2)
        hassign[cj] -= hassign[ci]
        splits += 1
    return splits


def kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int,
    seed: int,
    max_points_per_centroid: int,
    assign: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] = nearest_rows,
) -> tuple[np.ndarray, int]:
    """faiss's k-means (random init) with the assignment done by `assign`: (centroids [k, d], iterations run).

    Stops early as faiss does: once the objective (the float32 running sum of the
    squared distances, in row order) repeats the previous iteration's.
    """
    n = x.shape[0]
    train = x
    if n > k * max_points_per_centroid:
        train = x[_rand_perm(n, seed)[: k * max_points_per_centroid]]
    nt = train.shape[0]
    if nt == k:  # faiss copies the first k input rows (not the subsample) here
        return np.array(x[:k], dtype=np.float32), 0
    centroids = np.array(train[_rand_perm(nt, seed + 1)[:k]], dtype=np.float32)
    previous_obj = None
    iterations = 0
    for _ in range(niter):
        sq_dist, labels = assign(train, centroids)
        iterations += 1
        obj = np.cumsum(sq_dist, dtype=np.float32)[-1]
        sums, sizes = centroid_sums(train, labels, k)
        inv = np.float32(1) / np.maximum(sizes, 1).astype(np.float32)
        centroids = sums * inv[:, None]
        split_empty_clusters(centroids, sizes, nt)
        if previous_obj is not None and previous_obj != 0 and obj == previous_obj:
            break
        previous_obj = obj
    return centroids, iterations
