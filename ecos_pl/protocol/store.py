"""A selection saved as one artifact, so a proxy set is computed once and every process loads the same one.

Under DDP, rank zero runs the protocol and writes the artifact (temporary name,
then rename); the other ranks wait at a barrier and read it. A rerun with the
same configuration reads it instead of recomputing. The artifact carries a sha256
of its contents; `load_selection` checks it and the indices' range, so a truncated
or altered artifact is `DamagedSelection`, never a proxy set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ecos_pl.atomic import write_atomic
from ecos_pl.protocol.messages import SCHEMA_VERSION
from ecos_pl.protocol.samplers import Sampler, Selection

#: bump when what a selection depends on changes, so stale artifacts are not reused.
#: 2: artifacts carry a checksum (those of 1 have none, so they are not read)
#: 3: samplers keyed by their settings objects (`Sampler.settings`)
STORE_VERSION = 3
#: rows of an array hashed at a time
HASH_ROWS = 4096


def selection_key(*parts) -> str:
    """A short hash of everything that determines a selection (JSON-able parts, or bytes/arrays)."""
    # the message schema too: an artifact records the messages' sizes, which change with the wire format
    h = hashlib.sha256(f"ecos-selection-v{STORE_VERSION}-messages-v{SCHEMA_VERSION}".encode())
    for part in parts:
        if isinstance(part, np.ndarray):  # row blocks: a memory-mapped array is never loaded whole (same hash)
            rows = part.reshape(len(part), -1) if part.ndim else part.reshape(1)
            for start in range(0, len(rows), HASH_ROWS):
                h.update(np.ascontiguousarray(rows[start : start + HASH_ROWS]).tobytes())
        elif isinstance(part, (bytes, bytearray)):
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def sampler_spec(sampler: Sampler) -> dict:
    return {"class": type(sampler).__qualname__, "params": sampler.settings()}


class DamagedSelection(ValueError):
    """A selection artifact that cannot be trusted: unreadable, altered, or inconsistent with the pool."""


def _checksum(meta: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"\0{name}:{a.dtype.str}:{a.shape}\0".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_selection(selection: Selection, path: str | os.PathLike, extra: dict | None = None) -> Path:
    meta = json.dumps({
        "sampler": selection.sampler,
        "bytes_down": selection.bytes_down,
        "bytes_up": selection.bytes_up,
        "timings": selection.timings,
        "client_macs": selection.client_macs,
        "n_centroids": selection.n_centroids,
        "epsilon": selection.epsilon,
        "extra": extra or {},
    })
    arrays = {"indices": selection.indices, **{f"diag_{k}": np.asarray(v) for k, v in selection.diagnostics.items()}}
    checksum = _checksum(meta, arrays)
    return write_atomic(path, lambda f: np.savez(f, meta=np.array(meta), checksum=np.array(checksum), **arrays))


def load_selection(path: str | os.PathLike, n_pool: int | None = None) -> tuple[Selection, dict]:
    """(selection, extra) from an artifact written by `save_selection`; `DamagedSelection` says why it cannot be used.

    `n_pool`: the pool's size, which every index must be below.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            meta_text, checksum = str(z["meta"]), str(z["checksum"])
            arrays = {k: z[k] for k in z.files if k not in ("meta", "checksum")}
        meta = json.loads(meta_text)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - a truncated zip fails as BadZipFile, EOFError, KeyError, ValueError...
        raise DamagedSelection(f"unreadable ({type(err).__name__}: {err})") from None
    if _checksum(meta_text, arrays) != checksum:
        raise DamagedSelection("its contents do not match its checksum")
    indices = arrays["indices"]
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise DamagedSelection(f"its indices are {indices.dtype} of shape {indices.shape}, not a list of row numbers")
    if len(indices) and (indices.min() < 0 or (n_pool is not None and indices.max() >= n_pool)):
        raise DamagedSelection(f"its indices run from {indices.min()} to {indices.max()}, outside the pool of {n_pool}")
    if len(np.unique(indices)) != len(indices):
        raise DamagedSelection("it selects some pool rows more than once")
    diagnostics = {k[len("diag_") :]: v for k, v in arrays.items() if k.startswith("diag_")}
    extra = meta.pop("extra")
    return Selection(indices=indices.astype(np.int64), diagnostics=diagnostics, **meta), extra
