"""`ECOSDataModule`: its training split is the proxy set that the collaborative sampling protocol selects in `setup()`."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ecos_pl.data.base import DomainSplit
from ecos_pl.data.loaders import ImageArrayDataset, make_loader
from ecos_pl.pipeline import ProtocolPipeline, ProtocolReport
from ecos_pl.protocol import Selection

log = logging.getLogger(__name__)


class ECOSDataModule(pl.LightningDataModule):
    """The pipeline's proxy set for training, the validation split carved from the client's training part for
    validation, the client's test split for the one final test.

    `pipeline` (`ecos_pl.pipeline.ProtocolPipeline`) does the protocol's work; this
    module only decides who runs it and serves loaders. DDP-safe: `setup()` runs on
    every rank after the process group exists. Rank zero runs the pipeline, which
    writes the selection artifact (keyed by everything it depends on); a barrier;
    every other rank loads that artifact, and the ranks check that their proxy sets
    and targets are identical. Proxy samples left without a label (-1) are not trained on.
    """

    def __init__(self, pipeline: ProtocolPipeline, batch_size: int = 64, eval_batch_size: int = 256, num_workers: int = 0):
        super().__init__()
        self.pipeline = pipeline
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.selection: Selection | None = None
        self.protocol_report: ProtocolReport | None = None
        self.label_report: dict = {}
        self.proxy: DomainSplit | None = None
        self.proxy_targets: np.ndarray | None = None
        self.proxy_set_sha1_per_rank: list[str] = []
        #: set by a semi-supervised scenario (`Scenario.unlabelled`; FixMatch): unlabelled pool samples join each step
        self.unlabelled = None

    @classmethod
    def from_parts(cls, source, phi, sampler, *, batch_size: int = 64, eval_batch_size: int = 256, num_workers: int = 0,
                   **pipeline) -> "ECOSDataModule":
        """Without Hydra: the pipeline's parts and settings (`ProtocolPipeline`'s keywords), and the loaders'."""
        return cls(ProtocolPipeline(source, phi, sampler, **pipeline), batch_size, eval_batch_size, num_workers)

    # what the rest of the run reads
    @property
    def data(self):
        return self.pipeline.data

    @property
    def sampler(self):
        return self.pipeline.sampler

    @property
    def seed(self) -> int:
        return self.pipeline.seed

    def load_data(self):
        """The data alone, without running the protocol (the simulated teacher needs only this)."""
        return self.pipeline.data

    @property
    def report(self) -> dict:
        """The protocol's report, the labelling's fields and every rank's proxy-set hash, as one dict."""
        if self.protocol_report is None:
            return {}
        return {**self.protocol_report.to_dict(), **self.label_report, **self.unlabelled_report,
                "proxy_set_sha1_per_rank": self.proxy_set_sha1_per_rank}

    @property
    def unlabelled_report(self) -> dict:
        """The unlabelled set's size and make-up (`ecos_pl.unlabelled`), once the training loader exists."""
        return {} if self.unlabelled is None else self.unlabelled.report

    def prepare_data(self) -> None:
        self.pipeline.data  # builds and caches on disk once

    def predict_pool_features(self, trainer: pl.Trainer) -> dict | None:
        """Extract the pool's φ features into the feature cache through `trainer.predict`, on every device of `trainer`.

        `run_experiment` calls it on every rank before `trainer.fit`; `setup()` then only opens
        the file. Nothing to do (None) without a feature cache, with a reusable selection or
        with the features already cached; every rank takes the same decision.
        """
        from ecos_pl.feature_predict import predict_pool_features

        entry = self.pipeline.feature_cache_entry()
        if entry is None:
            return None
        self.pipeline.feature_cache_info = predict_pool_features(
            trainer, self.pipeline.fitted_phi(), self.data.pool.images, *entry,
            dtype=self.pipeline.feature_dtype, num_workers=self.num_workers,
        )
        return self.pipeline.feature_cache_info

    def setup(self, stage: str | None = None) -> None:
        if self.selection is not None:
            return
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else 1
        is_zero = trainer.is_global_zero if trainer is not None else True
        if is_zero:
            self.selection, self.protocol_report = self.pipeline.select()
        if world > 1:
            if self.pipeline.selection_path is None:
                raise ValueError("cache_dir is None: under DDP the selection is shared through an artifact in cache_dir.")
            trainer.strategy.barrier("ecos-selection")
        if not is_zero:  # rank zero checked the artifact or has just written it
            self.selection, self.protocol_report = self.pipeline.load_selection()
        self.proxy = self.pipeline.proxy(self.selection)
        self.proxy_targets, self.label_report = self.pipeline.label(self.selection)
        self.proxy_set_sha1_per_rank = self._check_same_proxy_set(trainer, world)
        r = self.protocol_report
        log.info("proxy set: %d of %d pool samples by %s, in-domain fraction %s%s", r.n_selected, r.n_pool,
                 self.selection.sampler, r.in_domain_fraction, " (reused artifact)" if r.selection_reused else "")

    def _check_same_proxy_set(self, trainer, world: int) -> list[str]:
        """Every rank's proxy-set hash; a mismatch stops the run instead of training on different data."""
        digest = self.protocol_report.proxy_set_sha1
        if self.proxy_targets is not None:  # the ranks must also agree on the targets
            digest = hashlib.sha1((digest + self.label_report["proxy_targets_sha1"]).encode()).hexdigest()
        if world <= 1:
            return [digest]
        local = torch.tensor([int(digest[i : i + 8], 16) for i in range(0, 40, 8)], dtype=torch.int64)
        gathered = trainer.strategy.all_gather(local).reshape(world, -1).cpu()
        digests = ["".join(f"{int(v):08x}" for v in row) for row in gathered]
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks selected different proxy sets: {digests}")
        return digests

    def _training_split(self) -> tuple[DomainSplit, np.ndarray | None]:
        """The proxy set without the samples left unlabelled (target -1)."""
        if self.proxy_targets is None:
            return self.proxy, None
        keep = np.flatnonzero(self.proxy_targets >= 0)
        return self.proxy.subset(keep), self.proxy_targets[keep]

    def loader(self, split: DomainSplit, *, train: bool, targets: np.ndarray | None = None) -> DataLoader:
        return make_loader(ImageArrayDataset(split, targets), batch_size=self.batch_size if train else self.eval_batch_size,
                           train=train, seed=self.seed, num_workers=self.num_workers)

    def train_dataloader(self):
        split, targets = self._training_split()
        if self.unlabelled is not None:  # scenario.ssl=fixmatch: labelled batches with unlabelled pool samples
            return self.unlabelled.train_loader(self, split, targets)
        return self.loader(split, train=True, targets=targets)

    def val_dataloader(self) -> DataLoader | list:
        """The validation split carved from the client's training part (none: no validation loop)."""
        return [] if self.data.client_val is None else self.loader(self.data.client_val, train=False)

    def test_dataloader(self) -> DataLoader:
        """The client's test split: read once, after training."""
        return self.loader(self.data.client_test, train=False)
