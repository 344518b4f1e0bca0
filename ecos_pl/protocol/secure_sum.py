"""An exact in-process secure sum: what SecAgg+ gives the cloud, without Flower (`train.py clients=N client.noise=...`).

Each device hands `ECOSClient.share(message)` (its bounded counts plus its Skellam share with distributed noise,
its rounded local noisy counts with local noise) to the sum; the cloud receives only the exact integer sum of the
devices' vectors, clipped at zero (post-processing), as one `ScoresMessage`. SecAgg+ unmasks the same sum (its
masks cancel exactly modulo 2**32), so accuracy against the number of devices is measured here without Flower.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import InProcessExchange, Round
from ecos_pl.protocol.messages import HEADER_BYTES, CentroidsMessage, ScoresMessage, answer_tag


def common_epsilon(epsilons) -> float | None:
    """The ε a sum of devices' answers carries when they all answered at one ε (None: they differ, or exact counts)."""
    values = set(epsilons)
    return values.pop() if len(values) == 1 else None


@dataclass
class SecureSumExchange(InProcessExchange):
    """The devices in this process; the centroids round answers one `ScoresMessage`, their summed shares. Any other
    message (the label round) goes to each device as in `InProcessExchange`."""

    def _deliver(self, message):
        if not isinstance(message, CentroidsMessage):
            return super()._deliver(message)
        total, seconds, macs = np.zeros(message.n_centroids, dtype=np.int64), 0.0, 0
        for client in self.clients:
            before = client.score_macs
            start = time.perf_counter()
            total += client.share(message)
            seconds += time.perf_counter() - start
            macs += client.score_macs - before
        eps = common_epsilon(c.privacy.epsilon for c in self.clients)
        return [ScoresMessage(np.maximum(total, 0).astype(np.float32), eps, tag=answer_tag(message))], seconds, macs

    def _round(self, message, answers, seconds, macs) -> Round:
        """One summed answer stands for every device; each uploaded its R counts as int32 (in the clear: the same size)."""
        if not isinstance(message, CentroidsMessage):
            return super()._round(message, answers, seconds, macs)
        up = self.n_clients * (HEADER_BYTES + 4 * message.n_centroids)
        return Round(type(message).__name__, self.n_clients, int(message.nbytes), up, seconds, macs)
