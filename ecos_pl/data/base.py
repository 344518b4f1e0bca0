"""The one shape every data source returns (`ECOSData`), and what a data source is (`DataSource`).

Samplers and scenarios never care where images came from: a source is anything Hydra builds
from `conf/data/<name>.yaml`'s `source:` whose `load()` gives an `ECOSData`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

#: label of an out-of-class sample (ECOS.md's "none"): it belongs to no class of the client (the protocol's no-label)
from ecos_pl.protocol.messages import NONE_LABEL  # noqa: F401,E402


@dataclass
class DomainSplit:
    """Images with their class and domain; `labels == NONE_LABEL` marks out-of-class samples."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N]
    domains: np.ndarray  # int64 [N], index into ECOSData.domain_names

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be a uint8 array of shape [N, H, W, 3], got {self.images.dtype} {self.images.shape}"
            )
        if len(self.labels) != n or len(self.domains) != n:
            raise ValueError(
                f"images, labels and domains must have the same length, got {n}, {len(self.labels)}, {len(self.domains)}"
            )
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.domains = np.asarray(self.domains, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> "DomainSplit":
        indices = np.asarray(indices, dtype=np.int64)
        return DomainSplit(self.images[indices], self.labels[indices], self.domains[indices])


@dataclass
class ECOSData:
    """A client (train and test split of one domain) and the open-source pool it samples from.

    The client's test split never overlaps its training split or the pool.
    """

    name: str
    pool: DomainSplit
    client_train: DomainSplit
    client_test: DomainSplit
    domain_names: list[str]
    class_names: list[str]
    client_domain: str
    meta: dict = field(default_factory=dict)
    #: carved from the client's training part (`with_validation`): what `val/acc` and every setting chosen by
    #: accuracy look at, so that the client's test split is used once. None: no validation split.
    client_val: DomainSplit | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def client_domain_index(self) -> int:
        return self.domain_names.index(self.client_domain)

    def pool_in_domain(self) -> np.ndarray:
        """Boolean mask over the pool: True where a sample comes from the client's domain."""
        return self.pool.domains == self.client_domain_index


def split_counts(splits: dict[str, DomainSplit], domain_names: list[str]) -> dict[str, dict[str, int]]:
    """{split: {domain: count (domains with samples only), "total": count}}: what `ECOSData.meta["counts"]` holds."""
    counts = {}
    for s, part in splits.items():
        per_domain = np.bincount(part.domains, minlength=len(domain_names))
        counts[s] = {d: int(c) for d, c in zip(domain_names, per_domain) if c} | {"total": len(part)}
    return counts


class DataSource(ABC):
    """What the datamodule (`ECOSDataModule.source`) and the simulated teacher rely on in a data source.

    * `name`: the benchmark's name, a class attribute (also `ECOSData.name`).
    * `load()`: the data as an `ECOSData` (pool, client train, client test), built or read
      from the source's cache; called more than once (`prepare_data`, then `setup`), it gives
      the same data. Checks of the settings happen in the constructor (one `ECOSInputError`),
      so a bad setting fails before anything is built or written.
    * `cache_dir`: where the source caches what it builds (None: its default, or no cache).

    An on-disk source (`ecos_pl.data.on_disk.OnDiskSource`) puts its decode-cache key in
    `ECOSData.meta["data_key"]`; the datamodule keys its caches by it instead of hashing pixels.
    """

    name: ClassVar[str]
    cache_dir: object = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not isinstance(getattr(cls, "name", None), str):
            raise TypeError(f"data source {cls.__qualname__} must name itself: a class attribute `name` (a str).")

    @abstractmethod
    def load(self) -> ECOSData:
        """The data (pool, client train, client test)."""
