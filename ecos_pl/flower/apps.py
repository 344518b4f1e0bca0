"""The Flower apps: a ClientApp answering ECOS messages with its `ECOSClient`, a ServerApp running the sampler.

    client_app(load_client)   load_client(context) -> ECOSClient, called once per client (the ClientApp
                              process keeps it, so φ of its shard is computed once)
    server_app(pool_features, sampler, budget, seed, out)   writes the proxy set to `out` (npz + json)
    simulation_apps(pipeline, out)   both, the clients being `pipeline.clients()` chosen by partition id
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from ecos_pl.flower.exchange import FlowerExchange, encode
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import parse_message

log = logging.getLogger(__name__)

PARTITION_ID = "partition-id"  # what the simulation engine puts in each node's node_config
CLIENT_INDEX = "client-index"  # the same, for a deployed SuperNode (--node-config "client-index=0")


def client_index(context: Context) -> int:
    """This node's client index: its partition id (simulation) or its configured `client-index` (deployment)."""
    config = context.node_config
    for key in (PARTITION_ID, CLIENT_INDEX):
        if key in config:
            return int(config[key])
    raise ECOSInputError(f"the node's config has neither '{PARTITION_ID}' nor '{CLIENT_INDEX}'; "
                         f"start the SuperNode with --node-config \"{CLIENT_INDEX}=<i>\".")


def client_app(load_client) -> ClientApp:
    """A ClientApp whose client is `load_client(context)` (an `ECOSClient`), loaded once per client index."""
    app = ClientApp()
    clients: dict[int, object] = {}

    @app.query("ecos")
    def answer(message: Message, context: Context) -> Message:
        index = client_index(context)
        if index not in clients:
            clients[index] = load_client(context)
        request = parse_message(message.content.config_records["ecos"]["message"])
        reply = clients[index].handle(request)
        return Message(encode(reply, client=index), reply_to=message)

    return app


def write_proxy_set(selection, out) -> dict:
    """`out`/proxy_set.npz (indices) and `out`/proxy_set.json (sha1, counts, bytes); the json's dict."""
    from ecos_pl.pipeline import sha1_of

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "proxy_set.npz", indices=selection.indices)
    summary = {"proxy_set_sha1": sha1_of(selection.indices), "n_selected": selection.n_selected,
               "n_centroids": selection.n_centroids, "bytes_down": selection.bytes_down, "bytes_up": selection.bytes_up,
               "epsilon": selection.epsilon}
    (out / "proxy_set.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def wait_for_nodes(grid: Grid, n: int, timeout: float) -> list[int]:
    """The grid's node ids once at least `n` are connected; `ECOSInputError` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= n:
            return nodes
        if time.monotonic() > deadline:
            raise ECOSInputError(f"only {len(nodes)} of {n} Flower nodes connected within {timeout} s.")
        time.sleep(0.2)


def server_app(pool_features, sampler, budget, seed, out, *, n_clients: int, min_answers: int | None = None,
               timeout: float | None = 120.0, connect_timeout: float = 60.0) -> ServerApp:
    """A ServerApp: waits for `n_clients` nodes, runs `sampler.sample` through a `FlowerExchange`, writes the proxy set.

    `min_answers` (default: all `n_clients`) is the fewest answers the round goes on with."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        nodes = wait_for_nodes(grid, n_clients, connect_timeout)
        exchange = FlowerExchange(grid, nodes, min_answers=n_clients if min_answers is None else min_answers,
                                  timeout=timeout)
        selection = sampler.sample(pool_features, exchange, budget, seed)
        summary = write_proxy_set(selection, out)
        log.info("ECOS over Flower: %d clients answered; proxy set %s (%d samples)", exchange.rounds[-1].n_clients,
                 summary["proxy_set_sha1"], summary["n_selected"])

    return app


def simulation_apps(pipeline, out, **server) -> tuple[ServerApp, ClientApp]:
    """(ServerApp, ClientApp) for `run_simulation(..., num_supernodes=pipeline.n_clients)`: the cloud holds the
    pipeline's pool features, node i answers as `pipeline.clients()[i]` (the shards and seeds of `train.py clients=N`)."""
    features = pipeline.pool_features
    clients = pipeline.clients()  # φ of the client split computed once, here; each node keeps only its own

    def load(context: Context):
        return clients[client_index(context)]

    budget = pipeline.budget if pipeline.sampler.uses_budget else None
    return (server_app(features, pipeline.sampler, budget, pipeline.seed, out, n_clients=pipeline.n_clients, **server),
            client_app(load))
