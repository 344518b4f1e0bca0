"""One settings object per protocol part, with the app's defaults: the only place those defaults are written.

`train.py`'s configs take them from here (`ecos_pl.conf_store` registers each as a
Hydra node that `conf/` files extend), the samplers and the label round are built
from them, the programs' cloud state saves them and the programs' flags default to
them. Each checks its ranges once, at construction, naming the key as a user sets it.

The app's defaults differ from ECOS.md's (R = 64, τ = 1) where a validation-split
measurement said so (docs/details.md, "Choices"); `paper()` gives the paper's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Optional

from ecos_pl.protocol.errors import ECOSInputError, check_count


def _in_range(key: str, value, low: float, high: float = math.inf, *, low_open: bool = False, optional: bool = False):
    if value is None and optional:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {'∞)' if high == math.inf else f'{high:g}]'}"
        raise ECOSInputError(f"{key} must be a number in {interval}{' or null' if optional else ''}, got {value!r}.")


class _Settings:
    """Shared by the settings dataclasses: built from a mapping that may hold other keys, and saved as one."""

    #: how a user names this part's keys (in a config: `sampler.niter`; the programs name their flags instead)
    prefix = ""

    @classmethod
    def from_mapping(cls, mapping, *, strict: bool = True):
        names = {f.name for f in fields(cls)}
        extra = sorted(set(mapping) - names)
        if strict and extra:
            raise ECOSInputError(f"{cls.prefix}{extra[0]} is not a setting of {cls.__name__} ({', '.join(sorted(names))}).")
        return cls(**{k: v for k, v in mapping.items() if k in names})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Clustering(_Settings):
    """How the cloud compresses its pool: R k-means centroids (and radii) of φ's pool features."""

    prefix = "sampler."

    n_centroids: int = 128  # R; ECOS.md's default is 64
    niter: int = 25
    max_points_per_centroid: int = 256  # k-means trains on at most this many pool samples per centroid
    send_radii: bool = False  # send each cluster's radius; far client samples then do not vote
    radius_quantile: float = 0.9  # the quantile of member distances that defines a radius

    def __post_init__(self):
        check_count(self.n_centroids, f"{self.prefix}n_centroids", low=1)
        check_count(self.niter, f"{self.prefix}niter", low=1)
        check_count(self.max_points_per_centroid, f"{self.prefix}max_points_per_centroid", low=1)
        _in_range(f"{self.prefix}radius_quantile", self.radius_quantile, 0.0, 1.0)


@dataclass(frozen=True)
class Allocation(_Settings):
    """How the cloud spends the budget over clusters given the clients' scores: b_r ∝ v_r^(1/τ)."""

    prefix = "sampler."

    temperature: float = 0.5  # τ; ECOS.md's default is 1
    #: with several clients, none weighs more than this many times the median of the others (None: no cap)
    client_cap: Optional[float] = 2.0

    def __post_init__(self):
        _in_range(f"{self.prefix}temperature", self.temperature, 0.0, low_open=True)
        _in_range(f"{self.prefix}client_cap", self.client_cap, 1.0, optional=True)


@dataclass(frozen=True)
class ScorePrivacy(_Settings):
    """How the client privatises its R scores: Gaussian (the paper's) or Laplace noise; `epsilon=None`: exact counts."""

    prefix = "client."

    mechanism: str = "gaussian"
    epsilon: Optional[float] = 0.58  # the paper's ε for every ECOS row
    delta: float = 1e-5

    def __post_init__(self):
        if self.mechanism not in ("gaussian", "laplace"):
            raise ECOSInputError(f"{self.prefix}mechanism={self.mechanism!r} is not one of: gaussian, laplace.")
        _in_range(f"{self.prefix}epsilon", self.epsilon, 0.0, low_open=True, optional=True)
        _in_range(f"{self.prefix}delta", self.delta, 0.0, 1.0, low_open=True)
        if self.delta >= 1.0:
            raise ECOSInputError(f"{self.prefix}delta must be below 1, got {self.delta!r}.")
        if self.epsilon is not None and self.mechanism == "gaussian":
            from ecos_pl.protocol.privacy import gaussian_sigma

            gaussian_sigma(self.epsilon, self.delta)  # an (ε, δ) no finite σ meets is refused now, not at scoring

    def mechanism_object(self):
        """The `ScoreMechanism` that adds the noise and accounts for it."""
        from ecos_pl.protocol.privacy import ScoreMechanism

        return ScoreMechanism.from_settings(self.epsilon, self.mechanism, self.delta)


@dataclass(frozen=True)
class Labelling(_Settings):
    """Private-kNN labelling of the proxy set by the client (`pseudo_label`).

    Defaults chosen by benchmarks/label_privacy.py on pseudo-label accuracy against the
    pool's truth (never the client's test split): the most accurate setting whose whole
    exchange (scores at ε = 0.58 + 400 labels) costs ε ≤ 8 at δ = 1e-5.
    """

    prefix = "scenario.labels."

    k: int = 40  # neighbours voting, in the query's subsample
    sigma: Optional[float] = 4.0  # Gaussian noise on each vote histogram; None: exact votes (not private)
    sampling_rate: float = 0.2  # γ: each query's Poisson subsample keeps each client sample with this probability
    threshold: Optional[float] = 0.3  # abstain when the noisy top vote is under threshold·k
    screen_sigma: Optional[float] = None  # σ₁: screen on the top vote + N(0, σ₁²) instead (confident-GNMax; accounted)
    delta: float = 1e-5  # ε is reported at this δ

    def __post_init__(self):
        check_count(self.k, f"{self.prefix}k", low=1)
        _in_range(f"{self.prefix}sigma", self.sigma, 0.0, optional=True)
        _in_range(f"{self.prefix}sampling_rate", self.sampling_rate, 0.0, 1.0, low_open=True)
        _in_range(f"{self.prefix}threshold", self.threshold, 0.0, 1.0, optional=True)
        _in_range(f"{self.prefix}screen_sigma", self.screen_sigma, 0.0, low_open=True, optional=True)
        _in_range(f"{self.prefix}delta", self.delta, 0.0, 1.0, low_open=True)

    @property
    def accounting(self) -> dict:
        """The keyword arguments of `label_epsilon` besides σ, B and δ."""
        return {"sampling_rate": self.sampling_rate, "screen_sigma": self.screen_sigma}


def paper() -> tuple[Clustering, Allocation]:
    """ECOS.md's clustering and allocation (R = 64, τ = 1)."""
    return Clustering(n_centroids=64), Allocation(temperature=1.0)


#: every settings class, by the name of its Hydra node under `protocol/` (`ecos_pl.conf_store`)
SETTINGS = {"clustering": Clustering, "allocation": Allocation, "score_privacy": ScorePrivacy, "labelling": Labelling}
