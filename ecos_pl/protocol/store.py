"""A selection saved as one artifact, so a proxy set is computed once and every process loads the same one.

Under DDP, rank zero runs the protocol and writes the artifact (temporary name,
then rename); the other ranks wait at a barrier and read it. A rerun with the
same configuration reads it instead of recomputing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ecos_pl.protocol.messages import SCHEMA_VERSION
from ecos_pl.protocol.samplers import Sampler, Selection

#: bump when what a selection depends on changes, so stale artifacts are not reused.
STORE_VERSION = 1
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
    return {"class": type(sampler).__qualname__, "params": {k: v for k, v in sorted(vars(sampler).items())}}


def save_selection(selection: Selection, path: str | os.PathLike, extra: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "sampler": selection.sampler,
        "bytes_down": selection.bytes_down,
        "bytes_up": selection.bytes_up,
        "timings": selection.timings,
        "client_macs": selection.client_macs,
        "n_centroids": selection.n_centroids,
        "epsilon": selection.epsilon,
        "extra": extra or {},
    }
    arrays = {"indices": selection.indices, **{f"diag_{k}": np.asarray(v) for k, v in selection.diagnostics.items()}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_selection(path: str | os.PathLike) -> tuple[Selection, dict]:
    """(selection, extra) from an artifact written by `save_selection`."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        diagnostics = {k[len("diag_") :]: z[k] for k in z.files if k.startswith("diag_")}
        indices = z["indices"].astype(np.int64)
    extra = meta.pop("extra")
    return Selection(indices=indices, diagnostics=diagnostics, **meta), extra
