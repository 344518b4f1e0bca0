"""The boundary between the cloud's strategy and the clients: one message down, every client's answer up.

As in Flower (a `Strategy` never calls a client; `grid.send_and_receive` does), a
sampler or the label round only ever calls `exchange.send_and_receive(message)`:

    CentroidsMessage      -> [ScoresMessage, ...]   (ECOS's one round)
    ProxyFeaturesMessage  -> [LabelsMessage, ...]   (pseudo_label's label round)
    FeaturesRequest       -> [FeaturesUpload, ...]  (oracle_central: the privacy-violating upload, counted)

`InProcessExchange` hands the message to `ECOSClient`s in this process (`train.py`,
the benchmarks); the programs carry the same messages as files; `ecos_pl.flower`
through Flower. Each round's bytes (down: one message per client; up: every answer),
the clients that answered, and their time and multiply-adds are recorded in `rounds`
(a strategy reads `rounds[-1]` after its call), so what a protocol cost is measured
where it is spent, not reconstructed by the strategy.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError


@dataclass(frozen=True)
class FeaturesRequest:
    """oracle_central's request for every client feature: no privacy at all (a reference, never a deployment)."""

    nbytes: int = 0


@dataclass(frozen=True)
class FeaturesUpload:
    features: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


@dataclass
class Round:
    """What one `send_and_receive` cost."""

    kind: str
    n_clients: int  # the clients that answered (a transport may drop a client that did not)
    bytes_down: int  # per client: each receives the message once
    bytes_up: int  # all answers together
    client_seconds: float = 0.0
    client_macs: int = 0


class Exchange(ABC):
    """Carries one message to every client and returns the answers that came back, in client order."""

    def __init__(self) -> None:
        self.rounds: list[Round] = []

    @property
    @abstractmethod
    def n_clients(self) -> int: ...

    @abstractmethod
    def _deliver(self, message) -> tuple[list, float, int]:
        """(answers, clients' seconds, clients' multiply-adds)."""

    def send_and_receive(self, message) -> list:
        answers, seconds, macs = self._deliver(message)
        self.rounds.append(self._round(message, answers, float(seconds), int(macs)))
        return answers

    def _round(self, message, answers: list, seconds: float, macs: int) -> Round:
        """What the round cost: one answer per client that answered (a transport that hands back one aggregate,
        as SecAgg+ does, says how many clients it stands for and what they uploaded)."""
        return Round(type(message).__name__, len(answers), int(message.nbytes), int(sum(a.nbytes for a in answers)),
                     seconds, macs)


@dataclass
class InProcessExchange(Exchange):
    """Clients in this process (`ECOSClient`s): each message is handed to each client's `handle`."""

    clients: list = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()
        if not self.clients:
            raise ECOSInputError("clients is empty; an exchange needs at least one client.")

    @property
    def n_clients(self) -> int:
        return len(self.clients)

    def _deliver(self, message):
        answers, seconds, macs = [], 0.0, 0
        for i in range(len(self.clients)):
            answer, s, m = self.ask(i, message)
            answers.append(answer)
            seconds, macs = seconds + s, macs + m
        return answers, seconds, macs

    def ask(self, i: int, message) -> tuple[object, float, int]:
        """(client `i`'s answer to `message`, its seconds, its multiply-adds)."""
        client = self.clients[i]
        before = getattr(client, "score_macs", 0)
        start = time.perf_counter()
        answer = client.handle(message)
        return answer, time.perf_counter() - start, getattr(client, "score_macs", 0) - before


class AnsweredExchange(Exchange):
    """Answers already in hand (the programs' `select` and `labels`: read from the clients' files), handed back for the
    one round they answer, so a program finishes a round through the same driver as every other transport."""

    def __init__(self, answers: list) -> None:
        super().__init__()
        self.answers = list(answers)

    @property
    def n_clients(self) -> int:
        return len(self.answers)

    def _deliver(self, message):
        if self.rounds:
            raise ECOSInputError(f"the answers given answer one round; the strategy asks another ({type(message).__name__}), "
                                 "which these files cannot answer.")
        return self.answers, 0.0, 0


def as_exchange(target) -> Exchange:
    """An `Exchange` as is; one client or a list of clients in this process, wrapped in an `InProcessExchange`."""
    if isinstance(target, Exchange):
        return target
    return InProcessExchange(list(target) if isinstance(target, (list, tuple)) else [target])
