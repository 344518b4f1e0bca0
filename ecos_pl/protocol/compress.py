"""Cloud, step 1: summarise the pool's features as R k-means centroids (the only thing sent down)."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from ecos_pl.protocol.errors import check_count, check_features
from ecos_pl.protocol.features import normalized
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
    x = normalized(check_features(pool_features, "pool_features"))
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
    kmeans.train(x)
    centroids = np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
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
