"""Which pool samples semi-supervised training (`scenario.ssl=fixmatch`) may use without labels.

The cloud holds the whole pool, but most of it is unlike the client: FixMatch's
pseudo-labels on out-of-domain samples would pull the model away from the client's
distribution, the very shift the proxy set is built to avoid. What the cloud knows
about the client's domain is the released scores, so for a sampler that released
them (`ecos`) the unlabelled set is every member of a cluster with a positive score,
minus the proxy set (its samples are labelled already). A sampler without scores
(random, kcenter, full, uniform_cluster, oracle_central, local) knows nothing of
the kind: it gets the whole pool minus its proxy set. Reading the released scores is
post-processing: it costs no privacy.

That makes the samplers differ in two things, the proxy set and the unlabelled set.
`scenario.unlabelled_from=pool` takes the second away: every sampler, ECOS included,
gets the whole pool minus its proxy set, so a comparison measures the proxy set alone.
"""

from __future__ import annotations

import numpy as np

from ecos_pl.data.base import NONE_LABEL, ECOSData
from ecos_pl.protocol import Selection
from ecos_pl.protocol.errors import ECOSInputError

#: `scenario.unlabelled_from`: scores (a sampler that released scores uses its scored clusters, the others the pool)
#: or pool (the whole pool for every sampler)
POLICIES = ("scores", "pool")


def check_policy(policy) -> str:
    if policy not in POLICIES:
        raise ECOSInputError(f"scenario.unlabelled_from must be one of {', '.join(POLICIES)} (scores: ECOS's scored clusters, "
                             f"the pool for samplers without scores; pool: the whole pool for every sampler), got {policy!r}.")
    return policy


def unlabelled_indices(selection: Selection, n_pool: int, policy: str = "scores") -> tuple[np.ndarray, str]:
    """(sorted pool indices to train on unlabelled, where they came from: "scored_clusters" or "pool")."""
    scores, assignments = selection.diagnostics.get("scores"), selection.diagnostics.get("assignments")
    if check_policy(policy) == "scores" and scores is not None and assignments is not None:
        candidates, origin = np.flatnonzero(np.asarray(scores)[np.asarray(assignments)] > 0), "scored_clusters"
    else:
        candidates, origin = np.arange(n_pool), "pool"
    return np.setdiff1d(candidates, selection.indices).astype(np.int64), origin


def unlabelled_report(indices: np.ndarray, origin: str, data: ECOSData) -> dict:
    """What a run reports about its unlabelled set (the ground truth only counts, it never reaches training)."""
    domains, labels = data.pool.domains[indices], data.pool.labels[indices]
    return {
        "n_unlabelled": int(len(indices)),
        "unlabelled_from": origin,
        "unlabelled_in_domain_fraction": float(np.mean(domains == data.client_domain_index)) if len(indices) else None,
        "unlabelled_out_of_class_fraction": float(np.mean(labels == NONE_LABEL)) if len(indices) else None,
    }
