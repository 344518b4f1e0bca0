"""The samplers: each is a cloud strategy (`ecos_pl.protocol.driver`), `configure` then `aggregate`, with no I/O.

    message, state = sampler.configure(pool_features=..., budget=..., seed=...)   # None: it asks the clients nothing
    selection = sampler.aggregate(state, answers)                                  # a `Selection`

`driver.run(sampler, exchange, ...)` runs the two halves over any `Exchange` (in process, the
programs' message files, Flower), so what each one learns about the clients is explicit: `ecos`
their R scores each, the baselines nothing, `oracle_central` (a privacy-violating reference)
every feature. `sampler.sample(pool_features, exchange, budget, seed)` is that run in one call;
passing clients instead of an exchange wraps them in an `InProcessExchange`.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ecos_pl.protocol import driver
from ecos_pl.protocol.compress import use_gpu_default
from ecos_pl.protocol.errors import check_count
from ecos_pl.protocol.exchange import FeaturesRequest, Round, as_exchange
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import ScoresMessage
from ecos_pl.protocol.parties import ECOSCloud
from ecos_pl.protocol.select import kcenter_greedy
from ecos_pl.protocol.settings import Allocation, Clustering, cloud_settings


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


@dataclass
class Task:
    """A sampler's state between its halves: the pool, the budget, the seed, and what `configure` made."""

    pool_features: np.ndarray
    budget: int | None
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    #: ECOS's cloud (`ECOSCloud`) once the pool is compressed
    cloud: ECOSCloud | None = None


class Sampler(driver.Strategy):
    name: ClassVar[str]
    uses_budget: ClassVar[bool] = True
    #: the client-data reference: training uses the client's own labelled split instead of any pool sample
    trains_on_client: ClassVar[bool] = False
    #: the client hands over its features (oracle_central): no differential privacy at all
    releases_features: ClassVar[bool] = False
    #: whether it sends the clients anything (the baselines learn nothing from them)
    asks_clients: ClassVar[bool] = False
    #: whether its rows are unit-normalised and its budget checked against the pool before anything else
    checks_pool: ClassVar[bool] = True
    #: the state `configure` hands to `aggregate` (a strategy of several rounds keeps more)
    task_type: ClassVar[type] = Task

    def sample(self, pool_features: np.ndarray, exchange, budget: int | None, seed: int) -> Selection:
        """`driver.run` in one call: indices into the pool, deterministic for a given seed. `exchange`: an
        `Exchange`, or clients in this process (None where the sampler asks the clients nothing)."""
        exchange = as_exchange(exchange) if self.asks_clients else None
        return driver.run(self, exchange, pool_features=pool_features, budget=budget, seed=seed)

    def configure(self, *, pool_features: np.ndarray, budget: int | None, seed: int):
        """(the message to the clients or None, the `Task` that `aggregate` gets back); checks come first."""
        if self.checks_pool:
            pool_features = unit_rows(pool_features, "pool_features")
            budget = self.check_budget(budget, len(pool_features))
        task = self.task_type(pool_features, budget, int(seed))
        return self.first_message(task), task

    def first_message(self, task: Task):
        """What the clients are sent (None: nothing)."""
        return None

    @abstractmethod
    def aggregate(self, state: Task, answers: driver.Answers) -> Selection: ...

    def settings(self) -> dict:
        """What determines this sampler's selection besides data, budget and seed (its cache key)."""
        return {}

    def given_budget(self, budget: int | None) -> int | None:
        """The budget this sampler is given: `budget`, or None for one that takes none (`full`, `local`)."""
        return budget if self.uses_budget else None

    def check_budget(self, budget, pool_size: int) -> int:
        return check_count(budget, "budget", high=pool_size, high_name="the pool size")


class ECOSSampler(Sampler):
    """The protocol: compress, send the centroids, select from the clients' summed scores."""

    name = "ecos"
    asks_clients = True

    def __init__(self, clustering: Clustering | None = None, allocation: Allocation | None = None, **settings):
        """Settings objects, or their fields by name (as the configs give them: `sampler.temperature`, ...)."""
        self.clustering, self.allocation = cloud_settings(settings, clustering, allocation, where="sampler.")

    @property
    def n_centroids(self) -> int:
        return self.clustering.n_centroids

    def settings(self) -> dict:
        return {"clustering": self.clustering.to_dict(), "allocation": self.allocation.to_dict()}

    def cloud(self, pool_features, seed) -> ECOSCloud:
        """The cloud's side of the round, before anything is sent (the programs save it between their steps)."""
        return ECOSCloud(pool_features, self.clustering, self.allocation, seed=seed)

    def first_message(self, task):
        task.cloud = self.cloud(task.pool_features, task.seed)  # ECOSCloud takes the unit rows as they are, no copy
        t0 = time.perf_counter()
        down = task.cloud.compress()
        task.timings["compress"] = time.perf_counter() - t0
        return down if self.asks_clients else None

    def aggregate(self, state, answers):
        cloud = state.cloud
        down = cloud.message
        replies = list(answers) if self.asks_clients else [ScoresMessage(np.ones(down.n_centroids, dtype=np.float32))]
        cost = answers.cost or Round("none", 0, 0, 0)
        t0 = time.perf_counter()
        indices = cloud.select(replies, state.budget)
        t1 = time.perf_counter()
        diagnostics = {
            "allocation": cloud.allocation.copy(),
            "cluster_sizes": cloud.clusters.sizes.copy(),
            "assignments": cloud.clusters.assignments.copy(),
        }
        if self.asks_clients:
            diagnostics["scores"] = cloud.fleet_scores.astype(np.float32)
        epsilons = {reply.epsilon for reply in replies}
        return Selection(
            indices=indices,
            sampler=self.name,
            bytes_down=cost.bytes_down,
            bytes_up=cost.bytes_up,
            timings={"compress": state.timings.get("compress", 0.0), "score": cost.client_seconds, "select": t1 - t0},
            client_macs=cost.client_macs,
            n_centroids=down.n_centroids,
            epsilon=epsilons.pop() if self.asks_clients and len(epsilons) == 1 else None,
            diagnostics=diagnostics,
        )


class RandomSampler(Sampler):
    """`budget` uniformly random pool samples; learns nothing from the client."""

    name = "random"

    checks_pool = False  # any features will do: only their number is used

    def configure(self, *, pool_features, budget, seed):
        return None, Task(pool_features, self.check_budget(budget, len(pool_features)), int(seed))

    def aggregate(self, state, answers):
        t0 = time.perf_counter()
        n, budget = len(state.pool_features), state.budget
        indices = np.sort(np.random.default_rng(state.seed).choice(n, size=budget, replace=False)).astype(np.int64)
        return Selection(indices=indices, sampler=self.name, timings={"select": time.perf_counter() - t0})


class FullSampler(Sampler):
    """The whole pool, no budget: what training on everything the cloud has gives."""

    name = "full"
    uses_budget = False
    checks_pool = False

    def aggregate(self, state, answers):
        return Selection(indices=np.arange(len(state.pool_features), dtype=np.int64), sampler=self.name)


class UniformClusterSampler(ECOSSampler):
    """ECOS's clustering and in-cluster k-center, with the budget split evenly over all clusters.

    It asks the client nothing: what ECOS gains over it is what the R scores are worth.
    """

    name = "uniform_cluster"
    asks_clients = False


class KCenterSampler(Sampler):
    """k-center greedy over the whole pool from a seeded random start: diversity, no client information."""

    name = "kcenter"

    def aggregate(self, state, answers):
        t0 = time.perf_counter()
        first = int(np.random.default_rng(state.seed).integers(len(state.pool_features)))
        indices = np.sort(kcenter_greedy(state.pool_features, state.budget, first))
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
    asks_clients = True

    def __init__(self, oversample: float = 1.0):
        self.oversample = oversample

    def settings(self) -> dict:
        return {"oversample": self.oversample}

    def first_message(self, task):
        return FeaturesRequest()

    def aggregate(self, state, answers):
        import faiss

        pool_features, budget, n = state.pool_features, state.budget, len(state.pool_features)
        uploaded = np.concatenate([u.features for u in answers])
        cost = answers.cost
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
            bytes_up=cost.bytes_up,
            timings={"select": time.perf_counter() - t0},
        )


class LocalReference(Sampler):
    """Upper reference (ECOS.md's client-data oracle): no pool sample; training uses the client's labelled split.

    Only meaningful inside a simulation, where the cloud can be handed the client's data.
    """

    name = "local"
    uses_budget = False
    trains_on_client = True
    releases_features = True  # the cloud is handed the client's own data
    checks_pool = False

    def aggregate(self, state, answers):
        return Selection(indices=np.zeros(0, dtype=np.int64), sampler=self.name)


SAMPLERS: dict[str, type[Sampler]] = {
    cls.name: cls
    for cls in (
        ECOSSampler, RandomSampler, FullSampler, UniformClusterSampler, KCenterSampler, OracleCentralSampler,
        LocalReference,
    )
}


def make_sampler(name: str, **kwargs) -> Sampler:
    if name not in SAMPLERS:
        raise ValueError(f"sampler={name!r} is not one of: {', '.join(sorted(SAMPLERS))}.")
    return SAMPLERS[name](**kwargs)
