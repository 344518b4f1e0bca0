"""Adaptive multi-round ECOS: ask again, more finely, where the client's last answers point.

One-round ECOS spends its whole message on one fixed clustering of the pool, most of it on
regions the client does not hold. Here round 1 is ECOS with R₁ centroids at a share of the
client's score budget; each later round re-clusters the members of the smallest set of cells
holding a fraction q of the (noisy) score mass into finer centroids and asks again, the cells
not refined being sent as they are (the client must have somewhere to put every sample, and
their counts are measured again). Round t's message has exactly Rₜ centroids, so the upload is
Σₜ (4·Rₜ + 32) bytes whatever the scores. The budget is then allocated over the finest cells
reached; a cell measured in several rounds (one not refined) keeps the precision-weighted mean
of its noisy counts, the coarse scores acting as the prior the later rounds sharpen.

Privacy: round t asks for share wₜ of the client's budget (`CentroidsMessage.share`, shares
summing to 1); the client answers with Gaussian noise σ/√wₜ and keeps the ledger itself
(`ECOSClient`), so the rounds compose exactly into the one (ε, δ) release of σ (Gaussian
releases of sensitivity 1: σ⁻² = Σₜ σₜ⁻²), which `round_epsilons` checks with dp-accounting.
The client sees centroids only, never a pool sample, as in one round.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ecos_pl.protocol.compress import PoolClusters, compress, nearest_centroid
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol import driver
from ecos_pl.protocol.features import unit_rows
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.parties import cap_client_scores
from ecos_pl.protocol.samplers import ECOSSampler, Selection, Task
from ecos_pl.protocol.select import allocate_budget, kcenter_in_clusters
from ecos_pl.protocol.settings import Refinement, cloud_settings


@dataclass
class Cells:
    """The cloud's current partition of the pool: each sample's cell, the cells' centroids, their score estimates."""

    centroids: np.ndarray  # float32 [C, d]
    assignments: np.ndarray  # int64 [N]
    sq_distances: np.ndarray  # float32 [N]
    estimate: np.ndarray  # float64 [C]: precision-weighted mean of the noisy counts measured for the cell
    precision: np.ndarray  # float64 [C]: the sum of the shares that measured it (noise variance ∝ 1/share)
    refined: np.ndarray  # bool [C]: the cell was made by a refinement (none of round 1's)

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.assignments, minlength=len(self.centroids)).astype(np.int64)

    def clusters(self) -> PoolClusters:
        return PoolClusters(self.assignments, self.sq_distances, self.sizes)

    def measure(self, scores: np.ndarray, share: float) -> None:
        """Fold one round's noisy counts in (one per cell): noise variance σ²/share, so weight `share`."""
        total = self.precision + share
        self.estimate = (self.estimate * self.precision + np.asarray(scores, dtype=np.float64) * share) / total
        self.precision = total


def cells_to_refine(estimate: np.ndarray, mass: float) -> np.ndarray:
    """The smallest set of cells holding `mass` of the (non-negative) score mass, largest first (ties: lower index)."""
    v = np.maximum(np.asarray(estimate, dtype=np.float64), 0.0)
    if v.sum() <= 0:
        raise ECOSInputError("scores are all zero: the client's samples covered no centroid, so there is nothing to refine.")
    order = np.argsort(-v, kind="stable")
    k = int(np.searchsorted(np.cumsum(v[order]), mass * v.sum() * (1 - 1e-12))) + 1
    return np.sort(order[: min(k, len(v))])


def refine(pool: np.ndarray, cells: Cells, refined: np.ndarray, n_centroids: int, *, seed: int, niter: int,
           max_points_per_centroid: int) -> Cells:
    """A finer partition with exactly `n_centroids` cells: the cells not refined as they are, the members of
    `refined` re-clustered by k-means into the rest (fewer if they are too few samples)."""
    keep = np.setdiff1d(np.arange(len(cells.centroids)), refined)
    members = np.flatnonzero(np.isin(cells.assignments, refined))
    n_fine = min(n_centroids - len(keep), len(members))
    if n_fine < 1:
        raise ECOSInputError(f"round_centroids={n_centroids} leaves no centroid for the refined cells ({len(keep)} are kept).")
    message, _ = compress(pool[members], n_fine, seed=seed, niter=niter, max_points_per_centroid=max_points_per_centroid)
    centroids = np.concatenate([cells.centroids[keep], message.centroids]).astype(np.float32)
    # every pool row goes to its nearest centroid of the new message, as every client sample does
    sq, assignments = nearest_centroid(pool, centroids)
    parent = np.concatenate([keep, np.full(n_fine, -1)])
    estimate = np.where(parent >= 0, cells.estimate[np.maximum(parent, 0)], 0.0)
    precision = np.where(parent >= 0, cells.precision[np.maximum(parent, 0)], 0.0)
    refined_mask = np.concatenate([cells.refined[keep], np.ones(n_fine, dtype=bool)])
    return Cells(centroids, assignments.astype(np.int64), sq.astype(np.float32), estimate, precision, refined_mask)


def fleet_counts(replies: list[ScoresMessage], n_cells: int, cap: float | None) -> np.ndarray:
    """The clients' summed counts, each checked for length and capped as one-round ECOS does (`cap_client_scores`)."""
    if not replies:
        raise ECOSInputError("no client answered the round; there is nothing to refine or select.")
    for reply in replies:
        if reply.n_centroids != n_cells:
            raise ECOSInputError(f"scores has length {reply.n_centroids} but there are {n_cells} centroids.")
    scores, _ = cap_client_scores([r.scores for r in replies], cap)
    return np.sum(scores, axis=0)


def allocate_and_pick(pool: np.ndarray, cells: Cells, budget: int, temperature: float,
                      outside_budget: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """ECOS's selection on the current cells: budget ∝ estimate^(1/τ), k-center inside each cell.

    `outside_budget=False`: once a region has been refined, the budget goes to its cells first; cells never refined
    (under 1 − q of the mass, mostly noise) get only what the refined cells cannot hold, so the proxy set still has
    `budget` samples whenever the scored cells do."""
    weights = np.maximum(cells.estimate, 0.0)
    sizes = cells.sizes
    if outside_budget or not cells.refined.any():
        allocation = allocate_budget(weights, sizes, budget, temperature)
    else:
        inside = np.where(cells.refined, weights, 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short first pass is topped up below
            allocation = allocate_budget(inside, sizes, budget, temperature)
        short = budget - int(allocation.sum())
        outside = np.where(cells.refined, 0.0, weights)
        if short > 0 and outside.sum() > 0:
            allocation = allocation + allocate_budget(outside, sizes, short, temperature)
    return kcenter_in_clusters(pool, cells.clusters(), allocation), allocation


@dataclass
class RoundsTask(Task):
    """`ecos_adaptive`'s state between rounds: the current cells, and what each round cost and would have picked."""

    cells: Cells | None = None
    tag: bytes | None = None
    refined: int = 0
    rounds: list = field(default_factory=list)
    picks: list = field(default_factory=list)


class AdaptiveECOSSampler(ECOSSampler):
    """`sampler=ecos_adaptive`: ECOS asked over several rounds, each finer where the last answers point; `aggregate`
    returns `driver.Ask` with the next round's centroids until the last round, so the one driver runs it."""

    name = "ecos_adaptive"
    task_type = RoundsTask

    def __init__(self, clustering=None, allocation=None, refinement: Refinement | None = None, **settings):
        names = {f.name for f in dataclasses.fields(Refinement)}
        own = {k: settings.pop(k) for k in list(settings) if k in names}
        base = (refinement or Refinement()).to_dict()
        self.refinement = Refinement.from_mapping({**base, **own})
        self.clustering, self.allocation = cloud_settings(settings, clustering, allocation, where="sampler.")
        if self.clustering.send_radii:
            raise ECOSInputError("sampler.send_radii is not supported by ecos_adaptive (a refined round's cells have no radii).")
        if self.refinement.round_centroids[0] <= self.clustering.n_centroids:
            raise ECOSInputError(
                f"sampler.round_centroids must exceed n_centroids={self.clustering.n_centroids} (round 1's R), "
                f"got {list(self.refinement.round_centroids)}."
            )

    def settings(self) -> dict:
        return {**super().settings(), "refinement": self.refinement.to_dict()}

    @property
    def upload_centroids(self) -> int:
        """Σₜ Rₜ: the centroids the client answers over all rounds (one-round ECOS with as many uploads as much)."""
        return self.clustering.n_centroids + sum(self.refinement.round_centroids)

    def first_message(self, task: RoundsTask) -> CentroidsMessage:
        """Round 1: ECOS's compression at R₁, asking for round 1's share of the client's budget."""
        c = self.clustering
        t0 = time.perf_counter()
        message, clusters = compress(task.pool_features, c.n_centroids, seed=task.seed, niter=c.niter,
                                     max_points_per_centroid=c.max_points_per_centroid)
        r1 = len(message.centroids)
        task.cells = Cells(message.centroids, clusters.assignments, clusters.sq_distances, np.zeros(r1), np.zeros(r1),
                           np.zeros(r1, dtype=bool))
        task.tag = message.tag
        task.timings.update(compress=time.perf_counter() - t0, score=0.0, select=0.0)
        return CentroidsMessage(task.cells.centroids, tag=task.tag, share=self.refinement.shares()[0])

    def aggregate(self, state, answers: driver.Answers):
        """Fold this round's answers in; then ask the next, finer round, or select on the finest cells reached."""
        task, a, shares = state, self.allocation, self.refinement.shares()
        t, cells, cost = len(task.rounds), state.cells, answers.cost
        task.timings["score"] += cost.client_seconds
        t0 = time.perf_counter()
        cells.measure(fleet_counts(list(answers), len(cells.centroids), a.client_cap), shares[t])
        indices, allocation = allocate_and_pick(task.pool_features, cells, task.budget, a.temperature, self.refinement.outside_budget)
        task.timings["select"] += time.perf_counter() - t0
        task.picks.append(indices)
        epsilons = {reply.epsilon for reply in answers}
        task.rounds.append({"n_centroids": len(cells.centroids), "share": shares[t], "refined": task.refined,
                            "epsilon": epsilons.pop() if len(epsilons) == 1 else np.nan,
                            "bytes_down": cost.bytes_down, "bytes_up": cost.bytes_up, "client_macs": cost.client_macs})
        if t + 1 < len(shares):
            c = self.clustering
            t0 = time.perf_counter()
            refined = cells_to_refine(cells.estimate, self.refinement.mass)
            task.cells = refine(task.pool_features, cells, refined, self.refinement.round_centroids[t], seed=task.seed + 7919 * (t + 1),
                                niter=c.niter, max_points_per_centroid=c.max_points_per_centroid)
            task.refined = len(refined)
            task.timings["compress"] += time.perf_counter() - t0
            return driver.Ask(CentroidsMessage(task.cells.centroids, tag=task.tag, share=shares[t + 1]), task)
        return self._selection(task, allocation)

    def _selection(self, task: RoundsTask, allocation: np.ndarray) -> Selection:
        rounds, cells = task.rounds, task.cells
        padded = np.full((len(task.picks), task.budget), -1, dtype=np.int64)
        for t, p in enumerate(task.picks):
            padded[t, : len(p)] = p
        diagnostics = {
            "allocation": allocation, "cluster_sizes": cells.sizes, "assignments": cells.assignments.copy(),
            "scores": cells.estimate.astype(np.float32), "round_selection": padded,
            **{f"round_{key}": np.asarray([r[key] for r in rounds]) for key in rounds[0]},
        }
        return Selection(
            indices=task.picks[-1], sampler=self.name,
            bytes_down=sum(r["bytes_down"] for r in rounds), bytes_up=sum(r["bytes_up"] for r in rounds),
            timings=dict(task.timings), client_macs=sum(r["client_macs"] for r in rounds), n_centroids=len(cells.centroids),
            epsilon=None, diagnostics=diagnostics,
        )


def round_table(diagnostics: dict) -> list[dict] | None:
    """Each round's centroids, share, ε, bytes and refined cells, from a selection's diagnostics (None: one round)."""
    if "round_share" not in diagnostics:
        return None
    keys = [k[len("round_"):] for k in diagnostics if k.startswith("round_") and k != "round_selection"]
    n = len(diagnostics["round_share"])
    return [{k: np.asarray(diagnostics[f"round_{k}"])[t].item() for k in keys} for t in range(n)]


def round_epsilons(mechanism, shares) -> dict:
    """Each round's ε and σ, and the composition of all rounds by dp-accounting (PLD), for the client's mechanism."""
    from ecos_pl.protocol.privacy import composed_epsilon

    releases = [mechanism.for_share(s) for s in shares]
    return {
        "round_epsilon": [r.release_epsilon() for r in releases],
        "round_sigma": [r.noise_scale for r in releases],
        "composed_epsilon_pld": composed_epsilon([r.dp_event() for r in releases], mechanism.delta, "pld"),
    }
