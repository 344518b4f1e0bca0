"""ECOS over Flower (flwr >= 1.42, the `flower` extra): the cloud as a ServerApp, each client as a ClientApp.

    FlowerExchange(grid, ...)       the ServerApp's `Exchange`: ECOS messages as bytes inside Flower `Message`s
    client_app(load_client)         a ClientApp answering with `ECOSClient.handle` (its client from its context)
    SecAggExchange(grid, context)   the same round with the scores summed by SecAgg+ (one summed answer)
    server_app(pool_features, ...)  a ServerApp running `ECOSSampler.sample` through either exchange
    simulation_apps(pipeline, ...)  both, for `simulate`, with `ProtocolPipeline`'s shards
    simulate(server, client, n)     Flower's simulation in a fresh process of its own, bounded by a timeout
    apps.serverapp, apps.clientapp  the app `flwr run .` runs (pyproject.toml's [tool.flwr.app])

Nothing here is imported by the rest of ecos_pl; importing it without flwr installed fails with
`ModuleNotFoundError` naming the extra. docs/flower.md.
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ModuleNotFoundError as err:  # pragma: no cover - depends on the install
    raise ModuleNotFoundError(
        "ecos_pl.flower needs flwr (Python >= 3.11): uv sync --extra flower", name=err.name
    ) from err

from ecos_pl.flower.apps import client_app, server_app, simulation_apps, write_proxy_set
from ecos_pl.flower.exchange import ANSWER_TYPES, MESSAGE_TYPE, RECORD, FlowerExchange, decode, encode
from ecos_pl.flower.secagg import SecAggExchange, secagg_counts
from ecos_pl.flower.simulation import SimulationError, simulate

__all__ = [
    "ANSWER_TYPES", "MESSAGE_TYPE", "RECORD", "FlowerExchange", "SecAggExchange", "client_app", "decode", "encode",
    "SimulationError", "secagg_counts", "server_app", "simulate", "simulation_apps", "write_proxy_set",
]
