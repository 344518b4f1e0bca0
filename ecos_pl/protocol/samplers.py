"""Every sampler answers one call, `sample(pool_features, client, budget, seed) -> Selection`.

A sampler sees the client only through `ECOSClient`'s public methods, so what
each one learns about the client is explicit: `ecos` its R scores, the baselines
nothing, `oracle_central` (a privacy-violating reference) all its features.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ecos_pl.protocol.compress import use_gpu_default
from ecos_pl.protocol.errors import check_count
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import ScoresMessage
from ecos_pl.protocol.parties import ECOSClient, ECOSCloud
from ecos_pl.protocol.select import kcenter_greedy


@dataclass
class Selection:
    """A proxy set and what it cost to choose it."""

    indices: np.ndarray  # sorted, unique pool indices
    sampler: str
    bytes_down: int = 0
    bytes_up: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    client_macs: int = 0
    n_centroids: int | None = None
    epsilon: float | None = None
    #: per-cluster arrays for diagnostics (scores, allocation, sizes), and the pool's assignments
    diagnostics: dict = field(default_factory=dict)

    @property
    def n_selected(self) -> int:
        return int(len(self.indices))


class Sampler(ABC):
    name: ClassVar[str]
    uses_budget: ClassVar[bool] = True
    #: the client-data reference: training uses the client's own labelled split instead of any pool sample
    trains_on_client: ClassVar[bool] = False
    #: the client hands over its features (oracle_central): no differential privacy at all
    releases_features: ClassVar[bool] = False

    @abstractmethod
    def sample(self, pool_features: np.ndarray, client: ECOSClient, budget: int | None, seed: int) -> Selection:
        """Indices into the pool; must be deterministic for a given seed."""

    def check_budget(self, budget, pool_size: int) -> int:
        return check_count(budget, "budget", high=pool_size, high_name="the pool size")


class ECOSSampler(Sampler):
    """The protocol: compress, score on the client, select."""

    name = "ecos"

    def __init__(
        self,
        n_centroids: int = 128,  # the app's defaults (conf/): ECOS.md's are R = 64, τ = 1; see README "Choices"
        temperature: float = 0.5,
        send_radii: bool = False,
        radius_quantile: float = 0.9,
        niter: int = 25,
        max_points_per_centroid: int = 256,
    ):
        self.n_centroids = n_centroids
        self.temperature = temperature
        self.send_radii = send_radii
        self.radius_quantile = radius_quantile
        self.niter = niter
        self.max_points_per_centroid = max_points_per_centroid

    def _cloud(self, pool_features, seed) -> ECOSCloud:
        return ECOSCloud(
            pool_features,
            self.n_centroids,
            seed=seed,
            niter=self.niter,
            send_radii=self.send_radii,
            radius_quantile=self.radius_quantile,
            temperature=self.temperature,
            max_points_per_centroid=self.max_points_per_centroid,
        )

    def sample(self, pool_features, client, budget, seed):
        pool_features = unit_rows(pool_features, "pool_features")  # ECOSCloud then takes it as is, no second copy
        budget = self.check_budget(budget, len(pool_features))
        cloud = self._cloud(pool_features, seed)
        t0 = time.perf_counter()
        down = cloud.compress()
        t1 = time.perf_counter()
        seconds_before, macs_before = client.score_seconds, client.score_macs
        up = self._scores(client, down)
        t2 = time.perf_counter()
        indices = cloud.select(up, budget)
        t3 = time.perf_counter()
        asked = self.asks_client
        diagnostics = {
            "allocation": cloud.allocation.copy(),
            "cluster_sizes": cloud.clusters.sizes.copy(),
            "assignments": cloud.clusters.assignments.copy(),
        }
        if asked:
            diagnostics["scores"] = up.scores.copy()
        return Selection(
            indices=indices,
            sampler=self.name,
            bytes_down=down.nbytes if asked else 0,
            bytes_up=up.nbytes if asked else 0,
            timings={"compress": t1 - t0, "score": client.score_seconds - seconds_before, "select": t3 - t2},
            client_macs=client.score_macs - macs_before,
            n_centroids=down.n_centroids,
            epsilon=up.epsilon,
            diagnostics=diagnostics,
        )

    #: whether the centroids go down and the client's scores come back
    asks_client: ClassVar[bool] = True

    def _scores(self, client: ECOSClient, message) -> ScoresMessage:
        return client.score(message)


class RandomSampler(Sampler):
    """`budget` uniformly random pool samples; learns nothing from the client."""

    name = "random"

    def sample(self, pool_features, client, budget, seed):
        n = len(pool_features)
        budget = self.check_budget(budget, n)
        t0 = time.perf_counter()
        indices = np.sort(np.random.default_rng(seed).choice(n, size=budget, replace=False)).astype(np.int64)
        return Selection(indices=indices, sampler=self.name, timings={"select": time.perf_counter() - t0})


class FullSampler(Sampler):
    """The whole pool, no budget: what training on everything the cloud has gives."""

    name = "full"
    uses_budget = False

    def sample(self, pool_features, client, budget, seed):
        return Selection(indices=np.arange(len(pool_features), dtype=np.int64), sampler=self.name)


class UniformClusterSampler(ECOSSampler):
    """ECOS's clustering and in-cluster k-center, with the budget split evenly over all clusters.

    It asks the client nothing: what ECOS gains over it is what the R scores are worth.
    """

    name = "uniform_cluster"
    asks_client = False

    def _scores(self, client, message):
        return ScoresMessage(np.ones(message.n_centroids, dtype=np.float32))


class KCenterSampler(Sampler):
    """k-center greedy over the whole pool from a seeded random start: diversity, no client information."""

    name = "kcenter"

    def sample(self, pool_features, client, budget, seed):
        pool_features = unit_rows(pool_features, "pool_features")
        budget = self.check_budget(budget, len(pool_features))
        t0 = time.perf_counter()
        first = int(np.random.default_rng(seed).integers(len(pool_features)))
        indices = np.sort(kcenter_greedy(pool_features, budget, first))
        return Selection(indices=indices, sampler=self.name, timings={"select": time.perf_counter() - t0})


class OracleCentralSampler(Sampler):
    """Privacy-violating upper reference: the client uploads all its features.

    Each client sample's nearest pool samples form a candidate set (k grown until
    it holds at least `oversample` × budget samples (1: just enough; more lets k-center reach outliers), or the whole pool), and
    k-center greedy inside it picks the budget, started at the pool sample that is
    most often a client sample's nearest neighbour.
    """

    name = "oracle_central"
    releases_features = True

    def __init__(self, oversample: float = 1.0):
        self.oversample = oversample

    def sample(self, pool_features, client, budget, seed):
        import faiss

        pool_features = unit_rows(pool_features, "pool_features")
        n = len(pool_features)
        budget = self.check_budget(budget, n)
        uploaded = client.upload_features()
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(pool_features.shape[1])
        if use_gpu_default():
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(pool_features)
        want = min(n, math.ceil(self.oversample * budget))
        k = max(1, math.ceil(want / len(uploaded)))
        while True:
            _, neighbours = index.search(uploaded, min(k, n))
            candidates = np.unique(neighbours)
            if len(candidates) >= want or k >= n:
                break
            k *= 2
        first = int(np.searchsorted(candidates, np.bincount(neighbours[:, 0], minlength=n).argmax()))
        local = kcenter_greedy(pool_features[candidates], min(budget, len(candidates)), first)
        indices = np.sort(candidates[local])
        return Selection(
            indices=indices,
            sampler=self.name,
            bytes_up=int(uploaded.nbytes),
            timings={"select": time.perf_counter() - t0},
        )


class ClientDataReference(Sampler):
    """Upper reference (ECOS.md's client-data oracle): no pool sample; training uses the client's labelled split.

    Only meaningful inside a simulation, where the cloud can be handed the client's data.
    """

    name = "client_data"
    uses_budget = False
    trains_on_client = True
    releases_features = True  # the cloud is handed the client's own data

    def sample(self, pool_features, client, budget, seed):
        return Selection(indices=np.zeros(0, dtype=np.int64), sampler=self.name)


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        ECOSSampler, RandomSampler, FullSampler, UniformClusterSampler, KCenterSampler, OracleCentralSampler,
        ClientDataReference,
    )
}


def make_sampler(name: str, **kwargs) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not one of: {', '.join(sorted(SAMPLERS))}.")
    return SAMPLERS[name](**kwargs)
