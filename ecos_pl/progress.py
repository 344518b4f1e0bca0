"""Progress of the long stages outside Lightning's loops (φ fitting, the pool's features, the selection) as log lines.

Rich's bars draw nothing when output is not a terminal, so a redirected run was silent for minutes (issue 30).
Lines go through `logging`: Hydra writes them to the terminal and to the run's `train.log` alike. A library-level
helper with no dependencies, so the pipeline can use it without importing the application layer.
"""

from __future__ import annotations

import contextlib
import logging
import time


@contextlib.contextmanager
def logged_stage(logger: logging.Logger, what: str):
    """One INFO line when a stage starts and one with its time when it ends."""
    logger.info("%s ...", what)
    start = time.perf_counter()
    yield
    logger.info("%s: done in %.1f s", what, time.perf_counter() - start)
