"""Cloud, step 1: summarise the pool's features as R k-means centroids (the only thing sent down)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import faiss
import numpy as np

from ecos_pl.protocol.errors import check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage


@dataclass
class PoolClusters:
    """The cloud's private record of the clustering: which cluster each pool sample fell in."""

    assignments: np.ndarray  # int64 [N]
    sq_distances: np.ndarray  # float32 [N], squared L2 distance to its centroid
    sizes: np.ndarray  # int64 [R]

    def members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.assignments == cluster)


def use_gpu_default() -> bool:
    return faiss.get_num_gpus() > 0


def nearest_centroid(features: np.ndarray, centroids: np.ndarray, *, use_gpu: bool | None = None):
    """Exact nearest centroid of every row (faiss flat L2 index): (squared distances, indices)."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    if use_gpu_default() if use_gpu is None else use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sq_dist, idx = index.search(features, 1)
    return sq_dist[:, 0], idx[:, 0].astype(np.int64)


#: pools with at least this many rows get a k-means spinner and an assignment bar, on a terminal only.
PROGRESS_MIN_ROWS = 100_000
#: CPU assignment chunks are this many faiss query blocks (`distance_compute_blas_query_bs` rows each).
ASSIGN_CHUNK_BLOCKS = 16


def _show_progress(n_rows: int) -> bool:
    """faiss reports no progress, so long clusterings look hung without this (rich only; no training framework)."""
    if n_rows < PROGRESS_MIN_ROWS:
        return False
    from rich.console import Console

    return Console().is_terminal


def _spinner(message: str):
    from rich.console import Console

    return Console().status(message)


def _assignment_chunks(n: int) -> list[tuple[int, int]]:
    """Row ranges that leave faiss's results bit-identical to one search over all rows.

    Each chunk is a whole number of faiss's query blocks (so BLAS sees the same
    blocks) and, when all rows would take the BLAS path, no chunk is short enough
    to fall back to the exact per-row path.
    """
    bs = max(1, int(faiss.cvar.distance_compute_blas_query_bs))
    threshold = int(faiss.cvar.distance_compute_blas_threshold)
    size = bs * max(ASSIGN_CHUNK_BLOCKS, -(-threshold // bs))
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and n >= threshold and bounds[-1] - bounds[-2] < threshold:
        del bounds[-2]  # fold a short tail into the previous chunk
    return list(zip(bounds[:-1], bounds[1:]))


def nearest_centroid_chunked(features: np.ndarray, centroids: np.ndarray, *, description: str = "assigning"):
    """`nearest_centroid` on CPU in chunks with a progress bar; the same results."""
    from rich.progress import track

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    sq_dist = np.empty(len(features), dtype=np.float32)
    assign = np.empty(len(features), dtype=np.int64)
    for lo, hi in track(_assignment_chunks(len(features)), description=description, transient=True):
        d, i = index.search(features[lo:hi], 1)
        sq_dist[lo:hi], assign[lo:hi] = d[:, 0], i[:, 0]
    return sq_dist, assign


def compress(
    pool_features: np.ndarray,
    n_centroids: int,
    *,
    seed: int = 0,
    niter: int = 25,
    send_radii: bool = False,
    radius_quantile: float = 0.9,
    max_points_per_centroid: int = 256,
    use_gpu: bool | None = None,
    verbose: bool = False,
) -> tuple[CentroidsMessage, PoolClusters]:
    """Seeded faiss k-means on the L2-normalised pool features.

    k-means trains on at most `max_points_per_centroid * R` points (faiss subsamples),
    then every pool point is assigned with an exact index, so the cost stays
    linear in N. With `send_radii`, each cluster's radius is the `radius_quantile`
    quantile of its members' distances, letting the client ignore samples the pool
    does not cover.
    """
    x = unit_rows(pool_features, "pool_features")
    r = check_count(n_centroids, "n_centroids", high=x.shape[0], high_name="the pool size")
    gpu = use_gpu_default() if use_gpu is None else bool(use_gpu)
    kmeans = faiss.Kmeans(
        x.shape[1],
        r,
        niter=niter,
        seed=int(seed),
        gpu=gpu,
        verbose=verbose,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,
    )
    show = _show_progress(x.shape[0])
    with _spinner(f"k-means: {r} centroids on {x.shape[0]:,} × {x.shape[1]} features") if show else contextlib.nullcontext():
        kmeans.train(x)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
    if show and not gpu:
        sq_dist, assign = nearest_centroid_chunked(x, centroids, description=f"assigning {x.shape[0]:,} pool rows")
    else:
        sq_dist, assign = nearest_centroid(x, centroids, use_gpu=gpu)
    sizes = np.bincount(assign, minlength=r).astype(np.int64)
    radii = None
    if send_radii:
        dist = np.sqrt(np.maximum(sq_dist, 0.0))
        radii = np.zeros(r, dtype=np.float32)
        order = np.argsort(assign, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        for c in np.flatnonzero(sizes):
            radii[c] = np.quantile(dist[order[bounds[c] : bounds[c + 1]]], radius_quantile)
    message = CentroidsMessage(centroids, radii)
    return message, PoolClusters(assign, sq_dist.astype(np.float32), sizes)
