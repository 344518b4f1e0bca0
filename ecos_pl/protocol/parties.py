"""The two parties, Flower-style: a cloud strategy and a client that meet only through messages.

Everything the client learns is a `CentroidsMessage` (and, in pseudo_label, a
`ProxyFeaturesMessage`); everything the cloud learns is their answers. The client
answers through `handle`, which is all an `Exchange` calls; the cloud never holds a
client. Timings and the client's multiply-adds are kept on each side so a run can
report what the protocol cost.
"""

from __future__ import annotations

import time

import numpy as np

from ecos_pl.protocol.compress import PoolClusters, compress
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage, ProxyFeaturesMessage, ScoresMessage, answer_tag
from ecos_pl.protocol.device import bound_counts, check_fleet_noise, share_variance
from ecos_pl.protocol.privacy import DEFAULT_DELTA, NoiseSource, ScoreMechanism, skellam_noise
from ecos_pl.protocol.score import coverage_scores, scoring_macs
from ecos_pl.protocol.select import select
from ecos_pl.protocol.settings import Allocation, Clustering, cloud_settings

#: default per-client cap of a fleet selection (see `cap_client_scores`)
CLIENT_CAP = Allocation().client_cap


def cap_client_scores(scores: list[np.ndarray], cap: float | None = CLIENT_CAP) -> tuple[list[np.ndarray], list[float | None]]:
    """Each client's scores, bounded where one client claims more than `cap` times what the others' median holds.

    A client's scores count its samples per centroid, so their total is the number of samples it claims; the cloud
    cannot check it, and a forged file can claim 1e9. With more than one client, two bounds, each relative to the
    *other* clients' median (a forger cannot move it):

    - its total: above `cap` × the others' median total, all its scores are scaled by one factor to that bound (its
      own proportions stay);
    - each count: above `cap` × the others' median largest count, that count is clipped to it. Without this a total
      put on one centroid weighs more than its share, because at τ < 1 the allocation favours concentrated votes
      (at τ = 0.5 it goes as the square): one forger among 10 devices took 0.30 of the budget with the total bound
      alone, 0.07 with both (`benchmarks/fleet.py --part forge`).

    Scores under both bounds are returned untouched, so a fleet of comparable clients selects exactly what it did
    without the cap (measured on digits_lite: shards of 10, 100 and 604 devices, and devices holding one or two
    classes each, give the same proxy sets). An honest client that holds far more than the others, or all its
    samples in one cluster while the others spread theirs, is bounded as a forger would be. `cap=None`: no cap.
    Returns (scores, per-client scale: the fraction of its claimed total that counts, or None where untouched).
    """
    scores = [np.asarray(v, dtype=np.float64) for v in scores]
    scales: list[float | None] = [None] * len(scores)
    if cap is None or len(scores) < 2:
        return scores, scales
    if not (np.isfinite(cap) and cap >= 1):
        raise ECOSInputError(f"client_cap must be a number >= 1 (or None for no cap), got {cap!r}.")
    totals = np.array([v.sum() for v in scores])
    peaks = np.array([v.max(initial=0.0) for v in scores])
    capped = list(scores)
    for i, claimed in enumerate(totals):
        total_bound, peak_bound = (_others_median(values, i) * cap for values in (totals, peaks))
        bounded = scores[i] * (total_bound / claimed) if claimed > total_bound else scores[i]
        bounded = np.minimum(bounded, peak_bound)
        if not np.array_equal(bounded, scores[i]):
            capped[i], scales[i] = bounded, float(bounded.sum() / claimed) if claimed > 0 else 0.0
    return capped, scales


def _others_median(values: np.ndarray, i: int) -> float:
    """The median of the other clients' positive values (a client whose samples covered no centroid says nothing about
    sizes); inf when none is positive."""
    others = np.delete(values, i)
    others = others[others > 0]
    return float(np.median(others)) if len(others) else np.inf


class ECOSClient:
    """Holds the private features; answers a centroids message with coverage scores and nothing else.

    Its counts are bounded on the device first (`device.bound_counts`: at most its sample count each; with
    `unit="device"` its vector clipped to L2 norm `clip_norm`), then noised: `noise="local"` adds the full noise for
    (ε, δ) (`score`: a `ScoresMessage` the cloud may see alone); `noise="distributed"` adds a Skellam share sized so
    that the secure sum of any `min_answers` devices carries (ε, δ) (`share`: an integer vector for a secure sum only,
    never sent in the clear)."""

    def __init__(self, features: np.ndarray, *, epsilon: float | None = None, mechanism: str = "gaussian",
                 delta: float = DEFAULT_DELTA, seed: int | None = None, use_radii: bool = True, labeller=None,
                 phi_tag: bytes | None = None, noise: str = "local", unit: str = "sample", clip_norm: float = 10.0,
                 min_answers: int = 1):
        self._features = unit_rows(features, "client_features")
        #: the tag of the φ its features come from (a device with its own φ file): centroids of another φ are refused
        self.phi_tag = phi_tag
        #: answers a `ProxyFeaturesMessage` (pseudo_label): a `PseudoLabeller`, or a callable building one on first use
        self._labeller = labeller
        check_fleet_noise(noise, unit, clip_norm, min_answers)
        self.noise, self.unit, self.clip_norm, self.min_answers = noise, unit, float(clip_norm), int(min_answers)
        #: how the scores are privatised; `epsilon=None`: exact counts. `seed=None`: noise from the OS's CSPRNG
        self.privacy = ScoreMechanism.from_settings(epsilon, mechanism, delta,
                                                    sensitivity=self.clip_norm if unit == "device" else 1.0)
        if noise == "distributed" and self.privacy.mechanism == "laplace":
            raise ECOSInputError("client.noise=distributed adds Skellam noise, calibrated like the Gaussian; use mechanism gaussian.")
        self.epsilon = self.privacy.epsilon
        self.seed = None if seed is None else int(seed)
        #: one noise stream for every round this client answers (a seeded stream restarted per round would repeat its draws)
        self._noise = NoiseSource(self.seed)
        #: the part of its score budget this client has spent; a round asking for more than is left is refused
        self.spent_share = 0.0
        self.use_radii = use_radii
        self.score_seconds = 0.0
        self.score_macs = 0

    @property
    def n_samples(self) -> int:
        return self._features.shape[0]

    def counts(self, message: CentroidsMessage) -> np.ndarray:
        """This device's exact counts, bounded (`device.bound_counts`); timed and counted as the client's compute."""
        if self.phi_tag is not None and message.tag is not None and message.tag != self.phi_tag:
            raise ECOSInputError(f"the centroids message was computed with another φ (tag {message.tag.hex()}) than this "
                                 f"device's phi file (tag {self.phi_tag.hex()}); fetch the φ file that came with it.")
        start = time.perf_counter()
        exact = coverage_scores(self._features, message, epsilon=None, use_radii=self.use_radii).scores
        bounded = bound_counts(exact, self.n_samples, self.unit, self.clip_norm)
        self.score_seconds += time.perf_counter() - start
        self.score_macs += scoring_macs(self.n_samples, message)
        return bounded

    def _spend(self, message: CentroidsMessage) -> ScoreMechanism:
        """The mechanism of this round: the share of this client's budget the message asks for (the whole of it when
        it names none). The client keeps the ledger, so rounds together never spend more than its (ε, δ)."""
        share = 1.0 if message.share is None else message.share
        if self.privacy.mechanism == "none":
            return self.privacy
        if self.spent_share + share > 1.0 + 1e-9:
            raise ECOSInputError(
                f"centroids message asks for share {share:g} of this client's score budget, but only "
                f"{max(0.0, 1.0 - self.spent_share):.4g} is left (ε = {self.epsilon:g} in all); the client does not answer."
            )
        self.spent_share += share
        return self.privacy if share == 1.0 else self.privacy.for_share(share)

    def score(self, message: CentroidsMessage) -> ScoresMessage:
        """The answer the cloud may see alone: bounded counts with the full local noise (for this round's share),
        clipped at zero."""
        if self.noise == "distributed" and self.privacy.mechanism != "none":
            raise ECOSInputError("client.noise=distributed needs a secure sum (secagg, or the in-process sum of clients=N): "
                                 "a device's share alone is not private; use client.noise=local without one.")
        counts = self.counts(message)
        privacy = self._spend(message)
        noisy = privacy.privatize(counts, self._noise)
        return ScoresMessage(noisy.astype(np.float32), privacy.release_epsilon(), tag=answer_tag(message))  # which centroids it answers

    def share(self, message: CentroidsMessage) -> np.ndarray:
        """The integer vector this device hands to a secure sum: its bounded counts plus its Skellam share
        (`noise="distributed"`), or its local noisy counts rounded (`noise="local"`, post-processing); never clipped
        at zero (the cloud clips the sum)."""
        if self.noise == "local":
            return np.rint(self.score(message).scores.astype(np.float64)).astype(np.int64)
        counts = self.counts(message).astype(np.int64)
        if self.privacy.mechanism == "none":
            return counts
        privacy = self._spend(message)
        variance, _ = share_variance(privacy, self.unit, self.clip_norm, message.n_centroids, self.min_answers)
        return counts + skellam_noise(variance, counts.shape, self._noise)

    def upload_features(self) -> np.ndarray:
        """Privacy-violating reference only (`oracle_central`): hands over every client feature."""
        return self._features.copy()

    @property
    def labeller(self):
        if callable(self._labeller) and not hasattr(self._labeller, "label"):
            self._labeller = self._labeller()
        return self._labeller

    def handle(self, message):
        """The one entry point of an `Exchange`: a message in, this client's answer out."""
        from ecos_pl.protocol.exchange import FeaturesRequest, FeaturesUpload

        if isinstance(message, CentroidsMessage):
            return self.score(message)
        if isinstance(message, ProxyFeaturesMessage):
            if self._labeller is None:
                raise ECOSInputError("this client holds no labelled data to label the proxy set with (labeller is None).")
            return self.labeller.label(message)
        if isinstance(message, FeaturesRequest):
            return FeaturesUpload(self.upload_features())
        raise ECOSInputError(f"a client cannot answer a {type(message).__name__}.")


class ECOSCloud:
    """Holds the pool's features; compresses them, then turns the client's scores into a proxy set."""

    def __init__(self, pool_features: np.ndarray, clustering: Clustering | int = Clustering(),
                 allocation: Allocation = Allocation(), *, seed: int = 0, **settings):
        """`clustering` may be R alone, and `settings` the other fields of `Clustering`/`Allocation` by name."""
        if not isinstance(clustering, Clustering):
            clustering, settings = None, {"n_centroids": clustering, **settings}
        clustering, allocation = cloud_settings(settings, clustering, allocation, where="")
        self.pool_features = unit_rows(pool_features, "pool_features")
        self.clustering, self.allocation_settings, self.seed = clustering, allocation, seed
        #: after `select`: each client's scale under the cap (None: untouched), and the fleet's summed scores
        self.client_scales: list[float | None] = []
        self.fleet_scores: np.ndarray | None = None
        self.clusters: PoolClusters | None = None
        self.message: CentroidsMessage | None = None
        self.allocation: np.ndarray | None = None

    def compress(self) -> CentroidsMessage:
        self.message, self.clusters = compress(self.pool_features, seed=self.seed, **self.clustering.to_dict())
        return self.message

    def select(self, replies: ScoresMessage | list[ScoresMessage], budget: int) -> np.ndarray:
        """One proxy set for one client, or for a fleet (their scores summed, each client capped: `cap_client_scores`)."""
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
        settings = self.allocation_settings
        scores, self.client_scales = cap_client_scores([reply.scores for reply in replies], settings.client_cap)
        self.fleet_scores = np.sum(scores, axis=0)
        indices, self.allocation = select(
            self.pool_features, self.clusters, self.fleet_scores, budget, temperature=settings.temperature
        )
        return indices
