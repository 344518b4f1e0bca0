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
    score_epsilons: list


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
    """The client labels the proxy set by a noisy k-NN vote over its labelled samples (Private-kNN / PATE).

    `phi`: the features the vote is taken in. None: the protocol's φ, which keeps
    style and so labels poorly; a φ of its own (`HOGFeatures` by default, fitted by
    the cloud on the pool) keeps the strokes instead. Either way both sides know it
    and the cloud sends the proxy set's features in it.
    """

    name = "client_knn"

    def __init__(self, k: int = 10, sigma: float | None = 2.0, threshold: float | None = 0.5, delta: float = 1e-5,
                 phi: FeatureExtractor | None = None):
        self.k, self.sigma, self.threshold, self.delta, self.phi = k, sigma, threshold, delta, phi

    def assign(self, request):
        down = ProxyFeaturesMessage(request.proxy_features())
        client = PseudoLabeller(
            request.client_features(), request.client_labels, request.num_classes,
            k=self.k, sigma=self.sigma, threshold=self.threshold, seed=request.seed,
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
            "label_phi": "protocol" if self.phi is None else self.phi.name,
            "label_feature_dim": down.dim,
            "label_delta": self.delta,
            # ε of the whole exchange at δ: B noisy-max answers composed with the scores' Laplace release
            "label_epsilon": label_epsilon(self.sigma, len(targets), self.delta),
            "exchange_epsilon": label_epsilon(self.sigma, len(targets), self.delta, request.score_epsilons),
        }
