"""The Flower apps: a ClientApp answering ECOS messages with its `ECOSClient`, a ServerApp running the sampler's driver.

    client_app(load_client)   load_client(context) -> ECOSClient, called once per client and process; it answers
                              `query.ecos` (plain answers) and `train` under `secaggplus_mod` (SecAgg+)
    server_app(pool_features, sampler, budget, seed, out, ...)   writes the proxy set to `out` (npz + json)
    simulation_apps(pipeline, out)   both, the clients being `pipeline.clients()` chosen by partition id
    serverapp, clientapp      the app `flwr run .` runs ([tool.flwr.app.components]): both build train.py's
                              pipeline from the run config (`ecos_pl.flower.run_config`)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Error, Message
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.serverapp import Grid, ServerApp

from ecos_pl.flower.exchange import DEFAULT_TIMEOUT, FlowerExchange, encode, round_of
from ecos_pl.flower.secagg import SecAggExchange, check_no_client_cap, secagg_reply
from ecos_pl.protocol import driver
from ecos_pl.protocol.device import IMAGES, PHI, DeviceRefusal
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.messages import parse_message

log = logging.getLogger(__name__)
#: the error code of a device's refusal (Flower's own codes are small positive numbers)
REFUSED = 4030

PARTITION_ID = "partition-id"  # what the simulation engine puts in each node's node_config
CLIENT_INDEX = "client-index"  # the same, for a demo SuperNode answering as a shard (--node-config "client-index=0")


def client_index(context: Context) -> int:
    """This node's client index: its partition id (simulation), its configured `client-index` (a demo SuperNode), else
    its node id (a device with its own images: the cloud orders the answers by it)."""
    config = context.node_config
    for key in (PARTITION_ID, CLIENT_INDEX):
        if key in config:
            return int(config[key])
    return int(context.node_id)


def _refuse(index: int, err: DeviceRefusal) -> None:
    """The device's one logged sentence; the cloud sees an error reply (a refusal), never counts."""
    log.warning("device %d: %s", index, err)


def client_app(load_client) -> ClientApp:
    """A ClientApp whose client is `load_client(context)` (an `ECOSClient`), loaded once per client index.

    A `DeviceRefusal` (the run config asks for weaker privacy than the device's node config allows) is logged on
    the device in one sentence and answered as an error message: the cloud drops it as a refusal."""
    app = ClientApp()
    clients: dict[int, object] = {}

    def client(context: Context):
        index = client_index(context)
        if index not in clients:
            clients[index] = load_client(context)
        return index, clients[index]

    @app.query("ecos")
    def answer(message: Message, context: Context) -> Message:
        try:
            index, me = client(context)
            request = parse_message(message.content.config_records["ecos"]["message"])
            return Message(encode(me.handle(request), client=index, round=round_of(message.content)), reply_to=message)
        except DeviceRefusal as err:
            _refuse(client_index(context), err)
            return Message(error=Error(code=REFUSED, reason=f"refused: {err}"), reply_to=message)

    @app.train(mods=[secaggplus_mod])  # only SecAgg+'s stage 2 reaches this; the mod masks what it returns
    def answer_masked(message: Message, context: Context) -> Message:
        try:
            index, me = client(context)
        except DeviceRefusal as err:
            _refuse(client_index(context), err)
            raise  # SecAgg+ goes on without this node (its masks are removed with the others' shares)
        return secagg_reply(message, me, index)

    return app


def write_proxy_set(selection, out, **extra) -> dict:
    """`out`/proxy_set.npz (indices) and `out`/proxy_set.json (sha1, counts, bytes, `extra`); the json's dict."""
    from ecos_pl.pipeline import sha1_of

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "proxy_set.npz", indices=selection.indices)
    summary = {"proxy_set_sha1": sha1_of(selection.indices), "n_selected": selection.n_selected,
               "n_centroids": selection.n_centroids, "bytes_down": selection.bytes_down, "bytes_up": selection.bytes_up,
               "epsilon": selection.epsilon, **extra}
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


def serve(grid: Grid, context: Context, pool_features, sampler, budget, seed, out, *, n_clients: int,
          min_answers: int | None = None, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float = 60.0,
          secagg: dict | None = None) -> dict:
    """The cloud's run: wait for `n_clients` nodes, the sampler run by the driver (`ecos_pl.protocol.driver`, as every
    transport runs it) through a `FlowerExchange` (or, with `secagg`,
    SecAggExchange's keywords, a `SecAggExchange`), write the proxy set; its summary.

    `min_answers` (default: all `n_clients`) is the fewest answers the round goes on with."""
    fewest = n_clients if min_answers is None else min_answers
    if secagg is not None:
        check_no_client_cap(sampler)  # before anything is sent
    nodes = wait_for_nodes(grid, n_clients, connect_timeout)
    start = time.perf_counter()
    if secagg is None:
        exchange = FlowerExchange(grid, nodes, min_answers=fewest, timeout=timeout)
    else:
        exchange = SecAggExchange(grid, context, nodes, min_answers=fewest, timeout=timeout, **secagg)
    selection = driver.run(sampler, exchange, pool_features=pool_features, budget=budget, seed=seed)
    answered = exchange.rounds[-1].n_clients
    epsilons = exchange.client_epsilons[-1] if secagg is not None else None
    summary = write_proxy_set(selection, out, n_clients=answered, secagg=secagg is not None,
                              round_seconds=round(time.perf_counter() - start, 3),
                              client_epsilons=None if epsilons is None else {str(k): v for k, v in sorted(epsilons.items())})
    log.info("ECOS over Flower: %d clients answered%s; proxy set %s (%d samples)", answered,
             " (summed by SecAgg+)" if secagg is not None else "", summary["proxy_set_sha1"], summary["n_selected"])
    return summary


def server_app(pool_features, sampler, budget, seed, out, **settings) -> ServerApp:
    """A ServerApp running `serve` with these arguments (`settings`: serve's keywords)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, context, pool_features, sampler, budget, seed, out, **settings)

    return app


def simulation_apps(pipeline, out, **server) -> tuple[ServerApp, ClientApp]:
    """(ServerApp, ClientApp) for `run_simulation(..., num_supernodes=pipeline.n_clients)`: the cloud holds the
    pipeline's pool features, node i answers as `pipeline.clients()[i]` (the shards and seeds of `train.py clients=N`)."""
    features = pipeline.pool_features
    clients = pipeline.clients()  # φ of the client split computed once, here; each node keeps only its own

    def load(context: Context):
        return clients[client_index(context)]

    return (server_app(features, pipeline.sampler, pipeline.sampler_budget, pipeline.seed, out, n_clients=pipeline.n_clients, **server),
            client_app(load))


# ---------------------------------------------------------------------- the app `flwr run .` runs

serverapp = ServerApp()


@serverapp.main()
def _serve_run_config(grid: Grid, context: Context) -> None:
    """The cloud: train.py's pipeline from the run config; the pool's features only (the clients' data stay theirs)."""
    from ecos_pl.flower.run_config import pipeline, run_settings

    _show_ecos_log()
    settings = run_settings(context.run_config)
    p = pipeline(context.run_config)
    serve(grid, context, p.pool_features, p.sampler, p.sampler_budget, p.seed,
          settings.out, n_clients=settings.clients, min_answers=settings.min_answers, timeout=settings.timeout,
          connect_timeout=settings.connect_timeout, secagg=settings.secagg)


def _show_ecos_log() -> None:
    """ecos_pl's INFO lines (the round's summary, SecAgg+'s "only masked vectors") in the ServerApp's log."""
    logger = logging.getLogger("ecos_pl")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def device_client(context: Context, shard_features=None):
    """A device of the deployed app: what is the device's (its images, its privacy floor, its noise seed) from its own
    node config (`ecos_pl.protocol.device.DeviceConfig`); from the cloud's run config only the privacy asked for,
    which the device refuses (`DeviceRefusal`) when it is weaker than its floor, and, for a demo SuperNode without
    images (`client-index=i`), shard i of the run config's shared data (`shard_features(index)`, default: train.py's).
    The noise comes from the OS's CSPRNG unless the node config sets `seed`: knowing the run config gives nothing."""
    from ecos_pl.flower.run_config import asked_privacy, run_settings
    from ecos_pl.protocol.device import DeviceConfig
    from ecos_pl.protocol.parties import ECOSClient

    device = DeviceConfig.from_node_config(context.node_config)
    fleet = asked_privacy(context.run_config)
    asked = device.floor.check(fleet.mechanism_object())
    tag = None
    if device.images is not None:
        features, tag = read_device_features(device.images, device.phi)
    else:
        features = (shard_features or _run_config_shard)(context.run_config, device.index)
    # distributed noise: the share that makes the sum of any `min-answers` devices carry (ε, δ) (SecAgg+'s threshold)
    return ECOSClient(features, epsilon=asked.epsilon, mechanism=asked.mechanism, delta=asked.delta, seed=device.seed,
                      phi_tag=tag, noise=fleet.noise, unit=fleet.unit, clip_norm=fleet.clip_norm,
                      min_answers=run_settings(context.run_config).min_answers)


def read_device_features(images: Path, phi_path: Path) -> tuple[np.ndarray, bytes]:
    """(φ of every image under the device's own folder, rows L2-normalised; φ's tag), φ being the cloud's φ file read
    as data. The device refuses centroids whose tag is not this φ's (`ECOSClient(phi_tag=...)`). Here, not in protocol/: reading files
    and φ is the application's; the protocol gets arrays."""
    from ecos_pl.data.images import decode_images, list_images
    from ecos_pl.phi_file import load_phi_file
    from ecos_pl.protocol.features import unit_rows
    from ecos_pl.protocol.messages import phi_tag

    if not Path(phi_path).is_file():
        raise ECOSInputError(f"{PHI} {phi_path} in the node config is not a file.")
    phi, image_size = load_phi_file(phi_path, PHI)
    root = Path(images)
    if not root.is_dir():
        raise ECOSInputError(f"{IMAGES} {root} in the node config is not a folder.")
    decoded, _ = decode_images(root, list_images(root, IMAGES), image_size, IMAGES)
    return unit_rows(phi.transform(decoded), f"{IMAGES} {root} features"), phi_tag(phi.fingerprint())


def _run_config_shard(run_config, index: int):
    """A demo device's features: shard `index` of train.py's client split under the run config (shared demo data)."""
    from ecos_pl.flower.run_config import pipeline

    p = pipeline(run_config)
    if index >= p.n_clients:
        raise ECOSInputError(f"client-index={index} is not below clients={p.n_clients}.")
    return p.client_features[p.shards[index]]


clientapp = client_app(device_client)
