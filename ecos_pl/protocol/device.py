"""What belongs to a device, and nothing the cloud sends can change: its data, its noise, its privacy floor.

A device of a fleet (a Flower SuperNode, a phone) is a party of its own. It reads from its *own*
configuration (Flower's node config, `--node-config "images=... phi=... max-epsilon=..."`):

    images        the folder of its own images (any depth); with `phi`, the φ file the cloud publishes
                  (`ecos-cloud` writes it as phi.safetensors: an allow-listed file read as data, no code)
    max-epsilon   the weakest privacy it will release: the largest ε (default the paper's 0.58)
    max-delta     the largest δ (default 1e-5)
    seed          its noise seed; for simulations and tests only (whoever knows it can remove the noise).
                  Without one the noise comes from the operating system's CSPRNG (`privacy.NoiseSource`).

The cloud's run config only *asks* for a privacy level: an ask weaker than the device's floor (a larger ε
or δ, or exact counts) is refused by the device (`PrivacyFloor.check` raises `DeviceRefusal`, one
sentence naming the key), and the cloud sees a refusal, never counts.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_count, check_epsilon
from ecos_pl.protocol.privacy import DEFAULT_DELTA, ScoreMechanism, check_delta

log = logging.getLogger(__name__)

#: the weakest privacy a device releases unless its own config says otherwise: the paper's (ε, δ)
DEFAULT_MAX_EPSILON = 0.58
DEFAULT_MAX_DELTA = DEFAULT_DELTA
#: the node config's keys that belong to the device (Flower's own: partition-id, num-partitions)
IMAGES, PHI, MAX_EPSILON, MAX_DELTA, SEED = "images", "phi", "max-epsilon", "max-delta", "seed"
PARTITION_ID, NUM_PARTITIONS, CLIENT_INDEX = "partition-id", "num-partitions", "client-index"
DEVICE_KEYS = (IMAGES, PHI, MAX_EPSILON, MAX_DELTA, SEED, CLIENT_INDEX)


class DeviceRefusal(ECOSInputError):
    """A device will not answer: the cloud asked for weaker privacy than the device's floor."""


@dataclass(frozen=True)
class PrivacyFloor:
    """The weakest release a device accepts: ε at most `epsilon`, δ at most `delta` (exact counts never)."""

    epsilon: float = DEFAULT_MAX_EPSILON
    delta: float = DEFAULT_MAX_DELTA

    def __post_init__(self):
        eps = check_epsilon(self.epsilon)
        if eps is None:
            raise ECOSInputError(f"{MAX_EPSILON} must be a positive number; a device always adds noise (got None).")
        object.__setattr__(self, "epsilon", eps)
        object.__setattr__(self, "delta", check_delta(self.delta, MAX_DELTA))

    def check(self, asked: ScoreMechanism, where: str = "the run config") -> ScoreMechanism:
        """`asked` if it is at least as private as this floor; else `DeviceRefusal`, one sentence."""
        if asked.mechanism == "none":
            raise DeviceRefusal(f"{where} asks for exact counts (epsilon none), which this device's {MAX_EPSILON}="
                                f"{self.epsilon:g} does not allow; the device refuses to answer.")
        if asked.epsilon > self.epsilon:
            raise DeviceRefusal(f"{where} asks for epsilon={asked.epsilon:g}, weaker than this device's {MAX_EPSILON}="
                                f"{self.epsilon:g}; the device refuses to answer.")
        if asked.reported_delta > self.delta:
            raise DeviceRefusal(f"{where} asks for delta={asked.reported_delta:g}, weaker than this device's {MAX_DELTA}="
                                f"{self.delta:g}; the device refuses to answer.")
        return asked


def _node_value(config, key: str):
    value = config[key]
    return value.strip() if isinstance(value, str) else value


def _number(config, key: str, default: float) -> float:
    if key not in config:
        return default
    value = _node_value(config, key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ECOSInputError(f"{key} in the node config must be a number, got {value!r}.") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ECOSInputError(f"{key} in the node config must be a finite number, got {value!r}.")
    return number


def _path(config, key: str) -> Path | None:
    if key not in config:
        return None
    value = _node_value(config, key)
    if not isinstance(value, str) or not value:
        raise ECOSInputError(f"{key} in the node config must be a path, got {value!r}.")
    return Path(value).expanduser()


@dataclass(frozen=True)
class DeviceConfig:
    """A device's own settings, from its node config (`from_node_config`); never from the cloud's run config."""

    floor: PrivacyFloor = field(default_factory=PrivacyFloor)
    images: Path | None = None
    phi: Path | None = None
    seed: int | None = None
    #: its shard of the shared demo data (a simulation's partition id, or a demo SuperNode's client-index)
    index: int | None = None
    simulated: bool = False

    @classmethod
    def from_node_config(cls, config) -> "DeviceConfig":
        """The device's settings; a bad value is one sentence naming its key."""
        config = dict(config or {})
        floor = PrivacyFloor(_number(config, MAX_EPSILON, DEFAULT_MAX_EPSILON), _number(config, MAX_DELTA, DEFAULT_MAX_DELTA))
        images, phi = _path(config, IMAGES), _path(config, PHI)
        if images is not None and phi is None:
            raise ECOSInputError(f"{IMAGES} in the node config needs {PHI}: the φ file the cloud publishes (phi.safetensors).")
        if phi is not None and images is None:
            raise ECOSInputError(f"{PHI} in the node config goes with {IMAGES}, the folder of the device's own images.")
        seed = None if SEED not in config else check_count(_node_value(config, SEED), SEED, low=0)
        simulated = PARTITION_ID in config
        index = None
        for key in (PARTITION_ID, CLIENT_INDEX):
            if key in config:
                index = check_count(_node_value(config, key), key, low=0)
                break
        if images is None and index is None:
            raise ECOSInputError(f"the node config has neither '{IMAGES}' (the device's own images, with '{PHI}') nor "
                                 f"'{CLIENT_INDEX}' (a demo shard); start the SuperNode with --node-config \"{IMAGES}=<folder> "
                                 f"{PHI}=<phi.safetensors>\".")
        if seed is not None and not simulated:
            log.warning("this device's node config sets seed=%d: its noise is reproducible by whoever knows the seed "
                        "(for tests; leave it out for a real release).", seed)
        return cls(floor, images, phi, seed, index, simulated)


# ---------------------------------------------------------------------- how a device bounds and noises its counts

NOISES, UNITS = ("local", "distributed"), ("sample", "device")


def check_fleet_noise(noise: str, unit: str, clip_norm: float, min_answers: int) -> None:
    if noise not in NOISES:
        raise ECOSInputError(f"client.noise={noise!r} is not one of: {', '.join(NOISES)}.")
    if unit not in UNITS:
        raise ECOSInputError(f"client.unit={unit!r} is not one of: {', '.join(UNITS)}.")
    if not (isinstance(clip_norm, (int, float)) and 0 < clip_norm < math.inf):
        raise ECOSInputError(f"client.clip_norm must be a positive number, got {clip_norm!r}.")
    check_count(min_answers, "min_answers", low=1)


def bound_counts(counts: np.ndarray, n_samples: int, unit: str = "sample", clip_norm: float = 10.0) -> np.ndarray:
    """A device's counts bounded before any noise or masking, at what an honest device can hold: no count above its
    sample count (and so no total above it: each sample votes once); with unit=device, the vector scaled down to L2
    norm `clip_norm` and rounded down (integers whose L2 norm is at most C, so their L1 norm is at most min(C², √R·C)).
    An honest device's counts pass the first bound unchanged; the second is the device-level sensitivity."""
    counts = np.minimum(np.asarray(counts, dtype=np.float64), float(n_samples))
    if unit == "device":
        norm = float(np.sqrt(np.sum(counts**2)))
        if norm > clip_norm:
            counts = np.floor(counts * (clip_norm / norm))
    return counts


def sensitivities(unit: str, clip_norm: float, n_centroids: int) -> tuple[float, float]:
    """(L1, L2) distance between neighbours' bounded integer count vectors: (1, 1) per sample; per device
    (min(C², √R·C), C)."""
    if unit == "device":
        return min(clip_norm**2, math.sqrt(n_centroids) * clip_norm), float(clip_norm)
    return 1.0, 1.0


def share_variance(privacy: ScoreMechanism, unit: str, clip_norm: float, n_centroids: int, min_answers: int) -> tuple[float, float]:
    """(each device's Skellam variance per count, the variance the sum of `min_answers` devices carries): the sum of any
    `min_answers` devices' shares is one Skellam mechanism calibrated to the fleet's (ε, δ) by `skellam_variance`
    (RDP, dp-accounting's conversion); more devices add more noise, fewer cannot be unmasked (the dropout margin)."""
    from ecos_pl.protocol.privacy import skellam_variance

    l1, l2 = sensitivities(unit, clip_norm, n_centroids)
    # a round that spends part of the budget (`ScoreMechanism.for_share`, multi-round strategies) carries 1/share the
    # variance: Skellam's RDP is, up to a lower-order term, the Gaussian's α·Δ²/(2V), so rounds' shares add up as theirs
    total = skellam_variance(privacy.epsilon, privacy.delta, l1, l2) / privacy.share
    return total / int(min_answers), total


def fleet_report(privacy: ScoreMechanism, noise: str, unit: str, clip_norm: float, n_devices: int, min_answers: int,
                 n_centroids: int | None) -> dict:
    """What the fleet's noise is: per device and in the sum the cloud sees (σ per count), and the unit and bound."""
    out = {"noise": noise, "unit": unit, "devices": int(n_devices), **({"clip_norm": float(clip_norm)} if unit == "device" else {})}
    if privacy.mechanism == "none":
        return out
    if noise == "distributed" and n_centroids is not None:
        share, total = share_variance(privacy, unit, clip_norm, n_centroids, min_answers)
        out.update(noise_kind="skellam", min_answers=int(min_answers), device_sigma=math.sqrt(share),
                   sum_sigma=math.sqrt(share * n_devices), sigma_for_min_answers=math.sqrt(total))
    else:
        sigma = privacy._sigma()
        out.update(noise_kind=privacy.mechanism, device_sigma=sigma, sum_sigma=sigma * math.sqrt(n_devices))
    return out
