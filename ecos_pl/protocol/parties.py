"""The two parties, Flower-style: a cloud strategy and a client that meet only through messages.

Everything the client learns is a `CentroidsMessage`; everything the cloud learns
is a `ScoresMessage`. Timings and the client's multiply-adds are kept on each
side so a run can report what the protocol cost.
"""

from __future__ import annotations

import time

import numpy as np

from ecos_pl.protocol.compress import PoolClusters, compress
from ecos_pl.protocol.errors import ECOSInputError, check_epsilon
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.score import coverage_scores, scoring_macs
from ecos_pl.protocol.select import select


class ECOSClient:
    """Holds the private features; answers a centroids message with coverage scores and nothing else."""

    def __init__(self, features: np.ndarray, *, epsilon: float | None = None, seed: int = 0, use_radii: bool = True):
        self._features = unit_rows(features, "client_features")
        self.epsilon = check_epsilon(epsilon)
        self.seed = int(seed)
        self.use_radii = use_radii
        self.score_seconds = 0.0
        self.score_macs = 0

    @property
    def n_samples(self) -> int:
        return self._features.shape[0]

    def score(self, message: CentroidsMessage) -> ScoresMessage:
        start = time.perf_counter()
        reply = coverage_scores(
            self._features, message, epsilon=self.epsilon, seed=self.seed, use_radii=self.use_radii
        )
        self.score_seconds += time.perf_counter() - start
        self.score_macs += scoring_macs(self.n_samples, message)
        return reply

    def upload_features(self) -> np.ndarray:
        """Privacy-violating reference only (`oracle_central`): hands over every client feature."""
        return self._features.copy()


class ECOSCloud:
    """Holds the pool's features; compresses them, then turns the client's scores into a proxy set."""

    def __init__(
        self,
        pool_features: np.ndarray,
        n_centroids: int,
        *,
        seed: int = 0,
        niter: int = 25,
        send_radii: bool = False,
        radius_quantile: float = 0.9,
        temperature: float = 1.0,
        max_points_per_centroid: int = 256,
    ):
        self.pool_features = unit_rows(pool_features, "pool_features")
        self.n_centroids = n_centroids
        self.seed = seed
        self.niter = niter
        self.send_radii = send_radii
        self.radius_quantile = radius_quantile
        self.temperature = temperature
        self.max_points_per_centroid = max_points_per_centroid
        self.clusters: PoolClusters | None = None
        self.message: CentroidsMessage | None = None
        self.allocation: np.ndarray | None = None

    def compress(self) -> CentroidsMessage:
        self.message, self.clusters = compress(
            self.pool_features,
            self.n_centroids,
            seed=self.seed,
            niter=self.niter,
            send_radii=self.send_radii,
            radius_quantile=self.radius_quantile,
            max_points_per_centroid=self.max_points_per_centroid,
        )
        return self.message

    def select(self, replies: ScoresMessage | list[ScoresMessage], budget: int) -> np.ndarray:
        """One proxy set for one client, or for a fleet (their scores summed)."""
        if self.clusters is None:
            raise ECOSInputError("select() was called before compress(); the cloud has no clusters yet.")
        replies = [replies] if isinstance(replies, ScoresMessage) else list(replies)
        if not replies:
            raise ECOSInputError("replies is empty; select() needs at least one client's scores.")
        for reply in replies:
            if reply.n_centroids != self.message.n_centroids:
                raise ECOSInputError(
                    f"scores has length {reply.n_centroids} but there are {self.message.n_centroids} centroids."
                )
        total = np.sum([reply.scores.astype(np.float64) for reply in replies], axis=0)
        indices, self.allocation = select(
            self.pool_features, self.clusters, total, budget, temperature=self.temperature
        )
        return indices
