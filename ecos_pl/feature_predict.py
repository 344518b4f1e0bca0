"""The pool's φ features through Lightning's `trainer.predict`, on every device of the trainer's strategy.

`predict_pool_features(trainer, phi, images, path, meta, ...)` runs before `trainer.fit`
with the run's own trainer, so under DDP the same processes extract and then train:

* `PoolImages` reads the pool's uint8 rows a batch at a time (`__getitems__`), from a
  memory map when the data source stores its images on disk;
* `PhiPredictor.predict_step` returns φ's L2-normalised float32 features of a batch;
* Lightning's predict loop gives each rank an `UnrepeatedDistributedSamplerWrapper`
  share of the rows (every row to exactly one rank) and reports each batch's dataset
  indices to `SharedFeatureWriter`, which writes the rows there, in ONE temporary `.npy`
  memory map that rank zero preallocated (filled with NaN) and every rank opened;
* at the end the ranks flush and all-gather their row counts; rank zero checks that the
  counts add up to the pool and that no row is left NaN (so every row was written
  exactly once) in the same pass that hashes the file, renames it into place
  (`FeatureWriter.commit`) with a sidecar that records the hash, `n_ranks` and
  `rows_per_rank`, and a barrier lets every rank go on.

One process with batches of `phi.batch_rows` rows computes the same batches as
`phi.transform(pool)`, so a float32 file is bit-identical to it; under DDP a rank's
batches interleave rows of the pool (rank r gets rows r, r + world, ...), which
changes a batch's composition but not what φ computes for a row beyond float rounding.

`cache_dir` must be shared by the ranks (one machine, or a shared file system), as for
the selection artifact. Lightning's predict progress bar is the progress display.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from ecos_pl.feature_cache import FeatureWriter, contiguous, storage_dtype, write_rows

#: rows NaN-filled at a time in the shared file.
CHECK_ROWS = 65536


class PoolImages(Dataset):
    """uint8 image rows [H, W, 3] of a (memory-mapped) array; a batch is fetched in one read."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i])

    def __getitems__(self, indices: list[int]) -> np.ndarray:
        rows = np.asarray(indices, dtype=np.int64)
        if contiguous(rows):
            return np.array(self.images[rows[0] : rows[0] + len(rows)])  # one sequential read
        return np.asarray(self.images[rows])


def stack_rows(batch) -> np.ndarray:
    """collate_fn: a uint8 numpy batch stays numpy (φ takes uint8 images; Lightning leaves numpy on the host)."""
    return batch if isinstance(batch, np.ndarray) else np.stack(batch)


class PhiPredictor(pl.LightningModule):
    """`predict_step`: φ's L2-normalised float32 features of a batch of uint8 images.

    φ is not a registered sub-module (it may hold no torch module at all, like PCA):
    `on_predict_start` moves it to this rank's device.
    """

    def __init__(self, phi):
        super().__init__()
        self.phi = phi

    def on_predict_start(self) -> None:
        self.phi.to(self.trainer.strategy.root_device)
        self._progress = getattr(self.phi, "progress", None)
        if hasattr(self.phi, "progress"):
            self.phi.progress = False  # Lightning's predict bar is the display; no bar of φ's own per batch

    def on_predict_end(self) -> None:
        if hasattr(self.phi, "progress"):
            self.phi.progress = self._progress

    def predict_step(self, batch: np.ndarray, batch_idx: int) -> torch.Tensor:
        return torch.from_numpy(self.phi.transform(batch))


class SharedFeatureWriter(BasePredictionWriter):
    """Writes each predicted batch at its dataset indices into one `.npy` memory map shared by the ranks.

    Rank zero owns the file (`FeatureWriter`: temporary name, atomic rename); the other
    ranks open the same temporary file read-write. After predict, `rows_per_rank` holds
    how many rows each rank wrote.
    """

    def __init__(self, path: str | Path, n_rows: int, dim: int, dtype, meta: dict):
        super().__init__(write_interval="batch")
        self.path, self.n_rows, self.dim, self.dtype, self.meta = Path(path), int(n_rows), int(dim), np.dtype(dtype), dict(meta)
        self.rows_per_rank: list[int] | None = None
        self._owner: FeatureWriter | None = None
        self._array = None
        self._rows = 0

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tmp = None
        if trainer.is_global_zero:
            self._owner = FeatureWriter(self.path, (self.n_rows, self.dim), self.dtype, self.meta)
            for start in range(0, self.n_rows, CHECK_ROWS):  # a row no rank writes stays NaN, and is found
                self._owner._array[start : start + CHECK_ROWS] = np.nan
            self._owner._array.flush()
            tmp = str(self._owner.tmp)
        tmp = trainer.strategy.broadcast(tmp, 0)  # after rank zero created the file
        self._array = self._owner._array if self._owner is not None else np.lib.format.open_memmap(tmp, mode="r+")
        self._rows = 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx) -> None:
        rows = np.asarray(batch_indices, dtype=np.int64)
        block = prediction.detach().cpu().numpy()
        if block.shape != (len(rows), self.dim):
            raise RuntimeError(f"φ returned {block.shape} for a batch of {len(rows)} rows; expected [{len(rows)}, {self.dim}]")
        write_rows(self._array, rows, block)
        self._rows += len(rows)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        array, self._array = self._array, None
        array.flush()
        counts = torch.tensor([self._rows], dtype=torch.int64, device=trainer.strategy.root_device)
        self.rows_per_rank = [int(c) for c in trainer.strategy.all_gather(counts).reshape(-1).cpu()]  # also: all flushed
        problem = None
        if self._owner is not None:
            del array
            total, missing = sum(self.rows_per_rank), self._owner.scan()[1]  # the pass that also hashes the file
            if total != self.n_rows or missing:
                problem = (
                    f"feature extraction through trainer.predict wrote {total} rows ({self.rows_per_rank} per rank) for a pool "
                    f"of {self.n_rows}, {missing} of them never written or NaN; is `limit_predict_batches` set?"
                )
                self._owner.abort()
            else:
                self._owner.meta.update(n_ranks=len(self.rows_per_rank), rows_per_rank=self.rows_per_rank)
                self._owner.commit(rows_written=total)
        problem = trainer.strategy.broadcast(problem, 0)  # every rank stops, or every rank finds the file in place
        if problem:
            raise RuntimeError(problem)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._array = None
        if self._owner is not None:
            self._owner.abort()


def predict_pool_features(
    trainer: pl.Trainer,
    phi,
    images: np.ndarray,
    path: str | Path,
    meta: dict,
    *,
    dtype: str = "auto",
    num_workers: int = 0,
) -> dict:
    """φ(images) into the cache file `path` through `trainer.predict` on every rank; returns what it did.

    Every rank must call this (as for any `trainer.predict`), with φ fitted identically.
    """
    t0 = time.perf_counter()
    dim = int(phi.transform(images[:1]).shape[1])  # every rank knows d before any batch
    writer = SharedFeatureWriter(path, len(images), dim, storage_dtype(dtype, len(images), dim), meta)
    loader = DataLoader(
        PoolImages(images),
        batch_size=max(1, int(getattr(phi, "batch_rows", 65536))),  # the batches phi.transform(pool) uses
        shuffle=False,
        num_workers=num_workers,
        collate_fn=stack_rows,
    )
    trainer.callbacks.append(writer)
    try:
        trainer.predict(PhiPredictor(phi), dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
    return {"path": str(path), "hit": False, "seconds": time.perf_counter() - t0, "via": "trainer.predict",
            "n_ranks": len(writer.rows_per_rank), "rows_per_rank": writer.rows_per_rank}
