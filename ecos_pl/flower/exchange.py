"""The ServerApp's side of the exchange boundary: each ECOS message travels as its bytes in a Flower `Message`.

Down: one `Message(RecordDict({"ecos": ConfigRecord({"message": bytes})}), node_id, "query.ecos")` per node,
sent with `grid.send_and_receive`. Up: the same record holding the answer's bytes and the client's index
(`"client"`: its partition id in a simulation, its configured index in a deployment), by which the answers
are ordered, so the fleet's scores are summed in the order the in-process exchange sums them.

A reply that is an error (a device's refusal among them), carries no parseable answer of the expected kind,
fails the cloud's checks (`ecos_pl.protocol.answers.screen_answers`: length, the centroids' tag, the round,
one answer per node, replays), or never comes (the timeout) is dropped with a warning and the round goes on with the clients that answered; with fewer than
`min_answers` answers the round fails with one `ECOSInputError` sentence.
"""

from __future__ import annotations

import logging
import math
import time

from flwr.app import ConfigRecord, Message, RecordDict

from ecos_pl.protocol.answers import Answer, screen_answers
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import Exchange
from ecos_pl.protocol.messages import CentroidsMessage, LabelsMessage, ProxyFeaturesMessage, ScoresMessage

log = logging.getLogger(__name__)

#: seconds a round (or, with SecAgg+, each of its stages) waits for the answers before it goes on without the rest
DEFAULT_TIMEOUT = 120.0

#: the Flower message type of every ECOS round (a ClientApp registers it with `@app.query("ecos")`)
MESSAGE_TYPE = "query.ecos"
#: the one ConfigRecord in each message's content
RECORD = "ecos"
#: what a client answers to each message the cloud sends
ANSWER_TYPES = {CentroidsMessage: ScoresMessage, ProxyFeaturesMessage: LabelsMessage}


def encode(message, client: int | None = None, round: int | None = None) -> RecordDict:
    """An ECOS message as a Flower `RecordDict`: its bytes, the answering client's index and the round (sent down by
    the cloud, echoed by the device) when given."""
    record = {"message": message.to_bytes()}
    if client is not None:
        record["client"] = int(client)
    if round is not None:
        record["round"] = int(round)
    return RecordDict({RECORD: ConfigRecord(record)})


def round_of(content: RecordDict) -> int | None:
    """The round a Flower `RecordDict` of ECOS's says it belongs to (None when it says none)."""
    try:
        value = content.config_records[RECORD].get("round")
    except (KeyError, AttributeError, TypeError):
        return None
    return None if value is None or isinstance(value, bool) or not isinstance(value, int) else int(value)


def decode(content: RecordDict, expected) -> tuple[object, int | None]:
    """(the ECOS message of class `expected`, the client's index or None) from a Flower `RecordDict`;
    `ECOSInputError` (one sentence) when it holds none."""
    try:
        record = content.config_records[RECORD]
        data = record["message"]
    except (KeyError, AttributeError, TypeError):
        raise ECOSInputError(f"the Flower message holds no '{RECORD}' ConfigRecord with a 'message' entry.") from None
    client = record.get("client")
    return expected.from_bytes(data), None if client is None else int(client)


class GridExchange(Exchange):
    """What every exchange over a Flower `Grid` shares: the nodes to ask, the fewest answers, the timeout.

    `node_ids`: the nodes to ask (default: every node the grid knows when the round starts);
    `min_answers`: the fewest answers a round goes on with (at least `least`); `timeout`: seconds to
    wait for the answers (finite: a node that never answers must not stall the cloud).
    """

    #: the fewest answers any round of this exchange can go on with, and why (said when a smaller min_answers is refused)
    least, least_why = 1, ""

    def __init__(self, grid, node_ids=None, *, min_answers: int = 1, timeout: float = DEFAULT_TIMEOUT):
        super().__init__()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ECOSInputError(f"timeout must be a finite number of seconds > 0, got {timeout!r}.")
        self.grid, self.timeout = grid, float(timeout)
        self.min_answers = int(min_answers)
        if self.min_answers < self.least:
            raise ECOSInputError(f"min_answers must be at least {self.least}{self.least_why}, got {min_answers!r}.")
        self._node_ids = None if node_ids is None else [int(n) for n in node_ids]

    def node_ids(self) -> list[int]:
        return sorted(int(n) for n in (self._node_ids if self._node_ids is not None else self.grid.get_node_ids()))

    @property
    def n_clients(self) -> int:
        """The nodes there are to ask (`rounds[-1].n_clients`: those that answered)."""
        return len(self.node_ids())

    def nodes_for_round(self) -> list[int]:
        """The nodes to ask now; one sentence when they are fewer than `min_answers`."""
        nodes = self.node_ids()
        if len(nodes) < self.min_answers:
            raise ECOSInputError(f"the Flower grid has {len(nodes)} nodes, fewer than min_answers={self.min_answers}.")
        return nodes


class FlowerExchange(GridExchange):
    """The clients behind a Flower `Grid` (the ServerApp's): one message to each node, its answers back."""

    def __init__(self, grid, node_ids=None, *, min_answers: int = 1, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(grid, node_ids, min_answers=min_answers, timeout=timeout)
        #: per round: the nodes whose answer was dropped, and why
        self.dropped: list[dict[int, str]] = []

    def _deliver(self, message):
        expected = ANSWER_TYPES.get(type(message))
        if expected is None or not hasattr(message, "to_bytes"):
            raise ECOSInputError(f"a FlowerExchange carries centroids and proxy features, not a {type(message).__name__}.")
        nodes = self.nodes_for_round()
        group = f"ecos-round-{len(self.rounds)}"
        round_id = len(self.rounds)
        out = [Message(encode(message, round=round_id), node, MESSAGE_TYPE, group_id=group) for node in nodes]
        start = time.perf_counter()
        replies = list(self.grid.send_and_receive(out, timeout=self.timeout))
        seconds = time.perf_counter() - start  # the round trip (the clients' own time is not reported to the cloud)
        received, dropped = [], {}
        for reply in replies:
            node = int(reply.metadata.src_node_id)
            if reply.has_error():
                dropped[node] = f"error {reply.error.code}: {reply.error.reason}"
                continue
            try:
                answer, client = decode(reply.content, expected)
            except ECOSInputError as err:
                dropped[node] = str(err)
                continue
            received.append(Answer(node, answer, node if client is None else client, round_of(reply.content)))
        kept, refused = screen_answers(message, received, round_id)  # lengths, tag, round, one per node, replays
        dropped.update(refused)
        answers = {a.node: (a.client, a.node, a.message) for a in kept}
        for node in nodes:
            if node not in answers and node not in dropped:
                dropped[node] = f"no answer within {self.timeout:g} s"
        for node, why in sorted(dropped.items()):
            log.warning("ECOS round %s: dropped the answer of node %s (%s); the round goes on without it.", group, node, why)
        self.dropped.append(dropped)
        if len(answers) < self.min_answers:
            raise ECOSInputError(
                f"only {len(answers)} of {len(nodes)} clients answered the {type(message).__name__} "
                f"(fewer than min_answers={self.min_answers}); the round cannot go on."
            )
        ordered = sorted(answers.values(), key=lambda a: (a[0], a[1]))
        return [a for _, _, a in ordered], seconds, 0
