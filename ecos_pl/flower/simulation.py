"""Each Flower simulation in a process of its own, bounded in time, stopped with its Ray processes.

Why: `flwr.simulation.run_simulation` starts Ray and Flower's in-memory SuperLink inside the calling process and
leaves process-wide state behind (Ray's driver state, Flower's `TaskIdentity`, a non-daemon ServerApp thread that
polls until every answer comes). A later simulation in the same process inherits that state, and a ServerApp that
waits for an answer that never comes keeps the process alive after Ctrl-C. `simulate` runs one simulation in a
*forked* child that leads its own process group (the apps reach it as they are, nothing is pickled; the caller never
starts Ray itself, so there is no Ray state to inherit, and each child's Flower state dies with it); the whole group
(Ray's GCS, raylet and workers included) is killed when the simulation outlives `timeout` or the caller gets
SIGINT/SIGTERM, and the child ends itself with `os._exit` so no leftover thread can keep it alive. Log records
travel back to the caller's `logging` (pytest's caplog sees them); an exception of the ServerApp comes back as the
same sentence (an `ECOSInputError` stays one).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import math
import multiprocessing as mp
import os
import signal
import threading
import time

from ecos_pl.protocol.errors import ECOSInputError

log = logging.getLogger(__name__)

#: seconds a whole simulation may take before it is stopped (every round inside has its own, shorter timeout)
DEFAULT_TIMEOUT = 600.0
#: seconds between SIGTERM and SIGKILL when the simulation's process group is stopped
KILL_GRACE = 5.0
#: seconds Flower's own teardown (workers joined, Ray shut down) may take once the ServerApp has ended
SHUTDOWN_GRACE = 10.0


class SimulationError(RuntimeError):
    """A Flower simulation that failed, timed out or was stopped; the message is one sentence."""


def simulate(server_app, client_app, num_supernodes: int, backend_config: dict | None = None, *,
             timeout: float = DEFAULT_TIMEOUT) -> None:
    """`flwr.simulation.run_simulation(server_app, client_app, num_supernodes, backend_config)` in a fresh process.

    Raises `ECOSInputError` (the ServerApp's own sentence) or `SimulationError` (anything else, a timeout
    included); SIGINT/SIGTERM in the caller stop the simulation's whole process group before they take effect.
    """
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise ECOSInputError(f"timeout must be a finite number of seconds > 0, got {timeout!r}.")
    ctx = mp.get_context("fork")
    logs, result = ctx.Queue(), ctx.SimpleQueue()
    logs.cancel_join_thread()  # a child killed mid-write must not make this process wait for the queue at exit
    child = ctx.Process(target=_child, name="flower-simulation", daemon=False, args=(
        (server_app, client_app, int(num_supernodes), backend_config), logs, result,
        logging.getLogger().getEffectiveLevel(), os.getpid()))
    relay = threading.Thread(target=_relay_logs, args=(logs,), name="flower-simulation-logs", daemon=True)
    restore = _stop_child_on_signals(child)
    start = time.monotonic()
    try:
        child.start()
        relay.start()
        child.join(timeout)
        if child.is_alive():
            _kill_group(child)
            raise SimulationError(f"the Flower simulation did not finish within its timeout of {timeout:g} s and was "
                                  "stopped with its Ray processes (a round's own timeout should have ended it first).")
    finally:
        with _signals_held():  # a second SIGTERM (`uv run` forwards one) must not cut the stop short of its SIGKILL
            _kill_group(child)  # a stop, a timeout, or what a finished simulation left running in its group
        restore()
        logs.put(None)  # ends the relay once the child's last records are in
        relay.join(timeout=5)
    silent = ("SimulationError", f"the Flower simulation process ended with exit code {child.exitcode} and no result")
    outcome = result.get() if not result.empty() else silent
    if outcome is not None:
        kind, sentence = outcome
        raise (ECOSInputError if kind == "ECOSInputError" else SimulationError)(sentence)
    log.debug("Flower simulation finished in %.1f s", time.monotonic() - start)


def _child(apps: tuple, logs, result, level: int, parent: int) -> None:
    """The simulation's process: its own group, logs to the queue, one outcome as soon as the ServerApp ends, then
    `os._exit` (a ClientApp still busy on a late answer must not keep the process: Flower joins its workers)."""
    os.setsid()
    _detach_wandb()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: os._exit(128 + signum))
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    root = logging.getLogger()
    root.handlers[:] = [logging.handlers.QueueHandler(logs)]
    root.setLevel(level)
    outcome: tuple[str, str] | None = ("SimulationError", "the Flower simulation ended before its ServerApp did")
    try:
        from flwr.serverapp import ServerApp
        from flwr.simulation import run_simulation

        server_app, client_app, num_supernodes, backend_config = apps
        served, errors = threading.Event(), []
        watched = ServerApp()

        @watched.main()
        def main(grid, context) -> None:
            try:
                server_app(grid, context)
            except BaseException as err:
                errors.append(err)
                raise
            finally:
                served.set()

        runner = threading.Thread(target=run_simulation, name="flower-run-simulation", daemon=True, kwargs={
            "server_app": watched, "client_app": client_app, "num_supernodes": num_supernodes,
            "backend_config": backend_config})
        runner.start()
        while runner.is_alive() and not served.wait(0.5):
            pass
        if served.is_set():
            runner.join(SHUTDOWN_GRACE)  # Flower's own teardown (Ray shut down) when the ClientApps are idle
            outcome = _outcome(errors[0]) if errors else None
    except BaseException as err:  # noqa: BLE001 - the sentence travels to the caller
        outcome = _outcome(err)
    finally:
        result.put(outcome)
        logs.close()
        logs.join_thread()
        os._exit(0 if outcome is None else 1)


def _detach_wandb() -> None:
    """Drop the W&B import hooks a forked child inherits from the caller's run (train.py's default logger).

    They report each new import (Ray's, when the simulation starts its backend) through the caller's W&B connection,
    whose event loop does not run in the child, so `import ray` failed there ("Cannot use run() inside async loop")
    and the simulation crashed. The child logs nothing to W&B; the caller's run is untouched."""
    import sys

    hooks = sys.modules.get("wandb.sdk.lib.import_hooks")
    if hooks is not None:
        hooks.unregister_all_post_import_hooks()


def _outcome(err: BaseException) -> tuple[str, str]:
    """(kind, sentence) of an exception, an `ECOSInputError` kept as one (also behind Flower's wrapper)."""
    for e in (err, err.__cause__):
        if isinstance(e, ECOSInputError):
            return "ECOSInputError", str(e)
    return "SimulationError", f"the Flower simulation failed: {type(err).__name__}: {err}"


def _exit_with_parent(parent: int) -> None:
    """Ends the simulation's process group if the caller dies without stopping it (a SIGKILL, say)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.killpg(0, signal.SIGKILL)


def _relay_logs(logs) -> None:
    """The child's log records, handed to this process's loggers of the same names (until a None)."""
    while True:
        try:
            record = logs.get()
        except (EOFError, OSError):
            return
        if record is None:
            return
        if record.name.split(".")[0] in ("flwr", "ray"):
            continue  # printed by the child's own handlers already
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)


def _kill_group(child) -> None:
    """SIGTERM to the child's process group (Ray's processes too), SIGKILL after `KILL_GRACE` seconds."""
    if child.pid is None or not _group_alive(child.pid):
        return
    for sig, wait in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, KILL_GRACE)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # the child has not led its group yet
            child.kill()
        child.join(wait)
        if not _group_alive(child.pid):
            break


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _signals_held():
    """SIGTERM and SIGINT arriving inside are held and take effect on leaving (SystemExit(143), KeyboardInterrupt)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: held.append(signum)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if signal.SIGINT in held:
        raise KeyboardInterrupt
    if held:
        raise SystemExit(128 + held[0])


def _stop_child_on_signals(child):
    """Until the returned function is called: SIGTERM raises SystemExit(143) here (SIGINT is KeyboardInterrupt
    already), so `simulate` stops the child's group before the signal ends this process."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)
    return lambda: signal.signal(signal.SIGTERM, previous)
