"""Client, step 2: turn its private features into R centroid-coverage counts, the only thing sent up."""

from __future__ import annotations

import numpy as np

from ecos_pl.protocol.compress import nearest_centroid
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.privacy import DEFAULT_DELTA, NoiseSource, ScoreMechanism


#: the largest centroid norm a client accepts: k-means centroids of unit-norm features are their
#: clusters' means, so their norm is at most 1 (faiss splits an empty cluster by scaling a centroid
#: by 1 ± 1/1024, hence the slack); a radius is a distance from a unit feature, at most 1 + that.
MAX_CENTROID_NORM = 1.01
MAX_RADIUS = 1.0 + MAX_CENTROID_NORM


def check_centroids(message: CentroidsMessage) -> CentroidsMessage:
    """Centroids a client can score against: means of unit-norm features, and radii that are such distances.

    The message is finite already; a row of norm 1e30 would still overflow every distance (and faiss
    then finds no nearest centroid), so it is refused here, before any work, with one sentence.
    """
    norms = np.sqrt(np.einsum("ij,ij->i", message.centroids.astype(np.float64), message.centroids.astype(np.float64)))
    if norms.max() > MAX_CENTROID_NORM:
        r = int(norms.argmax())
        raise ECOSInputError(
            f"centroids message holds centroid {r} of norm {norms[r]:.4g}; centroids of unit-norm features have norm at most 1, "
            "so these did not come from ECOS's compress."
        )
    if message.radii is not None and message.radii.max() > MAX_RADIUS:
        raise ECOSInputError(f"centroids message holds a radius of {message.radii.max():.4g}; radii between unit-norm features and centroids are at most 2.")
    return message


def coverage_scores(
    client_features: np.ndarray,
    message: CentroidsMessage,
    *,
    epsilon: float | None = None,
    mechanism: str = "gaussian",
    delta: float = DEFAULT_DELTA,
    seed: int | None = None,
    use_radii: bool = True,
    noise: NoiseSource | None = None,
) -> ScoresMessage:
    """Each client sample votes for its nearest centroid; v_r counts the votes.

    If the message carries radii (and `use_radii`), a sample farther than its
    centroid's radius casts no vote: the pool does not cover it. With `epsilon`,
    every count gets the `mechanism`'s noise (Gaussian calibrated to (ε, δ), or
    Laplace(1/ε)) and is clipped at zero (post-processing); `epsilon=None` releases
    exact counts. `seed=None` draws the noise from the OS's CSPRNG (`privacy.NoiseSource`); `noise`: a source
    that goes on across rounds instead (a client answering several rounds never draws the same noise twice).
    A centroids message's `share` spends that part of the (ε, δ) budget (`ScoreMechanism.for_share`); the reply
    carries the ε of this release alone.
    """
    privacy = ScoreMechanism.from_settings(epsilon, mechanism, delta)
    if message.share is not None and privacy.mechanism != "none":
        privacy = privacy.for_share(message.share)
    u = unit_rows(client_features, "client_features", dim=message.dim)
    sq_dist, nearest = nearest_centroid(u, check_centroids(message).centroids)
    if (nearest < 0).any():  # faiss's "no neighbour": a distance that is not finite
        raise ECOSInputError(f"centroids message gives {int((nearest < 0).sum())} client sample(s) no finite distance to any centroid.")
    votes = np.ones(len(u), dtype=bool)
    if use_radii and message.radii is not None:
        votes = np.sqrt(np.maximum(sq_dist, 0.0)) <= message.radii[nearest]
    scores = np.bincount(nearest[votes], minlength=message.n_centroids).astype(np.float64)
    scores = privacy.privatize(scores, noise if noise is not None else NoiseSource(seed))
    return ScoresMessage(scores.astype(np.float32), privacy.release_epsilon())


def scoring_macs(n_client: int, message: CentroidsMessage) -> int:
    """Multiply-adds of the client's nearest-centroid search (its whole compute besides φ)."""
    return int(n_client) * message.n_centroids * message.dim
