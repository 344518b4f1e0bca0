"""Client, step 2: turn its private features into R centroid-coverage counts, the only thing sent up."""

from __future__ import annotations

import numpy as np

from ecos_pl.protocol.compress import nearest_centroid
from ecos_pl.protocol.errors import check_epsilon
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.privacy import laplace_noise


def coverage_scores(
    client_features: np.ndarray,
    message: CentroidsMessage,
    *,
    epsilon: float | None = None,
    seed: int | None = 0,
    use_radii: bool = True,
) -> ScoresMessage:
    """Each client sample votes for its nearest centroid; v_r counts the votes.

    If the message carries radii (and `use_radii`), a sample farther than its
    centroid's radius casts no vote: the pool does not cover it. With `epsilon`,
    Laplace(1/ε) noise is added to every count and the result clipped at zero,
    which keeps the release ε-DP (post-processing).
    """
    eps = check_epsilon(epsilon)
    u = unit_rows(client_features, "client_features", dim=message.dim)
    sq_dist, nearest = nearest_centroid(u, message.centroids)
    votes = np.ones(len(u), dtype=bool)
    if use_radii and message.radii is not None:
        votes = np.sqrt(np.maximum(sq_dist, 0.0)) <= message.radii[nearest]
    scores = np.bincount(nearest[votes], minlength=message.n_centroids).astype(np.float64)
    if eps is not None:
        scores = np.maximum(scores + laplace_noise(scores.shape, eps, np.random.default_rng(seed)), 0.0)
    return ScoresMessage(scores.astype(np.float32), eps)


def scoring_macs(n_client: int, message: CentroidsMessage) -> int:
    """Multiply-adds of the client's nearest-centroid search (its whole compute besides φ)."""
    return int(n_client) * message.n_centroids * message.dim
