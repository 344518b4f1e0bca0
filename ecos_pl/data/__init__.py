"""Data sources: each builds an `ECOSData` (pool, client train, client test) as uint8 image arrays (`DataSource`)."""

from ecos_pl.data.base import NONE_LABEL, DataSource, DomainSplit, ECOSData

__all__ = ["NONE_LABEL", "DataSource", "DomainSplit", "ECOSData"]
