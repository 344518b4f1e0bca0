"""A run stopped by SIGTERM or SIGINT ends with a non-zero exit code and one line saying where it stopped.

Lightning turns a SIGTERM inside `fit` into `SIGTERMException`, a `SystemExit` without a code, so
a killed run used to exit 0 with no results; a Ctrl-C inside `fit` became `sys.exit(1)` with no word
of where. `stop_on_signals` installs one handler for both signals (Lightning composes it with its
own: `trainer.received_sigterm` is still set) that records the signal and raises `RunInterrupted`
where the run is; Lightning's loops tear down on it, and atomic writes leave nothing half-written.
The exit code is the shell's, 128 + the signal (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import contextlib
import signal
import sys

#: what the run is doing, for the line a signal prints (`stage`)
_stage = "starting"


class RunInterrupted(BaseException):
    """Raised by the signal handler: a BaseException, so that no `except Exception` of the run swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stage(text: str) -> None:
    """Say what the run does now ("loading the data", "training the teacher ...")."""
    global _stage
    _stage = text


@contextlib.contextmanager
def stop_on_signals(prog: str, *, signals=(signal.SIGTERM, signal.SIGINT)):
    """Within: SIGTERM/SIGINT stop the run; on the way out one line on stderr and `SystemExit(128 + signal)`."""
    received: list[int] = []

    def handler(signum, frame):
        if received:  # a second signal while stopping: let the first one finish the teardown
            return
        received.append(signum)
        raise RunInterrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    stage("starting")
    try:
        yield
    except (RunInterrupted, KeyboardInterrupt, SystemExit) as err:
        signum = received[0] if received else _signal_of(err)
        if signum is None:
            raise
        name = signal.Signals(signum).name
        print(f"{prog}: stopped by {name} while {_stage}; no results were written.", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum) from None
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _signal_of(err: BaseException) -> int | None:
    """The signal behind an exit that no handler of ours saw (Lightning's own SIGTERMException, a bare Ctrl-C)."""
    if isinstance(err, KeyboardInterrupt):
        return signal.SIGINT
    if isinstance(err, SystemExit) and type(err).__name__ == "SIGTERMException":
        return signal.SIGTERM
    return None
