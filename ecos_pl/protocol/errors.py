"""One exception type and the input checks every protocol step shares.

Each check raises `ECOSInputError` with one sentence that names the offending
parameter, before anything is computed or written.
"""

from __future__ import annotations

import numbers

import numpy as np


class ECOSInputError(ValueError):
    """A bad input to the ECOS protocol; the message names the parameter."""


#: rows per chunk when a pass over a (possibly memory-mapped) feature matrix must not materialise it
CHUNK_ROWS = 65536


def check_feature_shape(x, name: str, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """The checks of `check_features` that need no pass over the values: type, shape, dimension, dtype."""
    if x is None:
        raise ECOSInputError(f"{name} is None; expected a 2-D array of features.")
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ECOSInputError(f"{name} must be a 2-D array [n_samples, dim], got shape {x.shape}.")
    if x.shape[0] < min_rows:
        if min_rows == 1:
            raise ECOSInputError(f"{name} is empty (0 samples); at least one sample is needed.")
        raise ECOSInputError(f"{name} has {x.shape[0]} samples; at least {min_rows} are needed.")
    if x.shape[1] < 1:
        raise ECOSInputError(f"{name} has dimension 0.")
    if dim is not None and x.shape[1] != dim:
        raise ECOSInputError(f"{name} has dimension {x.shape[1]} but the centroids have dimension {dim}.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ECOSInputError(f"{name} must hold floating-point features, got dtype {x.dtype}.")
    return x


def raise_if_not_finite(block: np.ndarray, name: str) -> None:
    if not np.isfinite(block).all():
        raise ECOSInputError(f"{name} contains NaN or infinite values.")


def check_features(x, name: str, *, dim: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Return `x` as a C-contiguous float32 [N, d] array, or say clearly why it cannot be one.

    A float32 C-contiguous array (the normal case: φ's output) is returned as is,
    never copied. Any other floating dtype (a float16 memory map, float64) or
    layout is converted once, chunk by chunk, into one new float32 array, so
    the only memory added is that float32 array. The finiteness check runs on
    the same chunks, before anything is kept.
    """
    x = check_feature_shape(x, name, dim=dim, min_rows=min_rows)
    if x.dtype == np.float32 and x.flags.c_contiguous:
        for start in range(0, x.shape[0], CHUNK_ROWS):
            raise_if_not_finite(x[start : start + CHUNK_ROWS], name)
        return x
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], CHUNK_ROWS):
        block = x[start : start + CHUNK_ROWS]
        raise_if_not_finite(block, name)
        out[start : start + CHUNK_ROWS] = block
    return out


def check_count(value, name: str, *, low: int = 1, high: int | None = None, high_name: str = "") -> int:
    """A whole number in [low, high]; `high_name` says what the upper bound is (e.g. 'the pool size')."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise ECOSInputError(f"{name} must be a whole number, got {value!r}.")
    value = int(value)
    if value < low:
        raise ECOSInputError(f"{name} must be at least {low}, got {value}.")
    if high is not None and value > high:
        raise ECOSInputError(f"{name}={value} is larger than {high_name or 'its maximum'} ({high}).")
    return value


def check_scores(scores, n_centroids: int, name: str = "scores") -> np.ndarray:
    """Non-negative, finite, one per centroid."""
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ECOSInputError(f"{name} must be a 1-D vector of length {n_centroids}, got shape {scores.shape}.")
    if len(scores) != n_centroids:
        raise ECOSInputError(f"{name} has length {len(scores)} but there are {n_centroids} centroids.")
    if not np.issubdtype(scores.dtype, np.number):
        raise ECOSInputError(f"{name} must be numeric, got dtype {scores.dtype}.")
    scores = scores.astype(np.float64)
    if not np.isfinite(scores).all():
        raise ECOSInputError(f"{name} contains NaN or infinite values.")
    if (scores < 0).any():
        raise ECOSInputError(f"{name} contains negative values (smallest {scores.min():g}); scores are counts.")
    return scores


def check_epsilon(epsilon) -> float | None:
    """None means no noise; otherwise a finite ε > 0."""
    if epsilon is None:
        return None
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise ECOSInputError(f"epsilon must be a positive number or None, got {epsilon!r}.") from None
    if not np.isfinite(eps) or eps <= 0:
        raise ECOSInputError(f"epsilon must be a positive, finite number (or None for no noise), got {epsilon!r}.")
    return eps
