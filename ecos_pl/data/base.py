"""The one shape every data source returns, so samplers and scenarios never care where images came from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: label of an out-of-class sample (ECOS.md's "none"): it belongs to no class of the client.
NONE_LABEL = -1


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def client_domain_index(self) -> int:
        return self.domain_names.index(self.client_domain)

    def pool_in_domain(self) -> np.ndarray:
        """Boolean mask over the pool: True where a sample comes from the client's domain."""
        return self.pool.domains == self.client_domain_index
