"""Cloud, step 1: summarise the pool's features as R k-means centroids (the only thing sent down)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import faiss
import numpy as np

from ecos_pl.protocol import kernels
from ecos_pl.protocol.errors import check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage
from ecos_pl.protocol.settings import Clustering


@dataclass
class PoolClusters:
    """The cloud's private record of the clustering: which cluster each pool sample fell in."""

    assignments: np.ndarray  # int64 [N]
    sq_distances: np.ndarray  # float32 [N], squared L2 distance to its centroid
    sizes: np.ndarray  # int64 [R]
    kmeans_iterations: int | None = None  # Lloyd iterations run (fewer than niter if it converged)

    def members(self, cluster: int) -> np.ndarray:
        return np.flatnonzero(self.assignments == cluster)


def use_gpu_default() -> bool:
    return faiss.get_num_gpus() > 0


#: pools with at least this many rows get a k-means spinner and an assignment bar, on a terminal only.
PROGRESS_MIN_ROWS = 100_000
#: CPU assignment chunks are at most this many `kernels.BLOCK_ROWS`-row blocks (fewer when R is large).
ASSIGN_CHUNK_BLOCKS = 4


def _assignment_chunks(n: int, n_centroids: int = 1) -> list[tuple[int, int]]:
    """The CPU assignment's row chunks: whole blocks, the score buffer bounded, a short tail folded in."""
    fit = kernels.default_chunk_rows(n_centroids) // kernels.BLOCK_ROWS
    return kernels.row_chunks(n, min(ASSIGN_CHUNK_BLOCKS, fit) * kernels.BLOCK_ROWS)


def nearest_centroid(features: np.ndarray, centroids: np.ndarray, *, use_gpu: bool | None = None):
    """Exact nearest centroid of every row: (squared distances, indices).

    On CPU a chunked SGEMM on numpy's BLAS (`kernels.nearest_rows`: faiss's
    bundled BLAS can run at a fifth of the machine's rate); on GPU a faiss flat index.
    """
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    if use_gpu_default() if use_gpu is None else use_gpu:
        index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(c.shape[1]))
        index.add(c)
        sq_dist, idx = index.search(np.ascontiguousarray(features, dtype=np.float32), 1)
        return sq_dist[:, 0], idx[:, 0].astype(np.int64)
    return kernels.nearest_rows(features, c, chunks=_assignment_chunks(len(features), len(c)))


def _show_progress(n_rows: int) -> bool:
    """Long clusterings look hung without this (rich only; no training framework)."""
    if n_rows < PROGRESS_MIN_ROWS:
        return False
    from rich.console import Console

    return Console().is_terminal


def _spinner(message: str):
    from rich.console import Console

    return Console().status(message)


def nearest_centroid_chunked(features: np.ndarray, centroids: np.ndarray, *, description: str = "assigning"):
    """`nearest_centroid` on CPU with a progress bar; the same chunks, so the same results."""
    from rich.progress import Progress

    c = np.ascontiguousarray(centroids, dtype=np.float32)
    with Progress(transient=True) as progress:
        task = progress.add_task(description, total=len(features))
        return kernels.nearest_rows(
            features,
            c,
            chunks=_assignment_chunks(len(features), len(c)),
            on_chunk=lambda lo, hi: progress.advance(task, hi - lo),
        )


def compress(
    pool_features: np.ndarray,
    n_centroids: int,
    *,
    seed: int = 0,
    niter: int = Clustering.niter,
    send_radii: bool = Clustering.send_radii,
    radius_quantile: float = Clustering.radius_quantile,
    max_points_per_centroid: int = Clustering.max_points_per_centroid,
    use_gpu: bool | None = None,
    verbose: bool = False,
) -> tuple[CentroidsMessage, PoolClusters]:
    """Seeded k-means on the L2-normalised pool features: faiss's algorithm, on numpy's BLAS on CPU, faiss on GPU.

    k-means trains on at most `max_points_per_centroid * R` points (subsampled as
    faiss does), then every pool point is assigned exactly, so the cost stays
    linear in N. `verbose` is faiss's (GPU only). With `send_radii`, each cluster's radius is the `radius_quantile`
    quantile of its members' distances, letting the client ignore samples the pool
    does not cover.
    """
    x = unit_rows(pool_features, "pool_features")
    r = check_count(n_centroids, "n_centroids", high=x.shape[0], high_name="the pool size")
    gpu = use_gpu_default() if use_gpu is None else bool(use_gpu)
    show = _show_progress(x.shape[0])
    with _spinner(f"k-means: {r} centroids on {x.shape[0]:,} × {x.shape[1]} features") if show else contextlib.nullcontext():
        if gpu:
            kmeans = faiss.Kmeans(
                x.shape[1],
                r,
                niter=niter,
                seed=int(seed),
                gpu=True,
                verbose=verbose,
                max_points_per_centroid=max_points_per_centroid,
                min_points_per_centroid=1,
            )
            kmeans.train(x)
            centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
            iterations = len(kmeans.iteration_stats)
        else:
            centroids, iterations = kernels.kmeans(
                x, r, niter=niter, seed=int(seed), max_points_per_centroid=max_points_per_centroid
            )
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
    return message, PoolClusters(assign, sq_dist.astype(np.float32), sizes, iterations)
