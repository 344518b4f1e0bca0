"""The ECOS protocol with no training framework: plain numpy and faiss, usable and testable alone."""

from ecos_pl.protocol.compress import PoolClusters, compress, nearest_centroid
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import Exchange, InProcessExchange
from ecos_pl.protocol.features import l2_normalize
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.parties import ECOSClient, ECOSCloud
from ecos_pl.protocol.privacy import laplace_epsilon, laplace_noise
from ecos_pl.protocol.samplers import SAMPLERS, Sampler, Selection, make_sampler
from ecos_pl.protocol.score import coverage_scores, scoring_macs
from ecos_pl.protocol.select import allocate_budget, kcenter_greedy, kcenter_in_clusters, select
from ecos_pl.protocol.settings import Allocation, Clustering, Labelling, ScorePrivacy

__all__ = [
    "Allocation",
    "CentroidsMessage",
    "Clustering",
    "ECOSClient",
    "ECOSCloud",
    "ECOSInputError",
    "Exchange",
    "InProcessExchange",
    "Labelling",
    "PoolClusters",
    "SAMPLERS",
    "Sampler",
    "ScorePrivacy",
    "ScoresMessage",
    "Selection",
    "allocate_budget",
    "compress",
    "coverage_scores",
    "kcenter_greedy",
    "kcenter_in_clusters",
    "l2_normalize",
    "laplace_epsilon",
    "laplace_noise",
    "make_sampler",
    "nearest_centroid",
    "scoring_macs",
    "select",
]
