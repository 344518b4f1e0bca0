"""How a split becomes tensors and batches: the one dataset and the one loader every model in the project trains on."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ecos_pl.data.base import DomainSplit


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


class ImageArrayDataset(Dataset):
    """Items are dicts: `image` float [3, H, W] in [0, 1], `label` (ground truth), `target` (what training
    may use: the label unless a scenario assigned others), `domain`, `index` (position in the split)."""

    def __init__(self, split: DomainSplit, targets: np.ndarray | None = None):
        self.images = images_to_tensor(split.images)
        self.labels = torch.as_tensor(split.labels, dtype=torch.long)
        self.targets = self.labels if targets is None else torch.as_tensor(targets, dtype=torch.long)
        self.domains = torch.as_tensor(split.domains, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "target": self.targets[i], "domain": self.domains[i], "index": i}


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """The one way a split becomes batches: seeded shuffling for training, in order for evaluation."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        # a short last batch gives batch-norm statistics of a handful of samples: 2 of 322 pseudo-labelled
        # samples made seed 2 diverge at the one-cycle peak (test 0.13; 0.65 without it). Shuffling each epoch
        # still shows every sample; a set no larger than one batch is kept whole.
        drop_last=train and len(dataset) > batch_size,
        generator=torch.Generator().manual_seed(seed) if train else None,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
