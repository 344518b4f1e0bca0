"""The client labels the proxy set (`pseudo_label`): Private-kNN (Zhu, Yu, Wang, CVPR 2020).

For each proxy sample (a query) the client draws a fresh Poisson subsample of its
labelled set (each sample kept with probability γ, `sampling_rate`), takes the
query's k nearest neighbours *in that subsample* (inner product on L2-normalised
features), adds N(0, σ²) to their vote histogram and answers the arg-max. Optional
screening, as PATE's confident-GNMax (Papernot et al. 2018): with `screen_sigma`, the
query is refused (-1) when its top vote plus N(0, σ₁²) is under `threshold · k`; without
it, the threshold is applied to the answer's own noisy histogram (post-processing, free).

Privacy, per query, under add/remove of one client sample: the histogram moves by at
most one vote out of one class and one into another (L2 sensitivity √2), its top vote
by at most one (sensitivity 1). Screening and answer together are one Gaussian
mechanism of noise multiplier (1/σ₁² + 2/σ²)^(-1/2) (their worst shifts add in
Mahalanobis norm). Each query sees a fresh subsample: `PoissonSampledDpEvent(γ, ·)`
amplifies it. In the worst case one sample is a neighbour of every query, so the B
queries compose B times, with the scores' release, in dp-accounting's RDP accountant;
every query is accounted whether it was answered or refused.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import LabelsMessage, ProxyFeaturesMessage
from ecos_pl.protocol.privacy import NoiseSource, ScoreMechanism, check_delta, check_rate, composed_epsilon

#: L2 sensitivity of one query's vote histogram to adding or removing one client sample (one vote in, the displaced k-th
#: neighbour's out), and to replacing one (its vote out, the newcomer's or the next neighbour's in: the same √2, the
#: subsample's coin being the sample's slot). Under replace-one dp-accounting's PLD puts the two neighbours' contributions
#: 2·√2 apart (±√2 about the unsampled 0): an upper bound of the exchange's replace-one ε.
VOTE_SENSITIVITY = math.sqrt(2.0)
#: ... and of its top vote (the screening's input)
TOP_VOTE_SENSITIVITY = 1.0
#: the cloud's neighbour vote over the released labels (`neighbour_vote`): pseudo_label's default, chosen on the
#: validation split (every client domain, seeds 1-3; docs/details.md "The cloud's neighbour vote")
CLOUD_VOTE_K = 10
#: queries whose similarities to every client sample are held at once ([rows, n_client] float32)
QUERY_CHUNK = 1024


def _checked(client_features, client_labels, query_features, k, num_classes):
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
    return client, query, labels, k


def content_keys(rows: np.ndarray) -> np.ndarray:
    """uint64 [n]: one key per client sample from its bytes (pixels or features), the same in any order or process."""
    import hashlib

    rows = np.ascontiguousarray(rows).reshape(len(rows), -1)
    return np.frombuffer(b"".join(hashlib.blake2b(r.tobytes(), digest_size=8).digest() for r in rows), dtype="<u8").copy()


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedSubsamples:
    """Seeded Poisson subsamples in which sample i's membership of query b depends on (seed, b, key_i) only.

    So the same seed gives the same subsamples whatever the order in which the client holds
    its samples (train.py's split, the program's sorted file list) — the two give the same
    labels. Reproducible runs only: whoever knows the seed knows the subsamples; without a
    seed, `PseudoLabeller` draws them from the OS's CSPRNG instead.
    """

    def __init__(self, seed: int, keys: np.ndarray):
        self.seed, self.keys = int(seed), np.asarray(keys, dtype=np.uint64)

    def masks(self, lo: int, hi: int, rate: float) -> np.ndarray:
        """bool [hi - lo, n]: queries lo..hi-1."""
        with np.errstate(over="ignore"):
            base = _mix64(np.uint64(self.seed & (2**64 - 1)) ^ np.uint64(0x5AB5_5AB5_0000_0000))
            queries = _mix64(base + np.arange(lo, hi, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
            bits = _mix64(queries[:, None] ^ self.keys[None, :])
        return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53 < rate


def subsample_masks(n_queries: int, n_client: int, rate: float, rng) -> np.ndarray:
    """bool [B, n]: query b's Poisson subsample (each client sample kept with probability `rate`), data-independent.

    `rng`: a numpy Generator or a `NoiseSource` (unseeded: the OS's CSPRNG, so nobody can know the subsamples).
    """
    if rate >= 1.0:
        return np.ones((n_queries, n_client), dtype=bool)
    return NoiseSource.wrap(rng).random((n_queries, n_client)) < rate


def knn_votes(client_features: np.ndarray, client_labels: np.ndarray, query_features: np.ndarray, k: int, num_classes: int,
              sampling_rate: float = 1.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """[B, num_classes] vote histograms: the classes of each query's k nearest client samples in its subsample.

    Query b's subsample is row b of `subsample_masks(B, n, sampling_rate, rng)`, drawn chunk by chunk
    (the same stream), so memory stays [QUERY_CHUNK, n]; or, with `rng` a `KeyedSubsamples`, keyed by
    each sample's content. A subsample with fewer than k members votes with all it has.
    """
    client, query, labels, k = _checked(client_features, client_labels, query_features, k, num_classes)
    rate = check_rate(sampling_rate, "sampling_rate")
    if rate < 1.0 and rng is None:
        raise ECOSInputError("knn_votes with sampling_rate < 1 needs rng, the source of the subsamples.")
    votes = np.zeros((query.shape[0], num_classes), dtype=np.float64)
    for lo in range(0, query.shape[0], QUERY_CHUNK):
        sims = query[lo : lo + QUERY_CHUNK] @ client.T
        if rate < 1.0:
            masks = (rng.masks(lo, lo + len(sims), rate) if isinstance(rng, KeyedSubsamples)
                     else subsample_masks(len(sims), client.shape[0], rate, rng))
            sims = np.where(masks, sims, -np.inf)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        valid = np.isfinite(np.take_along_axis(sims, top, axis=1))
        rows = np.broadcast_to(np.arange(lo, lo + len(sims))[:, None], top.shape)
        np.add.at(votes, (rows[valid], labels[top[valid]]), 1.0)
    return votes


def neighbour_vote(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Each labelled sample's label replaced by the majority of itself and its k nearest labelled neighbours.

    The cloud's clean-up of the client's released labels (post-processing: no privacy cost). Within the
    pool's own domains, neighbours in the labelling φ agree more often than the client's cross-domain votes
    are right, so a wrong vote is outvoted. The sample's own label counts 1.5, so a tie keeps it. -1 stays -1;
    k = 0 (or fewer than two labels) changes nothing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    out, kept = labels.copy(), labels >= 0
    k = min(int(k), int(kept.sum()) - 1)
    if k < 1:
        return out
    mine = features[kept]
    votes = knn_votes(mine, labels[kept], mine, k + 1, int(labels.max()) + 1)  # its own row is among the k + 1 nearest
    votes[np.arange(len(votes)), labels[kept]] += 0.5
    out[kept] = votes.argmax(axis=1)
    return out


def noisy_argmax(votes: np.ndarray, sigma: float | None, threshold: float | None, k: int, rng,
                 screen_sigma: float | None = None) -> np.ndarray:
    """Arg-max of votes + N(0, σ²) per class; -1 where the (screening's, if any) noisy top vote is under threshold·k."""
    for name, value in (("sigma", sigma), ("screen_sigma", screen_sigma)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise ECOSInputError(f"{name} must be a finite number >= 0 (or None for no noise), got {value}.")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ECOSInputError(f"threshold must lie in [0, 1] (a fraction of the k votes) or be None, got {threshold}.")
    noise, screened = NoiseSource.wrap(rng), None
    if screen_sigma:  # drawn first, so the answer's noise is the same with and without a threshold
        screened = votes.max(axis=1) + noise.normal(screen_sigma, len(votes))
    noisy = votes + (noise.normal(sigma, votes.shape) if sigma else 0.0)
    labels = noisy.argmax(axis=1).astype(np.int64)
    if threshold is not None:
        top = noisy.max(axis=1) if screened is None else screened
        labels[top < threshold * k] = -1
    return labels


def query_dp_event(sigma: float, sampling_rate: float = 1.0, screen_sigma: float | None = None):
    """One query's release (answer, and screening if any) as a dp-accounting event, amplified by its subsample."""
    import dp_accounting

    inverse_sq = (VOTE_SENSITIVITY / sigma) ** 2 + ((TOP_VOTE_SENSITIVITY / screen_sigma) ** 2 if screen_sigma else 0.0)
    event = dp_accounting.GaussianDpEvent(1.0 / math.sqrt(inverse_sq))
    return event if sampling_rate >= 1.0 else dp_accounting.PoissonSampledDpEvent(sampling_rate, event)


def label_epsilon(sigma: float | None, n_queries: int, delta: float, score_releases: list | None = None, *,
                  sampling_rate: float = 1.0, screen_sigma: float | None = None, accountant: str = "rdp",
                  adjacency: str = "add_remove") -> float:
    """ε at δ of the client's whole release: B Private-kNN answers, composed with its scores' release(s).

    `score_releases`: `ScoreMechanism`s, or (older callers) Laplace ε values, None meaning exact
    counts. Infinite when σ is 0/None (exact votes are not private) or the scores were exact.
    """
    import dp_accounting

    check_delta(delta)
    rate = check_rate(sampling_rate, "sampling_rate")
    if not sigma:
        return math.inf
    events = [dp_accounting.SelfComposedDpEvent(query_dp_event(sigma, rate, screen_sigma), int(n_queries))]
    for release in score_releases or []:
        if isinstance(release, ScoreMechanism):
            events.append(release.dp_event(adjacency))
        elif release is None:
            events.append(dp_accounting.NonPrivateDpEvent())
        else:
            events.append(dp_accounting.LaplaceDpEvent(1.0 / float(release)))
    logging.getLogger("absl").setLevel(logging.ERROR)  # RDP orders it cannot evaluate are dropped, with a warning each
    return composed_epsilon(events, delta, accountant, adjacency)


class PseudoLabeller:
    """The client's side of the extra round: proxy features in, one (noisy) label per proxy sample out."""

    def __init__(self, features: np.ndarray, labels: np.ndarray, num_classes: int, *, k: int = 10,
                 sigma: float | None = 2.0, threshold: float | None = 0.5, sampling_rate: float = 1.0,
                 screen_sigma: float | None = None, seed: int | None = 0, sample_keys: np.ndarray | None = None):
        """`sample_keys` (`content_keys` of the client's images): seeded subsamples independent of the samples' order."""
        self._features = unit_rows(features, "client_features")
        if sample_keys is not None and len(sample_keys) != len(self._features):
            raise ECOSInputError(f"sample_keys holds {len(sample_keys)} keys for {len(self._features)} client samples.")
        self._keys = sample_keys
        self._labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(num_classes)
        #: seed None: subsamples and noise from the OS's CSPRNG (a known seed would reveal both)
        self.k, self.sigma, self.threshold, self.seed = k, sigma, threshold, None if seed is None else int(seed)
        self.sampling_rate = check_rate(sampling_rate, "sampling_rate")
        self.screen_sigma = screen_sigma
        self.seconds = 0.0

    @classmethod
    def from_settings(cls, features, labels, num_classes: int, settings, *, seed: int | None, sample_keys=None) -> "PseudoLabeller":
        """The client's labeller for a `Labelling` settings object (what train.py and `ecos-client label` both build)."""
        return cls(features, labels, num_classes, k=settings.k, sigma=settings.sigma, threshold=settings.threshold,
                   sampling_rate=settings.sampling_rate, screen_sigma=settings.screen_sigma, seed=seed, sample_keys=sample_keys)

    def label(self, message: ProxyFeaturesMessage) -> LabelsMessage:
        start = time.perf_counter()
        seeded = self.seed is not None
        rng = NoiseSource([self.seed, 0x1ABE1] if seeded else None)
        # subsamples from their own stream: a query's answer depends on its subsample and its noise only
        if seeded and self._keys is not None:
            subsamples = KeyedSubsamples(self.seed, self._keys)
        else:
            subsamples = NoiseSource([self.seed, 0x5AB5] if seeded else None)
        votes = knn_votes(self._features, self._labels, message.features, self.k, self.num_classes, self.sampling_rate, subsamples)
        labels = noisy_argmax(votes, self.sigma, self.threshold, self.k, rng, self.screen_sigma)
        self.seconds += time.perf_counter() - start
        return LabelsMessage(labels, sigma=self.sigma or None)
