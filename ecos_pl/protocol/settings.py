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


def check_number(key: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, optional: bool = False) -> None:
    """A finite number in the interval [low, high] (open where said); None only when `optional`."""
    if value is None:
        if optional:
            return
        raise ECOSInputError(f"{key} must be a number, got null.")
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    bad = bad or (low is not None and (value <= low if low_open else value < low))
    bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        lo = "-∞" if low is None else f"{low:g}"
        hi = "∞" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ECOSInputError(f"{key} must be a finite number in {interval}, got {value!r}.")


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
        check_number(f"{self.prefix}radius_quantile", self.radius_quantile, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True)
class Allocation(_Settings):
    """How the cloud spends the budget over clusters given the clients' scores: b_r ∝ v_r^(1/τ)."""

    prefix = "sampler."

    temperature: float = 0.5  # τ; ECOS.md's default is 1
    #: with several clients, none claims more than this many times the others' median total, nor any count above this
    #: many times the others' median largest count (`parties.cap_client_scores`; None: no cap)
    client_cap: Optional[float] = 2.0

    def __post_init__(self):
        check_number(f"{self.prefix}temperature", self.temperature, low=0.0, low_open=True)
        check_number(f"{self.prefix}client_cap", self.client_cap, low=1.0, optional=True)


@dataclass(frozen=True)
class ScorePrivacy(_Settings):
    """How the client privatises its R scores: Gaussian (the paper's) or Laplace noise; `epsilon=None`: exact counts.

    A fleet (`clients=N`, Flower) also says how its devices share the noise: `noise=local` (each device adds the full
    noise for (ε, δ): without a secure sum the cloud sees each device's answer) or `distributed` (under a secure sum,
    each device adds integer Skellam noise sized so that the sum of any `min_answers` devices carries (ε, δ) once), and
    what one unit of privacy is: `unit=sample` (one sample changes one count by one) or `device` (a device's whole
    count vector, clipped on the device to L2 norm `clip_norm`)."""

    prefix = "client."

    mechanism: str = "gaussian"
    epsilon: Optional[float] = 0.58  # the paper's ε for every ECOS row
    delta: float = 1e-5
    noise: str = "local"  # local: each device adds the full σ; distributed: shares of it under a secure sum
    unit: str = "sample"  # sample: one sample is protected; device: a device's whole contribution (clipped to clip_norm)
    clip_norm: float = 10.0  # C, the L2 bound of a device's count vector with unit=device (its sensitivity)
    min_answers: Optional[int] = None  # distributed noise: the fewest devices whose sum must carry (ε, δ); null: all

    def __post_init__(self):
        if self.mechanism not in ("gaussian", "laplace"):
            raise ECOSInputError(f"{self.prefix}mechanism={self.mechanism!r} is not one of: gaussian, laplace.")
        check_number(f"{self.prefix}epsilon", self.epsilon, low=0.0, low_open=True, optional=True)
        check_number(f"{self.prefix}delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)
        if self.noise not in ("local", "distributed"):
            raise ECOSInputError(f"{self.prefix}noise={self.noise!r} is not one of: local, distributed.")
        if self.unit not in ("sample", "device"):
            raise ECOSInputError(f"{self.prefix}unit={self.unit!r} is not one of: sample, device.")
        check_number(f"{self.prefix}clip_norm", self.clip_norm, low=0.0, low_open=True)
        if self.min_answers is not None:
            from ecos_pl.protocol.errors import check_count

            check_count(self.min_answers, f"{self.prefix}min_answers", low=1)
        if self.epsilon is not None and (self.noise == "distributed" or self.unit == "device") and self.mechanism != "gaussian":
            raise ECOSInputError(f"{self.prefix}mechanism=laplace goes with noise=local and unit=sample only "
                                 f"(distributed noise is Skellam, calibrated like the Gaussian).")
        if self.epsilon is not None and self.mechanism == "gaussian":
            from ecos_pl.protocol.privacy import gaussian_sigma

            gaussian_sigma(self.epsilon, self.delta)  # an (ε, δ) no finite σ meets is refused now, not at scoring

    def mechanism_object(self):
        """The `ScoreMechanism` that adds the noise and accounts for it (sensitivity `clip_norm` with unit=device)."""
        from ecos_pl.protocol.privacy import ScoreMechanism

        return ScoreMechanism.from_settings(self.epsilon, self.mechanism, self.delta,
                                            sensitivity=self.clip_norm if self.unit == "device" else 1.0)


@dataclass(frozen=True)
class Labelling(_Settings):
    """Private-kNN labelling of the proxy set by the client (`pseudo_label`).

    Defaults chosen by benchmarks/label_privacy.py on pseudo-label accuracy against the
    pool's truth (never the client's test split): the most accurate setting whose whole
    exchange (scores at ε = 0.58 + 400 labels) costs ε ≤ 8 at δ = 1e-5 (on digits_lite, and
    again on digits5_lite, every client domain, seeds 1-3: docs/privacy.md).
    """

    prefix = "scenario.labels."

    k: int = 40  # neighbours voting, in the query's subsample
    sigma: Optional[float] = 4.0  # Gaussian noise on each vote histogram; None: exact votes (not private)
    sampling_rate: float = 0.2  # γ: each query's Poisson subsample keeps each client sample with this probability
    threshold: Optional[float] = 0.3  # abstain when the noisy top vote is under threshold·k
    screen_sigma: Optional[float] = None  # σ₁: screen on the top vote + N(0, σ₁²) instead (confident-GNMax; accounted)
    delta: float = 1e-5  # ε is reported at this δ
    accountant: str = "rdp"  # dp-accounting's accountant of the exchange's ε: rdp, or pld (tighter: ε 7.58 -> 7.0 at the defaults)

    def __post_init__(self):
        check_count(self.k, f"{self.prefix}k", low=1)
        if self.accountant not in ("rdp", "pld"):
            raise ECOSInputError(f"{self.prefix}accountant={self.accountant!r} is not one of: rdp, pld.")
        check_number(f"{self.prefix}sigma", self.sigma, low=0.0, low_open=True, optional=True)
        check_number(f"{self.prefix}sampling_rate", self.sampling_rate, low=0.0, high=1.0, low_open=True)
        check_number(f"{self.prefix}threshold", self.threshold, low=0.0, high=1.0, optional=True)
        check_number(f"{self.prefix}screen_sigma", self.screen_sigma, low=0.0, low_open=True, optional=True)
        check_number(f"{self.prefix}delta", self.delta, low=0.0, high=1.0, low_open=True, high_open=True)

    @property
    def accounting(self) -> dict:
        """The keyword arguments of `label_epsilon` besides σ, B and δ."""
        return {"sampling_rate": self.sampling_rate, "screen_sigma": self.screen_sigma, "accountant": self.accountant}


@dataclass(frozen=True)
class Refinement(_Settings):
    """How `ecos_adaptive` asks again: how many rounds, how many centroids each, which cells, how the client's ε splits.

    Defaults chosen on the proxy set's in-domain fraction (the pool's own domain labels: no accuracy, no client
    split read), seeds 1-3, the default client of digits_lite and of digits5_lite (benchmarks/adaptive_probe.py).
    """

    prefix = "sampler."

    #: Rₜ of every round after the first (round 1 has the clustering's n_centroids); each larger than the one before
    round_centroids: tuple = (128,)
    mass: float = 0.5  # q: refine the smallest set of cells holding this fraction of the score mass
    first_share: float = 0.3  # round 1's share of the client's score budget; later rounds split the rest evenly
    outside_budget: bool = False  # cells never refined keep a share of the budget (False: only refined cells get any)

    def __post_init__(self):
        rounds = tuple(self.round_centroids) if not isinstance(self.round_centroids, (int, float)) else (self.round_centroids,)
        if not rounds:
            raise ECOSInputError(f"{self.prefix}round_centroids is empty; give Rₜ of at least one round after the first.")
        for r in rounds:
            check_count(r, f"{self.prefix}round_centroids", low=2)
        if list(rounds) != sorted(set(rounds)):
            raise ECOSInputError(f"{self.prefix}round_centroids must increase from round to round, got {list(rounds)}.")
        object.__setattr__(self, "round_centroids", tuple(int(r) for r in rounds))
        check_number(f"{self.prefix}mass", self.mass, low=0.0, high=1.0, low_open=True)
        check_number(f"{self.prefix}first_share", self.first_share, low=0.0, high=1.0, low_open=True, high_open=True)

    def shares(self) -> list[float]:
        later = len(self.round_centroids)
        return [self.first_share] + [(1.0 - self.first_share) / later] * later

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["round_centroids"] = list(self.round_centroids)
        return d


def cloud_settings(settings: dict, clustering: Clustering | None = None, allocation: Allocation | None = None,
                   *, where: str) -> tuple[Clustering, Allocation]:
    """(Clustering, Allocation) from flat keys (as configs give them: `sampler.temperature`, ...) over the given
    objects or the defaults; a key of neither is refused, naming `where` it was given."""
    unknown = sorted(set(settings) - set(Clustering().to_dict()) - set(Allocation().to_dict()))
    if unknown:
        raise ECOSInputError(f"{where}{unknown[0]} is not a setting of the clustering or the allocation.")
    base_c, base_a = (clustering or Clustering()).to_dict(), (allocation or Allocation()).to_dict()
    return (Clustering.from_mapping({**base_c, **settings}, strict=False),
            Allocation.from_mapping({**base_a, **settings}, strict=False))


def paper() -> tuple[Clustering, Allocation]:
    """ECOS.md's clustering and allocation (R = 64, τ = 1)."""
    return Clustering(n_centroids=64), Allocation(temperature=1.0)


#: every settings class, by the name of its Hydra node under `protocol/` (`ecos_pl.conf_store`)
SETTINGS = {"clustering": Clustering, "allocation": Allocation, "refinement": Refinement, "score_privacy": ScorePrivacy,
            "labelling": Labelling}
