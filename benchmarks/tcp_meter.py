"""A byte-counting TCP relay: what travels between the SuperNodes (the devices) and the SuperLink (the cloud).

    python benchmarks/tcp_meter.py LISTEN_PORT TARGET_PORT OUT.json

Listens on 127.0.0.1:LISTEN_PORT, forwards every connection to 127.0.0.1:TARGET_PORT unchanged, and on
SIGTERM/SIGINT writes {"up": bytes devices → cloud, "down": bytes cloud → devices, "connections": n} to
OUT.json. TCP payload bytes (HTTP and protobuf included; TCP/IP headers not). A measuring tap for
benchmarks/flower_local_deployment.sh, not a transport: Flower's own HTTP link runs through it as is.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

COUNTS = {"up": 0, "down": 0, "connections": 0}


async def _pipe(reader, writer, key: str) -> None:
    try:
        while data := await reader.read(65536):
            COUNTS[key] += len(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def _relay(target_port: int, client_reader, client_writer) -> None:
    COUNTS["connections"] += 1
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
    except ConnectionError:
        client_writer.close()
        return
    await asyncio.gather(_pipe(client_reader, server_writer, "up"), _pipe(server_reader, client_writer, "down"))


async def main(listen_port: int, target_port: int, out: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(lambda r, w: _relay(target_port, r, w), "127.0.0.1", listen_port)
    await stop.wait()
    with open(out, "w") as f:  # before closing: open connections would hold the close up
        json.dump(COUNTS, f)
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
