"""Where the proxy set's training targets come from: the one thing, besides the loss, that tells scenarios apart.

`compression` needs no labels (the teacher's outputs are its targets), so it has
no `ProxyLabels`. `pseudo_label` asks the client (`ClientKNNLabels`: k-NN noisy
max, one extra round of messages); `label_outsourcing` buys them from annotators
(`AnnotatorLabels`, simulated by the pool's ground truth). A target of -1 means
"no label" and the sample is left out of training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ecos_pl.data.base import NONE_LABEL, DomainSplit
from ecos_pl.phi import FeatureExtractor
from ecos_pl.protocol.label import PseudoLabeller, label_epsilon
from ecos_pl.protocol.messages import ProxyFeaturesMessage


@dataclass
class LabelRequest:
    """What a labeller may look at. Features are computed lazily: annotators never need them."""

    proxy: DomainSplit  # the proxy set (its `labels` are the pool's ground truth: simulation only)
    proxy_features: Callable[[], np.ndarray]
    client_features: Callable[[], np.ndarray]
    client_labels: np.ndarray
    num_classes: int
    seed: int
    #: what the selection already released about the client (`ScoreMechanism`s; none for samplers that ask nothing)
    score_releases: list
    #: the client's ε budget for everything it releases (None: no budget)
    max_epsilon: float | None = None


class ProxyLabels(ABC):
    name: str

    @abstractmethod
    def assign(self, request: LabelRequest) -> tuple[np.ndarray, dict]:
        """(targets [len(proxy)], with -1 = not trained on; results to report)."""


class AnnotatorLabels(ProxyLabels):
    """Paid annotators label every proxy sample; one outside the client's classes comes back "none" and is dropped."""

    name = "annotators"

    def assign(self, request):
        targets = np.asarray(request.proxy.labels, dtype=np.int64).copy()
        none = targets == NONE_LABEL
        targets[none] = -1
        return targets, {"labels_bought": int(len(targets)), "labels_none": int(none.sum())}


class ClientKNNLabels(ProxyLabels):
    """The client labels the proxy set by Private-kNN (`ecos_pl.protocol.label`): a fresh subsample per query.

    `phi`: the features the vote is taken in. None: the protocol's φ, which keeps
    style and so labels poorly; a φ of its own (`HOGFeatures` by default, fitted by
    the cloud on the pool) keeps the strokes instead. Either way both sides know it
    and the cloud sends the proxy set's features in it. The ε of the whole exchange
    is checked against the client's budget before a single label is released.
    """

    name = "client_knn"

    def __init__(self, k: int = 40, sigma: float | None = 4.0, threshold: float | None = 0.3, delta: float = 1e-5,
                 phi: FeatureExtractor | None = None, sampling_rate: float = 0.2, screen_sigma: float | None = None):
        self.k, self.sigma, self.threshold, self.delta, self.phi = k, sigma, threshold, delta, phi
        self.sampling_rate, self.screen_sigma = sampling_rate, screen_sigma

    def epsilons(self, n_queries: int, score_releases: list) -> tuple[float, float]:
        """(ε of the labels alone, ε of the whole exchange), both at `delta`."""
        kw = {"sampling_rate": self.sampling_rate, "screen_sigma": self.screen_sigma}
        return (label_epsilon(self.sigma, n_queries, self.delta, **kw),
                label_epsilon(self.sigma, n_queries, self.delta, score_releases, **kw))

    def assign(self, request):
        from ecos_pl.protocol.privacy import check_budget

        n_queries = len(request.proxy)
        eps_labels, eps_exchange = self.epsilons(n_queries, request.score_releases)
        check_budget(eps_exchange, request.max_epsilon, f"labelling {n_queries} proxy samples after the scores")
        down = ProxyFeaturesMessage(request.proxy_features())
        client = PseudoLabeller(
            request.client_features(), request.client_labels, request.num_classes, k=self.k, sigma=self.sigma,
            threshold=self.threshold, sampling_rate=self.sampling_rate, screen_sigma=self.screen_sigma, seed=request.seed,
        )
        up = client.label(down)
        targets = up.labels.astype(np.int64)
        kept = targets >= 0
        truth = np.asarray(request.proxy.labels)
        in_class = kept & (truth != NONE_LABEL)
        return targets, {
            "pseudo_label_acc": float(np.mean(targets[in_class] == truth[in_class])) if in_class.any() else None,
            "pseudo_label_out_of_class": int((kept & (truth == NONE_LABEL)).sum()),
            "labels_dropped": int((~kept).sum()),
            "label_bytes_down": down.nbytes,
            "label_bytes_up": up.nbytes,
            "label_seconds": client.seconds,
            "label_sigma": self.sigma,
            "label_k": self.k,
            "label_sampling_rate": self.sampling_rate,
            "label_screen_sigma": self.screen_sigma,
            "label_mechanism": "private_knn" if self.sigma else "none",
            "label_phi": "protocol" if self.phi is None else self.phi.name,
            "label_feature_dim": down.dim,
            "label_delta": self.delta,
            # ε at δ of the labels, and of the whole exchange: B subsampled answers composed with the scores' release
            "label_epsilon": eps_labels,
            "exchange_epsilon": eps_exchange,
        }
