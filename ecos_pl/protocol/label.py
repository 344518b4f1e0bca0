"""The client labels the proxy set (`pseudo_label`): k-NN votes in φ-space, Gaussian noisy arg-max.

The Private-kNN / PATE "noisy max": for each proxy sample the client takes its k
nearest labelled samples (faiss, inner product on L2-normalised features), adds
N(0, σ²) to the vote histogram and answers the arg-max, or abstains (-1) when the
noisy top vote is under `threshold · k` (post-processing of the same noisy
histogram, so abstaining costs no extra privacy).

Privacy: adding or removing one client sample changes a query's histogram by at
most one vote out of one class and one into another (its (k+1)-th neighbour
moves in), so the L2 sensitivity is √2 and each query is a Gaussian mechanism
with noise multiplier σ/√2. In the worst case one sample is a neighbour of every
proxy sample, so the B answers compose B times. dp-accounting's RDP accountant
does the composition (with the scores' Laplace release when there is one).
"""

from __future__ import annotations

import math
import time

import faiss
import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import LabelsMessage, ProxyFeaturesMessage

#: L2 sensitivity of one query's vote histogram to adding or removing one client sample
VOTE_SENSITIVITY = math.sqrt(2.0)


def knn_votes(client_features: np.ndarray, client_labels: np.ndarray, query_features: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """[B, num_classes] vote histograms: the classes of each query's k nearest client samples."""
    client = unit_rows(client_features, "client_features")
    query = unit_rows(query_features, "proxy_features")
    if query.shape[1] != client.shape[1]:
        raise ECOSInputError(
            f"proxy_features have dimension {query.shape[1]} but the client's features have dimension {client.shape[1]}."
        )
    labels = np.asarray(client_labels, dtype=np.int64)
    if labels.shape != (client.shape[0],):
        raise ECOSInputError(f"client_labels must hold one label per client sample ({client.shape[0]}), got shape {labels.shape}.")
    if (labels < 0).any() or (labels >= num_classes).any():
        raise ECOSInputError(f"client_labels must lie in [0, {num_classes}).")
    k = check_count(k, "k", high=client.shape[0], high_name="the number of labelled client samples")
    index = faiss.IndexFlatIP(client.shape[1])
    index.add(np.ascontiguousarray(client, dtype=np.float32))
    _, neighbours = index.search(np.ascontiguousarray(query, dtype=np.float32), k)
    votes = np.zeros((query.shape[0], num_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(query.shape[0]), k), labels[neighbours.ravel()]), 1.0)
    return votes


def noisy_argmax(votes: np.ndarray, sigma: float | None, threshold: float | None, k: int, rng: np.random.Generator) -> np.ndarray:
    """Arg-max of votes + N(0, σ²) per class; -1 where the noisy top vote is under threshold·k."""
    if sigma is not None and (not math.isfinite(sigma) or sigma < 0):
        raise ECOSInputError(f"sigma must be a finite number >= 0 (or None for no noise), got {sigma}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ECOSInputError(f"threshold must lie in [0, 1] (a fraction of the k votes) or be None, got {threshold}.")
    noisy = votes + (rng.normal(0.0, sigma, size=votes.shape) if sigma else 0.0)
    labels = noisy.argmax(axis=1).astype(np.int64)
    if threshold is not None:
        labels[noisy.max(axis=1) < threshold * k] = -1
    return labels


def label_epsilon(sigma: float | None, n_queries: int, delta: float, score_epsilons: list[float] | None = None) -> float:
    """ε at δ of the client's whole release: B noisy-max answers, composed with its Laplace scores.

    Infinite when σ is 0/None (exact votes are not private), or when the scores were
    released without noise (`score_epsilons` containing None).
    """
    if not sigma:
        return math.inf
    if not 0.0 < delta < 1.0:
        raise ECOSInputError(f"delta must lie in (0, 1), got {delta}.")
    score_epsilons = list(score_epsilons or [])
    if any(e is None for e in score_epsilons):
        return math.inf
    import dp_accounting
    from dp_accounting.rdp import rdp_privacy_accountant

    events = [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / VOTE_SENSITIVITY), int(n_queries))]
    events += [dp_accounting.LaplaceDpEvent(1.0 / e) for e in score_epsilons]
    accountant = rdp_privacy_accountant.RdpAccountant()
    accountant.compose(dp_accounting.ComposedDpEvent(events))
    return float(accountant.get_epsilon(delta))


class PseudoLabeller:
    """The client's side of the extra round: proxy features in, one (noisy) label per proxy sample out."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 10,
                 sigma: float | None = 2.0, threshold: float | None = 0.5, seed: int = 0):
        self._features = unit_rows(features, "client_features")
        self._labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        self.k, self.sigma, self.threshold, self.seed = k, sigma, threshold, int(seed)
        self.seconds = 0.0

    def label(self, message: ProxyFeaturesMessage) -> LabelsMessage:
        start = time.perf_counter()
        votes = knn_votes(self._features, self._labels, message.features, self.k, self.num_classes)
        rng = np.random.default_rng([self.seed, 0x1ABE1])
        labels = noisy_argmax(votes, self.sigma, self.threshold, self.k, rng)
        self.seconds += time.perf_counter() - start
        return LabelsMessage(labels, sigma=self.sigma or None)
