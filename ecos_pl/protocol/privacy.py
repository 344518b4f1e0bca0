"""Differential privacy of what the client releases, accounted with dp-accounting rather than by hand."""

from __future__ import annotations

import numpy as np

from ecos_pl.protocol.errors import check_epsilon


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
