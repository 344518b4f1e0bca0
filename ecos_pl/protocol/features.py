"""L2 normalisation, done in place by chunks so a large pool is never copied."""

from __future__ import annotations

import numpy as np

_CHUNK_ROWS = 65536


def l2_normalize(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero). ECOS compares features by direction, not magnitude."""
    out = x if inplace else np.array(x, dtype=np.float32, copy=True)
    for start in range(0, out.shape[0], _CHUNK_ROWS):
        block = out[start : start + _CHUNK_ROWS]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.maximum(norms, 1e-12), out=block)
    return out


def is_l2_normalized(x: np.ndarray, atol: float = 1e-3) -> bool:
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        norms = np.linalg.norm(x[start : start + _CHUNK_ROWS], axis=1)
        if not np.all((np.abs(norms - 1.0) <= atol) | (norms == 0)):
            return False
    return True


def normalized(x: np.ndarray) -> np.ndarray:
    """`x` itself when its rows are already unit-norm, else a normalised copy."""
    return x if is_l2_normalized(x) else l2_normalize(x)
