"""L2 normalisation, done in place by chunks so a large pool is never copied.

The protocol takes features as float32 [N, d] rows. A float32, C-contiguous,
already unit-norm array (φ's output) goes through every step without a copy;
anything else (float16 memory maps, float64, other layouts, rows that are not
unit-norm) costs exactly one new float32 array, filled chunk by chunk.
"""

from __future__ import annotations

import numpy as np

from ecos_pl.protocol.errors import CHUNK_ROWS, check_feature_shape, check_features, raise_if_not_finite


def l2_normalize(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Unit-norm rows (zero rows stay zero). ECOS compares features by direction, not magnitude."""
    out = x if inplace else np.array(x, dtype=np.float32, copy=True)
    for start in range(0, out.shape[0], CHUNK_ROWS):
        block = out[start : start + CHUNK_ROWS]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        np.divide(block, np.maximum(norms, 1e-12), out=block)
    return out


def _row_sq_norms(block: np.ndarray) -> np.ndarray:
    """Squared row norms without the [rows, d] temporary that `np.linalg.norm` makes."""
    if block.dtype not in (np.float32, np.float64):
        block = block.astype(np.float32)  # float16 would overflow; one chunk at a time
    return np.einsum("ij,ij->i", block, block)


def _all_unit(sq_norms: np.ndarray, atol: float) -> bool:
    # |‖x‖ - 1| <= atol, written on the squared norm; zero rows count as normalised
    return bool(np.all(((sq_norms >= (1.0 - atol) ** 2) & (sq_norms <= (1.0 + atol) ** 2)) | (sq_norms == 0)))


def is_l2_normalized(x: np.ndarray, atol: float = 1e-3) -> bool:
    for start in range(0, x.shape[0], CHUNK_ROWS):
        if not _all_unit(_row_sq_norms(x[start : start + CHUNK_ROWS]), atol):
            return False
    return True


def unit_rows(x, name: str, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """`check_features` then L2 normalisation, with one pass over a float32 pool and at most one copy.

    For a float32 C-contiguous input the finiteness check and the norm check share
    one pass (a row holding NaN or ±inf has a non-finite squared norm), and the
    input itself is returned when its rows are unit-norm. Other inputs are
    converted once (chunk by chunk) and, if needed, normalised in place in that
    new array, never copied a second time.
    """
    x = check_feature_shape(x, name, dim=dim, min_rows=min_rows)
    if x.dtype == np.float32 and x.flags.c_contiguous:
        unit = True
        for start in range(0, x.shape[0], CHUNK_ROWS):
            block = x[start : start + CHUNK_ROWS]
            sq = _row_sq_norms(block)
            if not np.isfinite(sq).all():
                raise_if_not_finite(block, name)  # else a finite row whose square overflowed float32
            unit = unit and _all_unit(sq, 1e-3)
        return x if unit else l2_normalize(x)
    out = check_features(x, name, dim=dim, min_rows=min_rows)  # a new float32 array: ours to normalise in place
    return out if is_l2_normalized(out) else l2_normalize(out, inplace=True)
