"""`transport=flower`: a run's rounds carried by Flower's simulation engine (the `flower` extra).

The strategy's `configure` runs here; if it asks the clients anything, a ServerApp resumes the same
driver (`ecos_pl.protocol.driver.resume`) over a `FlowerExchange`, and node i answers as the run's
client i (a ClientApp over `ECOSClient.handle`). The simulation runs in a process of its own
(`simulate`, bounded by `timeout`); the strategy's result comes back as a file of that process.
With `secure_sum` (`client.noise=distributed`) the centroids round is summed by SecAgg+ (`SecAggExchange`): the
cloud sees only the sum of the devices' shares, the same sum `transport=inprocess` computes exactly.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ecos_pl.protocol import driver
from ecos_pl.protocol.transport import Transport

#: the result file the simulation's ServerApp writes (inside a temporary folder of this process)
RESULT = "result.pickle"


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
            out = Path(folder) / RESULT

            @server.main()
            def main(grid, context) -> None:
                nodes = wait_for_nodes(grid, n, self.connect_timeout)
                if self.secure_sum:  # SecAgg+ needs two clients or more, and says so
                    exchange = SecAggExchange(grid, context, nodes, min_answers=n, timeout=self.round_timeout)
                else:
                    exchange = FlowerExchange(grid, nodes, min_answers=n, timeout=self.round_timeout)
                result = driver.resume(strategy, exchange, message, state)
                out.write_bytes(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))

            simulate(server, client_app(lambda context: clients[client_index(context)]), n, self.backend_config(),
                     timeout=self.timeout)
            if not out.is_file():
                raise SimulationError("the Flower simulation ended without the strategy's result.")
            return pickle.loads(out.read_bytes())  # written by this run's own simulation process
