"""One driver for every cloud strategy, over any `Exchange`, for as many rounds as the strategy asks.

A strategy is Flower's two halves with no I/O (it never holds a client, a file or a grid):

    configure(**inputs) -> (message or None, state)   what to send first (None: ask nobody), and what to remember
    aggregate(state, answers) -> result or Ask(...)    the answers turned into the result, or the next round

`run(strategy, exchange, **inputs)` sends each message through the exchange and hands the answers back:

    message, state = strategy.configure(**inputs)
    while message is not None:           # a strategy that asks again returns Ask(message, state) from aggregate
        ...

ECOS is one round (centroids down, scores up), the label round another; a multi-round strategy
(adaptive ECOS) returns `Ask` from `aggregate` until it is done and needs no new driver.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import Exchange, Round


@dataclass(frozen=True)
class Answers:
    """The clients' answers to one message (in client order) and what the round cost (`cost` None: nobody was asked)."""

    replies: list = field(default_factory=list)
    cost: Round | None = None

    def __iter__(self):
        return iter(self.replies)

    def __len__(self) -> int:
        return len(self.replies)


@dataclass(frozen=True)
class Ask:
    """What `aggregate` returns to ask the clients again: the next message, and the state its answers go with."""

    message: Any
    state: Any


class Strategy(ABC):
    """A cloud strategy: `configure` then `aggregate`, neither of which does any I/O."""

    @abstractmethod
    def configure(self, **inputs) -> tuple[Any, Any]:
        """(the first message to every client, or None to ask nobody; the state `aggregate` gets back)."""

    @abstractmethod
    def aggregate(self, state, answers: Answers):
        """The result from the answers (an `Ask` for another round)."""


#: rounds one run may take before the driver stops a strategy that never ends
MAX_ROUNDS = 1000


def run(strategy: Strategy, exchange: Exchange | None, **inputs):
    """`strategy` over `exchange` from `inputs` to its result, one `send_and_receive` per message it asks for."""
    message, state = strategy.configure(**inputs)
    return resume(strategy, exchange, message, state)


def resume(strategy: Strategy, exchange: Exchange | None, message, state):
    """The rounds from `message` (what `configure`, or a program that ran it earlier, made) to the result; a None
    message asks nobody (`aggregate` gets no answers)."""
    for _ in range(MAX_ROUNDS):
        if message is None:
            answers = Answers()
        elif exchange is None:
            raise ECOSInputError(f"exchange is None, but {type(strategy).__name__} sends the clients a "
                                 f"{type(message).__name__}; give it an exchange that reaches them.")
        else:
            replies = exchange.send_and_receive(message)
            answers = Answers(list(replies), exchange.rounds[-1])
        out = strategy.aggregate(state, answers)
        if not isinstance(out, Ask):
            return out
        message, state = out.message, out.state
    raise ECOSInputError(f"{type(strategy).__name__} asked for more than {MAX_ROUNDS} rounds; a strategy must end.")
