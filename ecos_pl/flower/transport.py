"""`transport=flower`: a run's rounds carried by Flower's simulation engine (the `flower` extra).

The strategy's `configure` runs here; if it asks the clients anything, a ServerApp resumes the same
driver (`ecos_pl.protocol.driver.resume`) over a `FlowerExchange`, and node i answers as the run's
client i (a ClientApp over `ECOSClient.handle`). The simulation runs in a process of its own
(`simulate`, bounded by `timeout`); the strategy's result comes back as files of that process, in formats read
without unpickling (a selection as the store's checksummed artifact, labels as an array and JSON).
With `secure_sum` (`client.noise=distributed`) the centroids round is summed by SecAgg+ (`SecAggExchange`): the
cloud sees only the sum of the devices' shares, the same sum `transport=inprocess` computes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ecos_pl.protocol import driver
from ecos_pl.protocol.samplers import Selection
from ecos_pl.protocol.store import load_selection, save_selection
from ecos_pl.protocol.transport import Transport


@dataclass
class FlowerSimulation(Transport):
    """Flower's simulation engine with `len(clients)` SuperNodes; `num_cpus`: Ray's CPUs for the whole simulation
    (None: every CPU); `timeout`: seconds the whole simulation may take; `round_timeout`: seconds each round (each
    SecAgg+ stage) waits; `secure_sum`: the scores summed by SecAgg+ (set by `with_secure_sum`)."""

    num_cpus: int | None = None
    timeout: float = 600.0
    round_timeout: float = 120.0
    connect_timeout: float = 60.0
    secure_sum: bool = False
    name: ClassVar[str] = "flower"

    def with_secure_sum(self) -> "FlowerSimulation":
        return dataclasses.replace(self, secure_sum=True)

    def backend_config(self) -> dict:
        init = {"include_dashboard": False, "log_to_driver": False}
        if self.num_cpus is not None:
            init["num_cpus"] = int(self.num_cpus)
        return {"init_args": init, "client_resources": {"num_cpus": 1, "num_gpus": 0.0}}

    def resume(self, strategy, clients, message, state):
        from flwr.serverapp import ServerApp

        from ecos_pl.flower.apps import client_app, client_index, wait_for_nodes
        from ecos_pl.flower.exchange import FlowerExchange
        from ecos_pl.flower.secagg import SecAggExchange
        from ecos_pl.flower.simulation import SimulationError, simulate

        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        n = len(clients)
        server = ServerApp()
        with tempfile.TemporaryDirectory(prefix="ecos-flower-") as folder:
            out = Path(folder)

            @server.main()
            def main(grid, context) -> None:
                nodes = wait_for_nodes(grid, n, self.connect_timeout)
                if self.secure_sum:  # SecAgg+ needs two clients or more, and says so
                    exchange = SecAggExchange(grid, context, nodes, min_answers=n, timeout=self.round_timeout)
                else:
                    exchange = FlowerExchange(grid, nodes, min_answers=n, timeout=self.round_timeout)
                write_result(driver.resume(strategy, exchange, message, state), out)

            simulate(server, client_app(lambda context: clients[client_index(context)]), n, self.backend_config(),
                     timeout=self.timeout)
            result = read_result(out)
            if result is None:
                raise SimulationError("the Flower simulation ended without the strategy's result.")
            return result


def write_result(result, folder: Path) -> None:
    """A strategy's result as files: a `Selection` as the store's artifact; labels `(targets, stats)` as .npy and JSON."""
    if isinstance(result, Selection):
        save_selection(result, folder / "selection.npz")
    elif isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], np.ndarray) and isinstance(result[1], dict):
        np.save(folder / "targets.npy", result[0], allow_pickle=False)
        (folder / "stats.json").write_text(json.dumps(result[1], default=lambda v: v.item()))
    else:
        raise TypeError(f"transport=flower carries a Selection or (targets, stats) back, not {type(result).__name__}.")


def read_result(folder: Path):
    """What `write_result` wrote (None: nothing); no pickle is read."""
    if (folder / "selection.npz").is_file():
        return load_selection(folder / "selection.npz")[0]
    if (folder / "stats.json").is_file():
        return np.load(folder / "targets.npy", allow_pickle=False), json.loads((folder / "stats.json").read_text())
    return None
