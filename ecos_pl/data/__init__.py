"""Data sources: each builds an `ECOSData` (pool, client train, client test) as uint8 image arrays."""

from ecos_pl.data.base import NONE_LABEL, DomainSplit, ECOSData

__all__ = ["NONE_LABEL", "DomainSplit", "ECOSData"]
