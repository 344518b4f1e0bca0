"""`ECOSDataModule`: its training split is the proxy set that the collaborative sampling protocol selects in `setup()`."""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ecos_pl.data.base import DomainSplit, ECOSData
from ecos_pl.phi import FeatureExtractor, images_to_tensor
from ecos_pl.protocol import ECOSClient, Sampler, Selection

log = logging.getLogger(__name__)


class ImageArrayDataset(Dataset):
    """Items are dicts: `image` float [3, H, W] in [0, 1], `label`, `index` (position in the split)."""

    def __init__(self, split: DomainSplit, labels: np.ndarray | None = None):
        self.images = images_to_tensor(split.images)
        self.labels = torch.as_tensor(split.labels if labels is None else labels, dtype=torch.long)
        self.domains = torch.as_tensor(split.domains, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "domain": self.domains[i], "index": i}


class ECOSDataModule(pl.LightningDataModule):
    """Client test split for validation and test; the sampler's proxy set for training.

    `source` builds the data (pool, client train, client test); `phi` is the shared
    feature extractor; `sampler` chooses at most `budget` pool samples given the
    client. The protocol runs once per instance; `report` holds what it cost.
    """

    def __init__(
        self,
        source,
        phi: FeatureExtractor,
        sampler: Sampler,
        budget: int | None = 400,
        seed: int = 1,
        client_epsilon: float | None = None,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
    ):
        super().__init__()
        self.source = source
        self.phi = phi
        self.sampler = sampler
        self.budget = budget
        self.seed = seed
        self.client_epsilon = client_epsilon
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.data: ECOSData | None = None
        self.selection: Selection | None = None
        self.proxy: DomainSplit | None = None
        self.report: dict = {}

    def prepare_data(self) -> None:
        self.source.load()  # builds and caches on disk once

    def setup(self, stage: str | None = None) -> None:
        if self.selection is not None:
            return
        self.data = data = self.source.load()
        t0 = time.perf_counter()
        self.phi.fit(data.pool.images)
        pool_features = self.phi.transform(data.pool.images)
        t1 = time.perf_counter()
        client_features = self.phi.transform(data.client_train.images)
        t2 = time.perf_counter()
        client = ECOSClient(client_features, epsilon=self.client_epsilon, seed=self.seed)
        budget = self.budget if self.sampler.uses_budget else None
        self.selection = sel = self.sampler.sample(pool_features, client, budget, self.seed)
        self.proxy = data.pool.subset(sel.indices)
        self.pool_features = pool_features
        self.report = self._report(data, sel, cloud_features_s=t1 - t0, client_features_s=t2 - t1)
        log.info(
            "proxy set: %d of %d pool samples by %s, in-domain fraction %s",
            sel.n_selected, len(data.pool), sel.sampler, self.report["in_domain_fraction"],
        )

    def _report(self, data: ECOSData, sel: Selection, *, cloud_features_s: float, client_features_s: float) -> dict:
        domains = data.pool.domains[sel.indices]
        composition = {name: int((domains == i).sum()) for i, name in enumerate(data.domain_names)}
        in_domain = float(np.mean(domains == data.client_domain_index)) if sel.n_selected else None
        return {
            "n_pool": len(data.pool),
            "n_client_train": len(data.client_train),
            "n_client_test": len(data.client_test),
            "n_selected": sel.n_selected,
            "proxy_set_sha1": hashlib.sha1(np.ascontiguousarray(sel.indices, dtype=np.int64).tobytes()).hexdigest(),
            "n_centroids": sel.n_centroids,
            "in_domain_fraction": in_domain,
            "pool_in_domain_fraction": float(np.mean(data.pool_in_domain())),
            "composition_by_domain": composition,
            "bytes_down": sel.bytes_down,
            "bytes_up": sel.bytes_up,
            "client_score_macs": sel.client_macs,
            "epsilon": sel.epsilon,
            "timings": {
                "features": cloud_features_s + client_features_s,
                "features_cloud": cloud_features_s,
                "features_client": client_features_s,
                "compress": sel.timings.get("compress", 0.0),
                "score": sel.timings.get("score", 0.0),
                "select": sel.timings.get("select", 0.0),
            },
        }

    def _loader(self, dataset: Dataset, *, train: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if train else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(ImageArrayDataset(self.proxy), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(ImageArrayDataset(self.data.client_test), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def client_train_dataloader(self) -> DataLoader:
        """The client's own labelled data: only for the simulated teacher (the model the client already has)."""
        return self._loader(ImageArrayDataset(self.data.client_train), train=True)

    def pool_dataloader(self, labelled_only: bool = True) -> DataLoader:
        """The labelled pool, for the weaker teacher variant that the cloud trains itself."""
        pool = self.data.pool
        if labelled_only:
            pool = pool.subset(np.flatnonzero(pool.labels >= 0))
        return self._loader(ImageArrayDataset(pool), train=True)
