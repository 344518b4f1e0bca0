"""Scores summed with Flower's SecAgg+: the cloud learns the fleet's summed counts, never one client's vector.

ECOS's one round rides on Flower's legacy SecAgg+ (`DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`
here, `secaggplus_mod` around the ClientApp's `train` handler in `apps.py`): the centroids travel in the
fit instructions' config, each client answers one integer vector (`secagg_counts`: its noisy counts
rounded and clipped to [0, clip] on the device) with one example, and SecAgg+ masks it. With
`clipping_range=clip`, `quantization_range=2·clip`, `max_weight=1` and one example per client, Flower's
quantisation maps an integer x to x + clip exactly, so what SecAgg+ unmasks is exactly the integer
sum (divided by the number of clients, which FedAvg's weighted mean of the one unmasked vector leaves;
multiplied back and rounded here). The exchange answers one `ScoresMessage`, the sum, and records the
number of clients it sums (`Round.n_clients`).

What the cloud cannot do with only the sum: apply `Allocation.client_cap` (it needs each client's
total), so a SecAgg exchange refuses a sampler with a cap (`check_no_client_cap`). A semi-honest
client's vector is bounded by the device-side clip; SecAgg+ checks nothing about a malicious client's
input (docs/flower.md, "Threat model").
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import Context, Message
from flwr.common import Code, FitRes, Parameters, Status, ndarray_to_bytes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.flower.exchange import DEFAULT_TIMEOUT, GridExchange
from ecos_pl.protocol.exchange import Round
from ecos_pl.protocol.messages import CentroidsMessage, ScoresMessage
from ecos_pl.protocol.secure_sum import common_epsilon

log = logging.getLogger(__name__)

#: the largest count one client adds to one centroid (its samples in one cluster, noise included);
#: Flower's masks live modulo 2**32, so `n_clients · 2 · clip` must stay below it (2048 clients at this clip)
DEFAULT_CLIP = 2**20
MODULUS = 2**32
#: the fit config's keys: the centroids message's bytes, and the clip the device applies before masking
MESSAGE_KEY, CLIP_KEY = "message", "clip"
#: where SecAgg+ names its stage in each message it sends (flwr.common.secure_aggregation.secaggplus_constants)
STAGE_RECORD, STAGE_KEY = "secaggplus_configs", "stage"


class StageWatch:
    """The grid SecAgg+ talks through, noting per stage which nodes were asked and which answered without error,
    so a stalled or shrunken round can say where it lost whom."""

    def __init__(self, grid):
        self._grid = grid
        #: (stage, nodes asked, nodes that answered) per `send_and_receive`, in order
        self.stages: list[tuple[str, list[int], set[int]]] = []

    def __getattr__(self, name):
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        stage = next((str(m.content.config_records[STAGE_RECORD][STAGE_KEY]) for m in messages
                      if STAGE_RECORD in m.content.config_records), messages[0].metadata.message_type if messages else "?")
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        answered = {int(r.metadata.src_node_id) for r in replies if not r.has_error()}
        self.stages.append((stage, sorted(int(m.metadata.dst_node_id) for m in messages), answered))
        return replies

    def silent(self) -> list[tuple[str, list[int]]]:
        """(stage, the nodes asked in it that gave no usable answer) for every stage that lost a node."""
        return [(stage, [n for n in asked if n not in answered]) for stage, asked, answered in self.stages
                if any(n not in answered for n in asked)]


def secagg_counts(scores: np.ndarray, clip: int) -> tuple[np.ndarray, int]:
    """(the integer vector a client hands to SecAgg+, how many entries the clip changed): its vector rounded to the
    nearest integer and clipped to [-clip, clip], Flower's clipping range (post-processing of the device's own noisy
    counts; an honest device's bounded counts plus its noise never reach it at the clip the cloud derives)."""
    counts = np.rint(np.asarray(scores, dtype=np.float64))
    clipped = int((np.abs(counts) > clip).sum())
    return np.clip(counts, -clip, clip).astype(np.int64), clipped


def secagg_reply(message: Message, client, index: int) -> Message:
    """The device's answer to SecAgg+'s stage 2 (fit instructions holding the centroids): its integer vector
    (`ECOSClient.share`: bounded counts plus its Skellam share with client.noise=distributed, its rounded local noisy
    counts with local noise) as one-example fit results, which `secaggplus_mod` then masks; its ε, noise and index
    travel as (public) metrics."""
    fitins = compat.recorddict_to_fitins(message.content, keep_input=True)
    centroids = CentroidsMessage.from_bytes(fitins.config[MESSAGE_KEY])
    vector = client.share(centroids) if hasattr(client, "share") else client.handle(centroids).scores
    counts, clipped = secagg_counts(vector, int(fitins.config[CLIP_KEY]))
    if clipped:
        log.warning("client %d: %d counts clipped at secagg-clip=%d before masking.", index, clipped, fitins.config[CLIP_KEY])
    epsilon = getattr(getattr(client, "privacy", None), "epsilon", None)
    metrics = {"client": int(index), "clipped": clipped, "noise": str(getattr(client, "noise", "local")),
               **({} if epsilon is None else {"epsilon": float(epsilon)})}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([counts.astype(np.float64)]), 1, metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)


def _epsilons_text(epsilons: dict) -> str:
    """The clients' ε for the log: one value when they agree (a fleet of 100 is one line, not 100 entries)."""
    values = {e for e in epsilons.values()}
    if len(values) == 1:
        (e,) = values
        return f"{e if e is not None else 'exact'} for all {len(epsilons)}"
    return ", ".join(f"{c}: {e if e is not None else 'exact'}" for c, e in sorted(epsilons.items()))


def check_no_client_cap(sampler) -> None:
    """SecAgg+ hides each client's scores, so a median-relative per-client cap cannot apply: refuse it."""
    cap = getattr(getattr(sampler, "allocation", None), "client_cap", None)
    if cap is not None:
        raise ECOSInputError(
            f"secagg=true shows the cloud only the clients' summed scores, so sampler.client_cap={cap:g} cannot apply; "
            "set client-cap to \"none\" (each client's counts are clipped at secagg-clip on the device instead)."
        )


class SecAggExchange(GridExchange):
    """The clients behind a Flower `Grid`, their scores summed by SecAgg+: one `ScoresMessage` per round, the sum.

    `context`: the ServerApp's; `min_answers`: the fewest clients the sum may cover (at least 2, SecAgg+'s own
    minimum); `num_shares`, `reconstruction_threshold`: SecAgg+'s (a float is a fraction of the clients, of the
    shares); `clip`: the largest count per centroid and client; `timeout`: seconds per SecAgg+ stage.
    """

    least, least_why = 2, " with secagg=true (SecAgg+ sums two clients or more)"

    def __init__(self, grid, context: Context, node_ids=None, *, min_answers: int = 2, clip: int = DEFAULT_CLIP,
                 num_shares: int | float = 1.0, reconstruction_threshold: int | float = 0.67,
                 timeout: float = DEFAULT_TIMEOUT):
        super().__init__(grid, node_ids, min_answers=min_answers, timeout=timeout)
        self.context, self.clip = context, int(clip)
        if not 1 <= self.clip < MODULUS // 4:
            raise ECOSInputError(f"secagg-clip must be an integer in [1, {MODULUS // 4}), got {clip!r}.")
        self.num_shares, self.reconstruction_threshold = num_shares, reconstruction_threshold
        #: per round: {client index: ε (None: exact counts)} of the clients whose vectors the sum covers
        self.client_epsilons: list[dict[int, float | None]] = []
        self._summed = 0

    def _deliver(self, message):
        if not isinstance(message, CentroidsMessage):
            raise ECOSInputError(f"a SecAggExchange sums scores; it cannot carry a {type(message).__name__}.")
        n = len(self.nodes_for_round())
        if n * 2 * self.clip >= MODULUS:
            raise ECOSInputError(f"{n} clients with secagg-clip={self.clip} overflow SecAgg+'s 2**32 modulus; "
                                 f"lower secagg-clip below {MODULUS // (2 * n)}.")
        reports: list[dict] = []

        def collect(fit_metrics):  # FedAvg's hook: each client's (num_examples, metrics), unmasked metadata only
            reports.extend(metrics for _, metrics in fit_metrics)
            return {}

        strategy = FedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n, min_available_clients=n,
            initial_parameters=Parameters(tensors=[], tensor_type="numpy.ndarray"),
            on_fit_config_fn=lambda _round: {MESSAGE_KEY: message.to_bytes(), CLIP_KEY: self.clip},
            fit_metrics_aggregation_fn=collect,
        )
        context = LegacyContext(self.context, config=ServerConfig(num_rounds=1), strategy=strategy)
        workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
            self.num_shares, self.reconstruction_threshold, max_weight=1.0, clipping_range=float(self.clip),
            quantization_range=2 * self.clip, modulus_range=MODULUS, timeout=self.timeout,
        ))
        watch = StageWatch(self.grid)
        start = time.perf_counter()
        workflow(watch, context)
        seconds = time.perf_counter() - start
        self._summed = len(reports)
        lost = "; ".join(f"stage {stage}: node{'s' * (len(nodes) > 1)} {', '.join(map(str, nodes))} gave no answer "
                         f"within {self.timeout:g} s" for stage, nodes in watch.silent())
        if self._summed < self.min_answers:
            raise ECOSInputError(
                f"SecAgg+ summed the scores of {self._summed} of {n} clients, fewer than min_answers={self.min_answers} "
                f"({lost or 'too few shares to unmask'}); the round cannot go on."
            )
        if lost:
            log.warning("SecAgg+ round went on without some nodes (%s).", lost)
        (mean,) = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
            context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))
        # FedAvg's mean of the one unmasked sum; clipped at zero here, after the sum (distributed noise may be negative)
        total = np.maximum(np.rint(np.asarray(mean, dtype=np.float64) * self._summed), 0.0)
        epsilons = {int(m["client"]): (float(m["epsilon"]) if "epsilon" in m else None) for m in reports}
        self.client_epsilons.append(epsilons)
        clipped = sum(int(m.get("clipped", 0)) for m in reports)
        log.info("SecAgg+ round: the cloud received only masked vectors from %d of %d clients and unmasked their sum "
                 "(%d counts, total %.0f); client ε: %s%s", self._summed, n, total.size, total.sum(),
                 _epsilons_text(epsilons),
                 f"; {clipped} entries clipped at {self.clip} on the devices" if clipped else "")
        return [ScoresMessage(total.astype(np.float32), common_epsilon(epsilons.values()))], seconds, 0

    def _round(self, message, answers, seconds, macs) -> Round:
        """One summed answer stands for the clients it sums; each uploaded one masked vector (its weight, its R counts:
        two int64 arrays as Flower serialises them)."""
        masked = sum(len(ndarray_to_bytes(np.zeros(size, np.int64))) for size in (1, answers[0].n_centroids))
        return Round(type(message).__name__, self._summed, int(message.nbytes), self._summed * masked, seconds, macs)
