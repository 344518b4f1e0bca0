"""The pool's φ features on disk: computed once per (data, φ, dtype), streamed, memory-mapped.

Layout, under `<cache_dir>/features/`:

* `<key>.npy`: an `.npy` file of shape [N, d] (float32, or float16 for large pools), rows
  L2-normalised, opened read-only with `np.load(mmap_mode="r")`;
* `<key>.json`: a sidecar with the shape, the dtype and what the key was made of.

`key` hashes the data's identity (its name and the on-disk source's decode-cache key, which
hashes every file's path, size and mtime; or, for data built in memory, the pool's image
bytes, read in chunks),
φ's `fingerprint()` (type, model name, weights, seed, pooling, stages, input size; for
PCA the fitted components) and the storage dtype. Writing is atomic: blocks stream into
`<key>.<host>-<pid>.f16.tmp` / `.f32.tmp` (`np.lib.format.open_memmap`), which is renamed to
`<key>.npy` only once complete; an exception mid-stream leaves nothing behind, and what a
killed writer left is removed by the next run (`ecos_pl.atomic.clean_dead_temporaries`).

The sidecar records the sha256 of the values (`array_fingerprint`), computed when the file
is committed and checked, with the values' finiteness, whenever a run opens the entry
(once per process and file). A damaged entry (unreadable, wrong shape, values changed
in place, NaN) is moved aside with a warning naming it and rebuilt. The check reads the
file once (sha256, and a block sum for finiteness): for 1M x 512 float32 (1.9 GiB, page
cache warm, 2 cores) 1.6 s on load and 2.5 s at commit (the flush included), against
hours of φ extraction for such a pool.

The pool is read and transformed in blocks of `phi.batch_rows` rows, the same batches
`phi.transform(pool)` uses, so a float32 cache written by one process holds exactly the
features the uncached path computes (same selection, bit for bit).

In a run (`ecos_pl.experiment.run_experiment`) the pool's features are extracted through
Lightning's `trainer.predict` before `fit` (`ecos_pl.feature_predict`): every device of the
trainer's strategy runs φ on its share of the pool and writes its rows, at their indices,
into one shared temporary file (`write_rows`), which rank zero renames into
place. `cached_features` then finds the file. Without a trainer (a data module used on its
own, the benchmarks) `cached_features` extracts in-process, in the same batches.

dtype: `auto` stores float32 unless the float32 array would reach `FLOAT16_MIN_BYTES`
(1 GiB), then float16. Measured on digits_lite (seed 1, budget 400, R = 64): float16
features move 14 of the 400 selected samples with the default φ (25 with PCA) and leave
the in-domain fraction within ±0.01, so small pools keep float32 and their numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ecos_pl.atomic import clean_dead_temporaries, move_aside, owner_tag, write_json_atomic

log = logging.getLogger(__name__)

#: bump when what a cached feature file depends on, or its layout, changes.
CACHE_VERSION = 1
#: `dtype="auto"`: float16 once float32 features would take this many bytes or more.
FLOAT16_MIN_BYTES = 1 << 30
#: rows hashed at a time when fingerprinting the pool's images.
HASH_ROWS = 4096
DTYPES = ("auto", "float32", "float16")


# ---------------------------------------------------------------- keys and paths


def array_fingerprint(array: np.ndarray, rows: int = HASH_ROWS, visit: Callable[[np.ndarray], None] | None = None) -> str:
    """sha256 of an array's shape, dtype and bytes, read `rows` rows at a time (works on a memmap).

    `visit(block)` sees each block as it is hashed, so one read of a large file serves two checks.
    """
    h = hashlib.sha256(f"{array.dtype.str}:{tuple(array.shape)}".encode())
    for start in range(0, len(array), rows):
        block = np.ascontiguousarray(array[start : start + rows])
        h.update(block)
        if visit is not None:
            visit(block)
    return h.hexdigest()


def scan_features(features: np.ndarray) -> tuple[str, int]:
    """(sha256 of the features, rows holding NaN or ±inf) in one pass; rows are counted only in a block whose sum is not finite."""
    bad = [0]

    def count(block: np.ndarray) -> None:
        if not np.isfinite(block.sum(dtype=np.float32)):  # |x| <= 1 per value: a finite block cannot overflow
            bad[0] += int((~np.isfinite(block)).any(axis=1).sum())

    return array_fingerprint(features, visit=count), bad[0]


def feature_cache_key(data_id: str, phi_fingerprint: str, dtype: str) -> str:
    """A short hash of what determines the cached features: data identity, φ and the storage dtype."""
    parts = {"v": CACHE_VERSION, "data": data_id, "phi": phi_fingerprint, "dtype": str(dtype)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def feature_paths(cache_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    """(`<cache_dir>/features/<key>.npy`, its JSON sidecar)."""
    folder = Path(cache_dir).expanduser() / "features"
    return folder / f"{key}.npy", folder / f"{key}.json"


def check_dtype(dtype: str) -> str:
    dtype = str(dtype)
    if dtype not in DTYPES:
        raise ValueError(f"feature_dtype={dtype!r} must be one of {', '.join(DTYPES)}.")
    return dtype


def storage_dtype(dtype: str, n_rows: int, dim: int) -> np.dtype:
    """The dtype a cache file is written in: `auto` is float16 only for pools of `FLOAT16_MIN_BYTES` or more."""
    if check_dtype(dtype) == "auto":
        return np.dtype(np.float16 if n_rows * dim * 4 >= FLOAT16_MIN_BYTES else np.float32)
    return np.dtype(dtype)


# ---------------------------------------------------------------- reading and writing


def open_features(path: str | os.PathLike) -> np.memmap:
    """A cached feature file as a read-only memory map ([N, d], float16 or float32)."""
    array = np.load(Path(path), mmap_mode="r", allow_pickle=False)
    if array.ndim != 2 or array.dtype not in (np.float16, np.float32):
        raise ValueError(f"{path} is not a feature cache file (got {array.dtype} {array.shape}).")
    return array


def as_float32(features: np.ndarray, rows: int = 65536) -> np.ndarray:
    """float32 copy of (possibly memory-mapped float16) features, converted `rows` rows at a time."""
    if features.dtype == np.float32:
        return features
    out = np.empty(features.shape, dtype=np.float32)
    for start in range(0, len(features), rows):
        out[start : start + rows] = features[start : start + rows]
    return out


class FeatureWriter:
    """Streams row blocks into `<key>.<host>-<pid>.<f16|f32>.tmp`; `commit()` renames it to `<key>.npy` and writes the sidecar.

    Used as a context manager, an exception before `commit()` removes the temporary file,
    so a reader only ever sees a complete `<key>.npy`.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int], dtype, meta: dict | None = None):
        self.path = Path(path)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype)
        self.meta = dict(meta or {})
        suffix = {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32"}[self.dtype]
        # concurrent writers never share one; the owner in the name lets a later run remove it if this one is killed
        self.tmp = self.path.with_name(f"{self.path.stem}.{owner_tag()}.{suffix}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_dead_temporaries(self.path.parent)  # before this one takes as much disk again
        self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        self._written = 0
        self._scan: tuple[str, int] | None = None

    def scan(self) -> tuple[str, int]:
        """(sha256, non-finite rows) of the flushed temporary file, computed once."""
        if self._scan is None:
            self._array.flush()
            self._scan = scan_features(self._array)
        return self._scan

    def write(self, start: int, block: np.ndarray) -> None:
        block = np.asarray(block)
        if block.ndim != 2 or block.shape[1] != self.shape[1] or start < 0 or start + len(block) > self.shape[0]:
            raise ValueError(f"block of shape {block.shape} at row {start} does not fit features of shape {self.shape}")
        self._array[start : start + len(block)] = block  # cast to the storage dtype here
        self._written += len(block)

    def commit(self, rows_written: int | None = None) -> Path:
        """Rename the temporary file into place; `rows_written`: the rows every writer of a shared file wrote."""
        written = self._written if rows_written is None else int(rows_written)
        if written != self.shape[0]:
            raise RuntimeError(f"feature cache incomplete: {written} of {self.shape[0]} rows were written")
        digest, bad = self.scan()
        if bad:  # a cache of NaN would be refused by every later run: blame φ now, cache nothing
            raise RuntimeError(f"φ produced NaN or infinite features in {bad} of {self.shape[0]} pool rows; nothing was cached")
        del self._array
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        sidecar = {"shape": list(self.shape), "dtype": self.dtype.name, "version": CACHE_VERSION, **self.meta, "sha256": digest}
        write_json_atomic(sidecar, self.path.with_suffix(".json"), indent=1, sort_keys=True)
        os.replace(self.tmp, self.path)
        _remember(self.path, digest)
        return self.path

    def abort(self) -> None:
        if hasattr(self, "_array"):
            del self._array
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or self.tmp.exists():
            self.abort()


def contiguous(rows: np.ndarray) -> bool:
    """Whether `rows` are consecutive ascending indices (one process's sequential batches): one slice reads or writes them."""
    return bool(len(rows)) and rows[-1] - rows[0] == len(rows) - 1 and bool(np.all(np.diff(rows) == 1))


def write_rows(array: np.ndarray, rows: np.ndarray, block: np.ndarray) -> None:
    """`array[rows] = block`, as one slice when the rows are contiguous."""
    if contiguous(rows):
        array[rows[0] : rows[0] + len(rows)] = block
    else:
        array[rows] = block


# ---------------------------------------------------------------- extraction


def _blocks(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def _progress(items, description: str, progress: bool | None):
    from ecos_pl.phi.base import _track

    return _track(items, description, progress)


def iter_features(phi, images: np.ndarray, *, progress: bool | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(start row, φ features of rows start:start+`phi.batch_rows`), block by block."""
    blocks = _blocks(len(images), max(1, int(getattr(phi, "batch_rows", 65536))))
    for start, stop in _progress(blocks, f"φ features ({len(images):,} images)", progress):
        yield start, phi.transform(images[start:stop])


def write_features(path: str | os.PathLike, blocks, n_rows: int, dtype: str = "auto", meta: dict | None = None) -> Path:
    """Stream `(start, block)` pairs covering rows 0..n_rows into the cache file at `path`, atomically."""
    writer = None
    try:
        for start, block in blocks:
            if writer is None:
                dim = int(block.shape[1])
                writer = FeatureWriter(path, (n_rows, dim), storage_dtype(dtype, n_rows, dim), meta)
            writer.write(start, block)
        if writer is None:
            raise ValueError("no features to cache: the pool is empty")
        return writer.commit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


#: entries checked in this process: path -> (inode, size, mtime, sha256); a run opens an entry more than once
_VERIFIED: dict[str, tuple] = {}


def _identity(st: os.stat_result) -> tuple:
    return st.st_ino, st.st_size, st.st_mtime_ns


def _remember(path: Path, digest: str) -> None:
    _VERIFIED[str(path)] = (*_identity(os.stat(path)), digest)


def _read_sidecar(path: Path) -> dict | None:
    try:
        side = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return side if isinstance(side, dict) else None


def _damage(path: Path, n_rows: int, side: dict | None, st: os.stat_result) -> str | None:
    """Why the entry at `path` must not be used (None: it is whole), reading the values once unless already checked."""
    if side is None:
        return f"its sidecar {path.with_suffix('.json').name} is missing or unreadable"
    memo = _VERIFIED.get(str(path))
    if memo is not None and memo == (*_identity(st), side.get("sha256")):
        return None
    try:
        features = open_features(path)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        return f"not a readable feature file: {str(err) or type(err).__name__}"
    shape = side.get("shape")
    expected = (n_rows, shape[1] if isinstance(shape, list) and len(shape) == 2 else None)
    if features.shape != expected or features.dtype.name != side.get("dtype"):
        return f"it holds {features.dtype.name} {list(features.shape)}, expected {side.get('dtype')} {list(expected)}"
    digest, bad = scan_features(features)
    if bad:
        return f"{bad} rows hold NaN or infinite values"
    if digest != side.get("sha256"):
        return f"its values do not match the sha256 in {path.with_suffix('.json').name}; they were changed after it was written"
    _VERIFIED[str(path)] = (*_identity(st), digest)
    return None


def cache_valid(path: Path, n_rows: int) -> bool:
    """Whether `path` is a whole feature file of `n_rows` rows whose values match their checksum.

    A damaged entry is moved aside (with a warning naming it) so that it is rebuilt;
    an entry written before sidecars held a checksum is rebuilt in place. Temporaries of
    dead writers in the folder are removed first.
    """
    path = Path(path)
    clean_dead_temporaries(path.parent)
    for _ in range(3):  # a concurrent writer may replace the pair while it is checked: check again
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        side = _read_sidecar(path)
        if side is not None and "sha256" not in side:
            log.info("feature cache %s was written without a checksum; it is rebuilt", path)
            return False
        reason = _damage(path, n_rows, side, st)
        if reason is None:
            return True
        try:
            unchanged = _identity(os.stat(path)) == _identity(st) and _read_sidecar(path) == side
        except FileNotFoundError:
            return False
        if unchanged:
            move_aside(path, reason, expected=st)
            return False
    return False


def cached_features(
    cache_dir: str | os.PathLike,
    phi,
    images: np.ndarray,
    *,
    data_id: str,
    dtype: str = "auto",
    progress: bool | None = None,
) -> tuple[np.memmap, dict]:
    """φ(images) from the cache under `cache_dir/features/`, computed in this process and written first if missing.

    `phi` must already be fitted (PCA is fitted on the pool before its fingerprint is
    final). Returns the read-only memory map and `{"path", "hit", "seconds"}`.
    """
    t0 = time.perf_counter()
    progress = getattr(phi, "progress", None) if progress is None else progress
    path, meta = cache_entry(cache_dir, phi, data_id, dtype)
    hit = cache_valid(path, len(images))
    if not hit:
        write_features(path, iter_features(phi, images, progress=progress), len(images), dtype, meta)
    features = open_features(path)
    return features, {"path": str(path), "hit": hit, "seconds": time.perf_counter() - t0}


def cache_entry(cache_dir: str | os.PathLike, phi, data_id: str, dtype: str) -> tuple[Path, dict]:
    """(the cache file for φ of this data in this dtype, the sidecar fields that say what it was made of)."""
    dtype = check_dtype(dtype)
    phi_id = phi.fingerprint()
    key = feature_cache_key(data_id, phi_id, dtype)
    meta = {"key": key, "data": data_id, "phi": phi_id, "phi_class": type(phi).__qualname__, "dtype_requested": dtype, "n_ranks": 1}
    return feature_paths(cache_dir, key)[0], meta

