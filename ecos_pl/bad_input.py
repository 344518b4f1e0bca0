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
    except errors as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_INPUT) from None
