"""A bad input ends a program with one sentence on stderr and exit code 2, never a traceback.

`train.py` and the two programs share this. `HYDRA_FULL_ERROR=1` (Hydra's own switch)
re-raises instead, for a developer who wants the stack.
"""

from __future__ import annotations

import contextlib
import os
import sys

#: exit code of every bad input (argparse uses it too)
EXIT_BAD_INPUT = 2


def one_line(text) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def exit_on_bad_input(prog: str, errors: tuple[type[BaseException], ...]):
    """Turn `errors` raised inside into `prog: error: <sentence>` and `SystemExit(2)`."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - only bad inputs are turned into a sentence; the rest re-raises
        bad = _bad_input(err, errors)
        if bad is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {one_line(bad)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _bad_input(err: BaseException, errors: tuple[type[BaseException], ...]) -> BaseException | None:
    """`err`, or the bad input it wraps: Hydra's instantiate re-raises a constructor's error as
    "Error in call to target ...", with the constructor's own sentence as its cause."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, errors):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
