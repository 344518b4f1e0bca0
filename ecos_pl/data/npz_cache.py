"""A data set built in memory (`digits_lite`, `digits5_lite`), cached as one `.npz` file named by its recipe.

The file holds the arrays and the recipe (a JSON string of everything they depend on). It is
written through `ecos_pl.atomic.write_atomic` (a temporary tagged with its writer, then a
rename; mode from the umask); a file that cannot be read, holds another recipe or fails the
source's checks is moved aside with a `CacheWarning` and rebuilt; a cache folder that cannot
be written costs a rebuild next time, not the run.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from ecos_pl.atomic import clean_dead_temporaries, move_aside, write_atomic

log = logging.getLogger(__name__)


def cache_folder(cache_dir) -> Path:
    """`cache_dir` (variables and ~ expanded), or `$ECOS_CACHE/data` (default `~/.cache/ecos-pl/data`)."""
    if cache_dir is None:
        return Path(os.environ.get("ECOS_CACHE", Path.home() / ".cache" / "ecos-pl")) / "data"
    return Path(os.path.expandvars(str(cache_dir))).expanduser()


def read_npz(path: Path, recipe: str, check: Callable[[dict[str, np.ndarray]], None], name: str) -> dict[str, np.ndarray] | None:
    """The cached arrays (the recipe removed), or None; a damaged entry is moved aside (with a `CacheWarning`)."""
    try:
        st = os.stat(path)
    except OSError:  # missing, or the cache folder is not a folder: built (and not written) by the caller
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if str(arrays.pop("recipe")) != recipe:
            raise ValueError("its recipe is not this one")
        check(arrays)
        return arrays
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt, never fatal
        move_aside(path, f"{name}: {err!r}", expected=st)
        return None


def write_npz(path: Path, arrays: dict[str, np.ndarray], recipe: str, name: str) -> None:
    try:
        write_atomic(path, lambda f: np.savez(f, recipe=np.array(recipe), **arrays))
    except OSError as err:  # a read-only cache directory costs a rebuild next time, not the run
        warnings.warn(f"could not write the {name} cache {path} ({err!r}); continuing without it.", stacklevel=4)


def cached_npz(
    path: Path, recipe: str, build: Callable[[], dict[str, np.ndarray]], check: Callable[[dict[str, np.ndarray]], None], name: str
) -> dict[str, np.ndarray]:
    """The arrays of `recipe`: read from `path`, or built by `build()` and written there."""
    clean_dead_temporaries(path.parent)
    arrays = read_npz(path, recipe, check, name)
    if arrays is None:
        t0 = time.perf_counter()
        arrays = build()
        log.info("built %s (%s) in %.1f s", name, path.name, time.perf_counter() - t0)
        write_npz(path, arrays, recipe, name)
    return arrays
