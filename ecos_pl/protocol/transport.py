"""How a run's messages reach its clients (`transport=` in train.py): one strategy, any transport.

    transport.run(strategy, clients, **inputs)   # the strategy's result (a `Selection`, labels, ...)

`clients` are the run's `ECOSClient`s (None: the strategy asks nobody); every transport runs the
same strategy with the same driver (`ecos_pl.protocol.driver`), so the same seed gives the same
proxy set on each:

    inprocess   each message handed to each client in this process (`InProcessExchange`)
    files       each message written to a folder as the programs' message file, read back by each
                client, whose answer is written and read back the same way (`FilesExchange`:
                the bytes `ecos-cloud` and `ecos-client` exchange)
    flower      Flower's simulation engine (`ecos_pl.flower.transport`, the `flower` extra)
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ecos_pl.atomic import write_atomic
from ecos_pl.protocol import driver
from ecos_pl.protocol.errors import ECOSInputError
from ecos_pl.protocol.exchange import InProcessExchange
from ecos_pl.protocol.messages import KIND_NAMES, parse_message
from ecos_pl.protocol.secure_sum import SecureSumExchange


class Transport(ABC):
    """Carries a strategy's rounds to the clients."""

    name: ClassVar[str]

    def run(self, strategy: driver.Strategy, clients: list | None, **inputs):
        """The strategy's result over this transport (`clients` None: over none, the strategy must ask nobody)."""
        message, state = strategy.configure(**inputs)
        if message is None or clients is None:  # a strategy that asks nobody: nothing to carry
            return driver.resume(strategy, None, message, state)
        return self.resume(strategy, list(clients), message, state)

    @abstractmethod
    def resume(self, strategy: driver.Strategy, clients: list, message, state):
        """`driver.resume` from the first message over this transport's exchange with `clients`."""

    def with_secure_sum(self) -> "Transport":
        """This transport with the centroids round summed securely (`client.noise=distributed`: a device's share
        alone is not private); one that has no secure sum says so."""
        raise ECOSInputError(f"client.noise=distributed needs a secure sum, which transport={self.name} has not; use "
                             "transport=inprocess (an exact sum standing for SecAgg+) or the Flower apps with secagg.")


@dataclass
class InProcess(Transport):
    """The clients in this process: each message is handed to each client's `handle`; with `secure_sum` the
    centroids round hands the cloud only the exact sum of the devices' shares (`SecureSumExchange`, SecAgg+'s result)."""

    secure_sum: bool = False
    name: ClassVar[str] = "inprocess"

    def resume(self, strategy, clients, message, state):
        return driver.resume(strategy, (SecureSumExchange if self.secure_sum else InProcessExchange)(clients), message, state)

    def with_secure_sum(self) -> "InProcess":
        return InProcess(secure_sum=True)


@dataclass
class FilesExchange(InProcessExchange):
    """Each message as the programs' file in `folder` (round-<k>/<kind>.ecos), parsed back by every client, whose
    answer is written as client-<i>/<kind>.ecos and parsed back by the cloud: only the files' bytes cross."""

    folder: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.folder is None:
            raise ECOSInputError("folder is None; a FilesExchange needs the folder its message files go to.")
        self.folder = Path(self.folder).expanduser()

    def _deliver(self, message):
        if not hasattr(message, "to_bytes"):
            raise ECOSInputError(f"transport=files carries the programs' messages, not a {type(message).__name__} "
                                 "(an upload of every client feature has no message file); use transport=inprocess.")
        round_dir = self.folder / f"round-{len(self.rounds)}"
        down = _write(round_dir / _file_name(message), message)
        paths, seconds, macs = [], 0.0, 0
        for i in range(len(self.clients)):
            answer, s, m = self.ask(i, parse_message(down.read_bytes()))
            paths.append(_write(round_dir / f"client-{i}" / _file_name(answer), answer))
            seconds, macs = seconds + s, macs + m
        return [parse_message(path.read_bytes()) for path in paths], seconds, macs


def _file_name(message) -> str:
    return KIND_NAMES[message.KIND].replace(" ", "_") + ".ecos"


def _write(path: Path, message) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = message.to_bytes()
    return write_atomic(path, lambda f: f.write(data))


@dataclass
class Files(Transport):
    """The programs' message files in `folder`/<strategy's name>/ (`folder` None: a temporary folder, removed after
    the strategy's last round)."""

    folder: str | None = None
    name: ClassVar[str] = "files"

    def resume(self, strategy, clients, message, state):
        name = getattr(strategy, "name", type(strategy).__name__)
        if self.folder is not None:
            return driver.resume(strategy, FilesExchange(clients, Path(self.folder) / name), message, state)
        with tempfile.TemporaryDirectory(prefix="ecos-messages-") as folder:
            return driver.resume(strategy, FilesExchange(clients, Path(folder) / name), message, state)
