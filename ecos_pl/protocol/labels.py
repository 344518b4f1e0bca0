"""The label round: where the proxy set's training targets come from, as cloud strategies (`ecos_pl.protocol.driver`).

`compression` needs no labels (the teacher's outputs are its targets), so it has
no `ProxyLabels`. `pseudo_label` asks the clients (`ClientKNNLabels`: the proxy
set's features down, k-NN noisy-max labels up, one round); `label_outsourcing`
buys them from annotators (`AnnotatorLabels`, simulated by the pool's ground
truth: no round at all). A target of -1 means "no label" and the sample is left
out of training. Each is `configure(request=...) -> (message or None, state)`
and `aggregate(state, answers) -> (targets, report)`, with no I/O;
`labeller.assign(request, exchange)` is `driver.run` in one call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ecos_pl.protocol import driver
from ecos_pl.protocol.errors import check_count
from ecos_pl.protocol.exchange import as_exchange
from ecos_pl.protocol.label import CLOUD_VOTE_K, PseudoLabeller, content_keys, label_epsilon, neighbour_vote
from ecos_pl.protocol.messages import NONE_LABEL, ProxyFeaturesMessage
from ecos_pl.protocol.settings import Labelling


@dataclass
class LabelRequest:
    """What a labeller may look at. The proxy set's features are computed lazily: annotators never need them."""

    proxy_features: Callable[[], np.ndarray]  # in the labelling φ, which both sides know
    #: the proxy set's pool labels (NONE_LABEL: outside the client's classes): what annotators are paid for, and, in a
    #: simulation, the truth the pseudo-labels' accuracy is reported against (None: unknown, as to the programs)
    truth: np.ndarray | None = None
    seed: int = 0
    #: what the selection already released about the client (`ScoreMechanism`s; none for samplers that ask nothing)
    score_releases: list = field(default_factory=list)
    #: the client's ε budget for everything it releases (None: no budget)
    max_epsilon: float | None = None
    #: the tag of the proxy-features message (the labelling φ's; None: untagged)
    tag: bytes | None = None


class ProxyLabels(driver.Strategy):
    name: str

    def configure(self, *, request: LabelRequest):
        """(the message to the clients or None, the state `aggregate` gets back)."""
        return None, request

    def assign(self, request: LabelRequest, exchange=None) -> tuple[np.ndarray, dict]:
        """(targets [len(proxy)], with -1 = not trained on; results to report, each key named with the labeller's
        prefix): `driver.run` over `exchange` (an `Exchange`, or clients in this process)."""
        return driver.run(self, None if exchange is None else as_exchange(exchange), request=request)


class AnnotatorLabels(ProxyLabels):
    """Paid annotators label every proxy sample; one outside the client's classes comes back "none" and is dropped."""

    name = "annotators"

    def aggregate(self, state, answers):
        targets = np.asarray(state.truth, dtype=np.int64).copy()
        none = targets == NONE_LABEL
        targets[none] = -1
        return targets, {"labels_bought": int(len(targets)), "labels_none": int(none.sum())}


def majority(answers: list[np.ndarray]) -> np.ndarray:
    """Per proxy sample, the label most clients gave (ties: the smallest); -1 where every client abstained."""
    if len(answers) == 1:
        return answers[0]
    stacked = np.stack(answers)
    n_classes = int(stacked.max()) + 1 if (stacked >= 0).any() else 1
    counts = np.stack([(stacked == c).sum(axis=0) for c in range(n_classes)], axis=1)
    return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1).astype(np.int64)


class ClientKNNLabels(ProxyLabels):
    """The client labels the proxy set by Private-kNN (`ecos_pl.protocol.label`): a fresh subsample per query.

    `phi`: the features the vote is taken in. None: the protocol's φ, which keeps
    style and so labels poorly; a φ of its own (`HOGFeatures` by default, fitted by
    the cloud on the pool) keeps the strokes instead. Either way both sides know it
    and the cloud sends the proxy set's features in it. The ε of the whole exchange
    is checked against the client's budget before a single label is released.
    Settings: `Labelling`'s fields by name (`scenario.labels.sigma`, ...).
    """

    name = "client_knn"

    def __init__(self, phi=None, settings: Labelling | None = None, *, cloud_vote_k: int = CLOUD_VOTE_K,
                 **fields):
        """`cloud_vote_k` > 0: the cloud then re-votes each label among that many nearest labelled proxy samples
        (`neighbour_vote`, post-processing of the released labels); 0: the client's labels as they came."""
        self.cloud_vote_k = check_count(cloud_vote_k, "scenario.labels.cloud_vote_k", low=0)
        self.phi = phi
        self.settings = settings or Labelling.from_mapping(fields)
        self._fitted = False

    def fitted_phi(self, pool_images: np.ndarray):
        """The labelling φ, fitted by the cloud on its pool once (the client receives it fitted)."""
        if not self._fitted:
            self.phi.fit(pool_images)
            self._fitted = True
        return self.phi

    def epsilons(self, n_queries: int, score_releases: list) -> tuple[float, float]:
        """(ε of the labels alone, ε of the whole exchange), both at `delta`."""
        s = self.settings
        return (label_epsilon(s.sigma, n_queries, s.delta, **s.accounting),
                label_epsilon(s.sigma, n_queries, s.delta, score_releases, **s.accounting))

    def client_labeller(self, split, data, *, seed: int, protocol_phi) -> PseudoLabeller:
        """The client's side: its labelled images in the labelling φ (keyed by their pixels, so order does not matter)."""
        phi = protocol_phi if self.phi is None else self.fitted_phi(data.pool.images)
        return PseudoLabeller.from_settings(phi.transform(split.images), split.labels, data.num_classes, self.settings,
                                            seed=seed, sample_keys=content_keys(split.images))

    def configure(self, *, request):
        """The proxy set's features down, once the whole exchange's ε is within the client's budget."""
        from ecos_pl.protocol.privacy import check_budget

        features = request.proxy_features() if request.truth is None else None  # the truth, when known, counts first
        n_queries = len(request.truth if features is None else features)
        eps_exchange = self.epsilons(n_queries, request.score_releases)[1]
        check_budget(eps_exchange, request.max_epsilon, f"labelling {n_queries} proxy samples after the scores")
        down = ProxyFeaturesMessage(request.proxy_features() if features is None else features, tag=request.tag)
        return down, (request, down)

    def aggregate(self, state, answers):
        request, down = state
        n_queries = down.n_samples
        eps_labels, eps_exchange = self.epsilons(n_queries, request.score_releases)
        cost = answers.cost
        released = majority([a.labels.astype(np.int64) for a in answers])
        targets = neighbour_vote(down.features, released, self.cloud_vote_k)
        kept = targets >= 0
        known = request.truth is not None
        truth = np.asarray(request.truth) if known else np.full(n_queries, NONE_LABEL)
        in_class = kept & (truth != NONE_LABEL)

        def accuracy(labels):
            return float(np.mean(labels[in_class] == truth[in_class])) if in_class.any() else None

        s = self.settings
        return targets, {
            "pseudo_label_acc": accuracy(targets),
            "pseudo_label_acc_released": accuracy(released),  # before the cloud's neighbour vote
            "label_cloud_vote_k": self.cloud_vote_k,
            "pseudo_label_out_of_class": int((kept & (truth == NONE_LABEL)).sum()) if known else None,
            "labels_dropped": int((~kept).sum()),
            "label_bytes_down": cost.bytes_down,
            "label_bytes_up": cost.bytes_up,
            "label_seconds": cost.client_seconds,
            "label_sigma": s.sigma,
            "label_k": s.k,
            "label_threshold": s.threshold,
            "label_sampling_rate": s.sampling_rate,
            "label_screen_sigma": s.screen_sigma,
            "label_mechanism": "private_knn" if s.sigma else "none",
            "label_phi": "protocol" if self.phi is None else self.phi.name,
            "label_feature_dim": down.dim,
            "label_delta": s.delta,
            "label_accountant": s.accountant,
            # ε at δ of the labels, and of the whole exchange: B subsampled answers composed with the scores' release
            "label_epsilon": eps_labels,
            "exchange_epsilon": eps_exchange,
            # the same exchange by the PLD accountant (tighter), and with replace-one neighbours (PLD)
            **self.other_accountings(n_queries, request.score_releases),
        }

    def other_accountings(self, n_queries: int, score_releases: list) -> dict:
        """The exchange's ε at δ by PLD (add/remove) and for replace-one neighbours (PLD); None where not accountable."""
        s = self.settings
        kwargs = {**s.accounting, "accountant": "pld"}
        scores = [r for r in score_releases if getattr(r, "mechanism", None) != "laplace"]
        return {"exchange_epsilon_pld": label_epsilon(s.sigma, n_queries, s.delta, score_releases, **kwargs),
                "exchange_epsilon_replace_one": label_epsilon(s.sigma, n_queries, s.delta, scores, **kwargs, adjacency="replace_one")
                if len(scores) == len(score_releases) else None}
