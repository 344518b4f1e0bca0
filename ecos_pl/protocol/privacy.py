"""Differential privacy of what the client releases: mechanisms calibrated and composed by dp-accounting.

Scores. One client sample changes one count by one (L2 and L1 sensitivity 1). The
Gaussian mechanism (the paper's, and the default) adds N(0, σ²) to every count, σ
calibrated to (ε, δ) by dp-accounting's analytic-Gaussian calibration (Balle & Wang
2018), which is exact rather than the loose √(2 ln(1.25/δ))/ε; Laplace adds
Laplace(1/ε) (pure ε-DP). Negative noisy counts are clipped at zero: post-processing,
free. `mechanism="none"` releases exact counts, an explicit reference with no guarantee.

Noise source. With a seed the noise is reproducible (simulations: same seed, same
selection), and whoever knows the seed can subtract it. Without one, the uniforms
behind every draw come from the operating system's CSPRNG (`os.urandom`) and are
turned into Gaussian/Laplace values by their inverse CDF in float64. What that does
not guarantee: floating-point samplers leak through the gaps between representable
values (Mironov 2012); the leakage is far below these ε values for noise scales ≥ 1,
but it is not a formal guarantee, which would need a discrete (snapping or discrete
Gaussian) sampler.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_epsilon

MECHANISMS = ("gaussian", "laplace", "none")
#: the δ at which results are reported when a mechanism has none of its own
DEFAULT_DELTA = 1e-5
#: the largest Gaussian σ calibrated: noise a billion times a count leaves nothing of it (an ε that small is a typo)
MAX_SIGMA = 1e9


def check_delta(delta, name: str = "delta") -> float:
    try:
        value = float(delta)
    except (TypeError, ValueError):
        raise ECOSInputError(f"{name} must be a number in (0, 1), got {delta!r}.") from None
    if not 0.0 < value < 1.0:
        raise ECOSInputError(f"{name} must lie in (0, 1), got {delta!r}.")
    return value


def check_rate(rate, name: str) -> float:
    """A sampling rate in (0, 1]."""
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ECOSInputError(f"{name} must be a number in (0, 1], got {rate!r}.") from None
    if not 0.0 < value <= 1.0:
        raise ECOSInputError(f"{name} must lie in (0, 1], got {rate!r}.")
    return value


def gaussian_sigma(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """σ of the Gaussian mechanism that is exactly (ε, δ)-DP for this L2 sensitivity (dp-accounting)."""
    import dp_accounting

    eps, dlt = check_epsilon(epsilon), check_delta(delta)
    try:
        with np.errstate(all="ignore"):
            sigma = float(dp_accounting.get_sigma_gaussian(eps, dlt)) * float(sensitivity)
    except (ValueError, RuntimeError, OverflowError):
        sigma = math.inf
    if not (0 < sigma <= MAX_SIGMA):
        raise ECOSInputError(
            f"epsilon={epsilon!r} with delta={delta!r} gives no usable Gaussian noise (σ = {sigma:.3g}, at most {MAX_SIGMA:g}); raise either."
        )
    return sigma


class NoiseSource:
    """Gaussian and Laplace draws: from a seeded numpy generator, or from the OS's CSPRNG when `seed` is None."""

    def __init__(self, seed=None):
        self.seed = seed
        self._rng = None if seed is None else np.random.default_rng(seed)

    @classmethod
    def wrap(cls, source) -> "NoiseSource":
        """A NoiseSource as is, or one drawing from an existing numpy Generator."""
        if isinstance(source, NoiseSource):
            return source
        wrapped = cls(None)
        wrapped._rng = source
        return wrapped

    def random(self, size) -> np.ndarray:
        """Uniforms in [0, 1): Private-kNN's subsamples (their secrecy is what amplifies privacy)."""
        return self._rng.random(size) if self._rng is not None else self._uniform(size)

    @property
    def secure(self) -> bool:
        return self._rng is None

    def generator(self) -> np.random.Generator:
        """A numpy Generator for integer draws (Skellam): the seeded one, or a fresh one seeded with 256 bits from the
        OS's CSPRNG (`secrets`), so that no one but this process knows its state."""
        if self._rng is not None:
            return self._rng
        import secrets

        return np.random.Generator(np.random.PCG64(secrets.randbits(256)))

    def _uniform(self, size) -> np.ndarray:
        """Uniforms in (0, 1) from 53 random bits each (never exactly 0 or 1, so both inverse CDFs are finite)."""
        n = int(np.prod(size))
        bits = np.frombuffer(os.urandom(8 * n), dtype=np.uint64) >> np.uint64(11)
        return ((bits.astype(np.float64) + 0.5) * 2.0**-53).reshape(size)

    def normal(self, scale: float, size) -> np.ndarray:
        if self._rng is not None:
            return self._rng.normal(0.0, scale, size=size)
        from scipy.special import ndtri

        return scale * ndtri(self._uniform(size))

    def laplace(self, scale: float, size) -> np.ndarray:
        if self._rng is not None:
            return self._rng.laplace(0.0, scale, size=size)
        u = self._uniform(size) - 0.5
        return -scale * np.sign(u) * np.log1p(-2.0 * np.abs(u))


@dataclass(frozen=True)
class ScoreMechanism:
    """How the client privatises its R counts: `gaussian` (ε, δ), `laplace` (ε) or `none` (exact counts)."""

    mechanism: str = "gaussian"
    epsilon: float | None = 0.58
    delta: float = DEFAULT_DELTA
    #: the L2 distance between neighbours' count vectors: 1 per sample; C with a device's vector clipped to C (unit=device)
    sensitivity: float = 1.0
    #: the part of the (ε, δ) budget this release spends, when a strategy asks several rounds (`for_share`)
    share: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.share <= 1.0:
            raise ECOSInputError(f"share must lie in (0, 1], got {self.share!r}.")
        if not (isinstance(self.sensitivity, (int, float)) and 0 < self.sensitivity < math.inf):
            raise ECOSInputError(f"sensitivity must be a positive number, got {self.sensitivity!r}.")
        if self.mechanism == "laplace" and self.sensitivity != 1.0:
            raise ECOSInputError("the laplace mechanism counts one sample (sensitivity 1); use gaussian with unit=device.")
        if self.mechanism not in MECHANISMS:
            raise ECOSInputError(f"mechanism={self.mechanism!r} is not one of: {', '.join(MECHANISMS)}.")
        if self.mechanism == "none":
            if self.epsilon is not None:
                raise ECOSInputError(f"mechanism='none' releases exact counts; epsilon must be null, got {self.epsilon!r}.")
            return
        if self.epsilon is None:
            raise ECOSInputError(f"mechanism={self.mechanism!r} needs an epsilon (null epsilon means mechanism 'none').")
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))
        self.noise_scale  # calibrate now: an ε that cannot be met fails before anything is computed

    @classmethod
    def from_settings(cls, epsilon, mechanism: str | None = None, delta: float = DEFAULT_DELTA,
                      sensitivity: float = 1.0) -> "ScoreMechanism":
        """`epsilon=None` means exact counts whatever the default mechanism is (`client.epsilon=null`)."""
        if epsilon is None:
            return cls("none", None, delta, sensitivity)
        return cls(mechanism or "gaussian", epsilon, delta, sensitivity)

    def for_share(self, share: float) -> "ScoreMechanism":
        """One of several releases that together spend this mechanism's budget, `share` of it each (shares summing to
        at most 1). Gaussian: σ/√share, since Gaussian releases of one sensitivity compose exactly into one of
        σ_total⁻² = Σ σ_t⁻² (shares summing to 1 cost exactly (ε, δ)); Laplace: ε·share (pure ε-DP adds up)."""
        import dataclasses

        return dataclasses.replace(self, share=float(share))

    @property
    def noise_scale(self) -> float:
        """σ (Gaussian, for this sensitivity), b = 1/ε (Laplace), 0 (none), for this release's share of the budget."""
        if self.mechanism == "gaussian":
            return gaussian_sigma(self.epsilon, self.delta, self.sensitivity) / math.sqrt(self.share)
        if self.mechanism == "laplace":
            return 1.0 / (self.epsilon * self.share)
        return 0.0

    def release_epsilon(self) -> float | None:
        """ε at δ of this one release (its share of the budget); the whole ε when share is 1."""
        if self.mechanism == "none":
            return None
        if self.share == 1.0:
            return self.epsilon
        if self.mechanism == "laplace":
            return self.epsilon * self.share
        return composed_epsilon([self.dp_event()], self.delta, "pld")

    @property
    def reported_delta(self) -> float:
        return self.delta if self.mechanism == "gaussian" else 0.0

    def privatize(self, counts: np.ndarray, noise: NoiseSource) -> np.ndarray:
        counts = np.asarray(counts, dtype=np.float64)
        if self.mechanism == "gaussian":
            counts = counts + noise.normal(self.noise_scale, counts.shape)
        elif self.mechanism == "laplace":
            counts = counts + noise.laplace(self.noise_scale, counts.shape)
        return np.maximum(counts, 0.0) if self.mechanism != "none" else counts

    def dp_event(self, adjacency: str = "add_remove"):
        """The release as a dp-accounting event (NonPrivate for exact counts). Adding or removing a sample moves one
        count by one; replacing one moves a count down and another up (L2 sensitivity √2, L1 2). Under dp-accounting's
        REPLACE_ONE relation a Gaussian event of multiplier m has neighbours 2/m apart (the element's ±1), so a shift
        of √2 at σ is multiplier σ·√2."""
        import dp_accounting

        replace = check_adjacency(adjacency) == "replace_one"
        if self.mechanism == "gaussian":  # the noise multiplier: σ over the sensitivity
            return dp_accounting.GaussianDpEvent(self.noise_scale / self.sensitivity * (math.sqrt(2.0) if replace else 1.0))
        if self.mechanism == "laplace":
            return dp_accounting.LaplaceDpEvent(self.noise_scale / (2.0 if replace else 1.0))
        return dp_accounting.NonPrivateDpEvent()

    def replace_one_epsilon(self) -> float | None:
        """ε at δ of the release when neighbouring data sets differ by one replaced sample (None for exact counts)."""
        if self.mechanism == "none":
            return None
        if self.mechanism == "laplace":
            return 2.0 * self.epsilon  # pure ε-DP, L1 sensitivity 2
        return composed_epsilon([self.dp_event("replace_one")], self.delta, "pld", "replace_one")

    def report(self) -> dict:
        return {"mechanism": self.mechanism, "epsilon": self.epsilon, "delta": self.reported_delta, "noise_sigma": self._sigma(),
                "adjacency": "add_remove", "epsilon_replace_one": self.replace_one_epsilon(),
                **({} if self.sensitivity == 1.0 else {"sensitivity": self.sensitivity})}

    def _sigma(self) -> float:
        """The noise's standard deviation (Laplace(b): b·√2)."""
        return self.noise_scale * (math.sqrt(2.0) if self.mechanism == "laplace" else 1.0)


#: dp-accounting's accountants by name: RDP (Rényi; the default, an upper bound) and PLD (privacy loss distributions:
#: tighter for many composed Gaussians, e.g. 3,000 subsampled Private-kNN answers)
ACCOUNTANTS = ("rdp", "pld")
#: PLD's discretisation of the privacy loss (dp-accounting's own default is 1e-4; 1e-3 keeps 3,000 compositions under a second)
PLD_DISCRETISATION = 1e-3


#: which data sets are neighbours: one sample added or removed (the default, the paper's), or one sample replaced
ADJACENCIES = ("add_remove", "replace_one")


def check_adjacency(adjacency: str) -> str:
    if adjacency not in ADJACENCIES:
        raise ECOSInputError(f"adjacency={adjacency!r} is not one of: {', '.join(ADJACENCIES)}.")
    return adjacency


def composed_epsilon(events: list, delta: float, accountant: str = "rdp", adjacency: str = "add_remove") -> float:
    """ε at δ of several releases by one client, composed with dp-accounting's RDP or PLD accountant (∞ if one is not
    private). `events` must be built for `adjacency` (docs/privacy.md "Adjacency"); replace-one needs PLD, the
    accountant that amplifies Poisson subsampling under it."""
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    if accountant not in ACCOUNTANTS:
        raise ECOSInputError(f"accountant={accountant!r} is not one of: {', '.join(ACCOUNTANTS)}.")
    if check_adjacency(adjacency) == "replace_one" and accountant != "pld":
        raise ECOSInputError("adjacency='replace_one' is accounted by the pld accountant only, not by rdp.")
    events = [e for e in events if not isinstance(e, dp_accounting.NoOpDpEvent)]
    if not events:
        return 0.0
    if any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in events):
        return math.inf
    if accountant == "pld":
        relation = dp_accounting.NeighboringRelation.REPLACE_ONE if adjacency == "replace_one" else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
        acc = pld_privacy_accountant.PLDAccountant(relation, value_discretization_interval=PLD_DISCRETISATION)
    else:
        acc = rdp_privacy_accountant.RdpAccountant()
    acc.compose(dp_accounting.ComposedDpEvent(events))
    return float(acc.get_epsilon(check_delta(delta)))


def check_budget(epsilon: float, max_epsilon: float | None, what: str) -> None:
    """Stop before anything is released when the composed ε would exceed the user's budget."""
    if max_epsilon is None:
        return
    if not epsilon <= float(max_epsilon):
        raise ECOSInputError(
            f"client.max_epsilon={max_epsilon:g} would be exceeded: {what} costs ε = {epsilon:.4g}; "
            "raise the noise, lower the number of answers or raise client.max_epsilon."
        )


def laplace_noise(shape, epsilon: float, rng: np.random.Generator, sensitivity: float = 1.0) -> np.ndarray:
    """Laplace(sensitivity/ε) noise: one client sample moves one count by one, so this makes counts ε-DP."""
    eps = check_epsilon(epsilon)
    return rng.laplace(0.0, sensitivity / eps, size=shape)


def laplace_epsilon(epsilons: list[float], delta: float = 0.0) -> float:
    """Total ε of several Laplace releases (sensitivity 1, scale 1/ε_i), composed with a PLD accountant."""
    eps_list = [check_epsilon(e) for e in epsilons if e is not None]
    if not eps_list:
        return 0.0
    if delta == 0.0:
        return float(sum(eps_list))  # pure DP: Laplace releases compose additively
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    accountant = pld_privacy_accountant.PLDAccountant()
    for eps in eps_list:
        accountant.compose(dp_accounting.LaplaceDpEvent(noise_multiplier=1.0 / eps))
    return float(accountant.get_epsilon(delta))


# ---------------------------------------------------------------------- distributed noise under a secure sum

#: integer Rényi orders of the Skellam bound (Agarwal, Kairouz, Liu 2021 prove it for integer α > 1)
SKELLAM_ORDERS = tuple(range(2, 65)) + tuple(range(72, 257, 8)) + (384, 512, 768, 1024)


@functools.lru_cache(maxsize=256)
def skellam_epsilon(variance: float, delta: float, l1: float = 1.0, l2: float = 1.0) -> float:
    """ε at δ of the Skellam mechanism whose noise has this variance per count (Poisson(μ/2) − Poisson(μ/2), μ the
    variance), for integer vectors moving by at most `l1` (L1) and `l2` (L2) between neighbours.

    RDP (Agarwal, Kairouz, Liu, "The Skellam Mechanism for Differentially Private Federated Learning", NeurIPS 2021,
    Corollary 3.6), for integer α > 1:  ε(α) ≤ α·l2²/(2μ) + min(((2α−1)·l2² + 6·l1)/(4μ²), 3·l1/(2μ));
    the first term is the Gaussian mechanism's at σ² = μ. Converted to (ε, δ) by dp-accounting's RDP conversion."""
    from dp_accounting.rdp import rdp_privacy_accountant

    mu, dlt = float(variance), check_delta(delta)
    if not (mu > 0 and math.isfinite(mu)):
        raise ECOSInputError(f"the Skellam variance must be a positive number, got {variance!r}.")
    rdp = [a * l2**2 / (2 * mu) + min(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu)) for a in SKELLAM_ORDERS]
    eps, _ = rdp_privacy_accountant.compute_epsilon(SKELLAM_ORDERS, rdp, dlt)
    return float(eps)


@functools.lru_cache(maxsize=64)
def skellam_variance(epsilon: float, delta: float, l1: float = 1.0, l2: float = 1.0) -> float:
    """The least Skellam variance (to 0.1 %) whose `skellam_epsilon` is at most ε: the noise the *sum* must carry."""
    eps = check_epsilon(epsilon)
    lo = hi = max(gaussian_sigma(eps, delta, l2) ** 2, 1e-9)  # the Gaussian's σ² is a lower bound
    while skellam_epsilon(hi, delta, l1, l2) > eps:
        lo, hi = hi, hi * 2.0
        if hi > MAX_SIGMA**2:
            raise ECOSInputError(f"epsilon={epsilon!r} with delta={delta!r} gives no usable Skellam noise; raise either.")
    while hi > lo * 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if skellam_epsilon(mid, delta, l1, l2) <= eps else (mid, hi)
    return hi


def skellam_noise(variance: float, size, noise: "NoiseSource") -> np.ndarray:
    """Integer Skellam noise of this variance: Poisson(variance/2) − Poisson(variance/2) (a sum of such draws is again
    Skellam, with the variances added: the secure sum of the devices' shares is one Skellam mechanism)."""
    rng = noise.generator()
    half = float(variance) / 2.0
    return rng.poisson(half, size).astype(np.int64) - rng.poisson(half, size).astype(np.int64)
