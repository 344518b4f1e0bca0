"""Everything that crosses between client and cloud, as small typed, self-describing messages.

The protocol itself is two messages (centroids down, scores up). The
`pseudo_label` scenario adds one more round: the proxy set's features down and
one label per proxy sample up.

Wire format (little endian): a fixed header (magic, schema version, kind, flags,
R, d, epsilon), the payload, and a CRC32 of everything before it. `nbytes` is
the exact length of `to_bytes()`, so the reported traffic is the real traffic.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_scores

MAGIC = b"ECOS"
SCHEMA_VERSION = 1
_KIND_CENTROIDS = 1
_KIND_SCORES = 2
_KIND_PROXY_FEATURES = 3
_KIND_LABELS = 4
_FLAG_RADII = 1
_FLAG_EPSILON = 2
# magic, version u16, kind u8, flags u8, R u32, d u32, epsilon f64
_HEADER = struct.Struct("<4sHBBIId")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size


def _pack(kind: int, flags: int, r: int, d: int, epsilon: float, payload: bytes) -> bytes:
    body = _HEADER.pack(MAGIC, SCHEMA_VERSION, kind, flags, r, d, epsilon) + payload
    return body + _CRC.pack(zlib.crc32(body))


def _unpack(data: bytes, kind: int, what: str) -> tuple[int, int, int, float, memoryview]:
    data = memoryview(bytes(data))
    if len(data) < HEADER_BYTES:
        raise ECOSInputError(f"{what} message is truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}.")
    magic, version, got_kind, flags, r, d, epsilon = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ECOSInputError(f"{what} message does not start with the ECOS magic bytes; it is not an ECOS message.")
    if version != SCHEMA_VERSION:
        raise ECOSInputError(f"{what} message has schema version {version}; this program reads version {SCHEMA_VERSION}.")
    if got_kind != kind:
        raise ECOSInputError(f"{what} message has kind {got_kind}, expected {kind}; wrong file?")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: len(data) - _CRC.size]) != crc:
        raise ECOSInputError(f"{what} message fails its checksum; it was truncated or altered.")
    return flags, r, d, epsilon, data[_HEADER.size : len(data) - _CRC.size]


@dataclass(frozen=True, eq=False)
class CentroidsMessage:
    """Cloud to client: the R centroids of the pool's features (and optionally each cluster's radius)."""

    centroids: np.ndarray  # float32 [R, d]
    radii: np.ndarray | None = None  # float32 [R]

    def __post_init__(self) -> None:
        c = np.ascontiguousarray(self.centroids, dtype=np.float32)
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise ECOSInputError(f"centroids must be a non-empty [R, d] array, got shape {c.shape}.")
        if not np.isfinite(c).all():
            raise ECOSInputError("centroids contain NaN or infinite values.")
        object.__setattr__(self, "centroids", c)
        if self.radii is not None:
            radii = np.ascontiguousarray(self.radii, dtype=np.float32)
            if radii.shape != (c.shape[0],) or not np.isfinite(radii).all() or (radii < 0).any():
                raise ECOSInputError(f"radii must be {c.shape[0]} finite non-negative numbers, one per centroid.")
            object.__setattr__(self, "radii", radii)

    @property
    def n_centroids(self) -> int:
        return self.centroids.shape[0]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    @property
    def nbytes(self) -> int:
        floats = self.n_centroids * self.dim + (self.n_centroids if self.radii is not None else 0)
        return HEADER_BYTES + 4 * floats

    def to_bytes(self) -> bytes:
        payload = self.centroids.tobytes() + (self.radii.tobytes() if self.radii is not None else b"")
        flags = _FLAG_RADII if self.radii is not None else 0
        return _pack(_KIND_CENTROIDS, flags, self.n_centroids, self.dim, math.nan, payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CentroidsMessage":
        flags, r, d, _, payload = _unpack(data, _KIND_CENTROIDS, "centroids")
        has_radii = bool(flags & _FLAG_RADII)
        expected = 4 * (r * d + (r if has_radii else 0))
        if r < 1 or d < 1 or len(payload) != expected:
            raise ECOSInputError(f"centroids message says R={r}, d={d} but carries {len(payload)} payload bytes, not {expected}.")
        values = np.frombuffer(payload, dtype="<f4")
        radii = values[r * d :].copy() if has_radii else None
        return cls(values[: r * d].reshape(r, d).copy(), radii)


@dataclass(frozen=True, eq=False)
class ScoresMessage:
    """Client to cloud: one centroid-coverage score per centroid, nothing per sample.

    `epsilon` is the Laplace-mechanism ε the client spent on these scores (None: exact counts).
    """

    scores: np.ndarray  # float32 [R]
    epsilon: float | None = None

    def __post_init__(self) -> None:
        s = np.asarray(self.scores)
        scores = check_scores(s, s.shape[0] if s.ndim == 1 else -1)
        object.__setattr__(self, "scores", scores.astype(np.float32))

    @property
    def n_centroids(self) -> int:
        return self.scores.shape[0]

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 4 * self.n_centroids

    def to_bytes(self) -> bytes:
        eps = math.nan if self.epsilon is None else float(self.epsilon)
        flags = _FLAG_EPSILON if self.epsilon is not None else 0
        return _pack(_KIND_SCORES, flags, self.n_centroids, 1, eps, self.scores.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ScoresMessage":
        flags, r, d, eps, payload = _unpack(data, _KIND_SCORES, "scores")
        if r < 1 or d != 1 or len(payload) != 4 * r:
            raise ECOSInputError(f"scores message says R={r} but carries {len(payload)} payload bytes, not {4 * r}.")
        epsilon = float(eps) if flags & _FLAG_EPSILON else None
        return cls(np.frombuffer(payload, dtype="<f4").copy(), epsilon)


@dataclass(frozen=True, eq=False)
class ProxyFeaturesMessage:
    """Cloud to client (`pseudo_label` only): φ of the B proxy samples, to be labelled by the client."""

    features: np.ndarray  # float32 [B, d]

    def __post_init__(self) -> None:
        f = np.ascontiguousarray(self.features, dtype=np.float32)
        if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] < 1:
            raise ECOSInputError(f"proxy features must be a non-empty [B, d] array, got shape {f.shape}.")
        if not np.isfinite(f).all():
            raise ECOSInputError("proxy features contain NaN or infinite values.")
        object.__setattr__(self, "features", f)

    @property
    def n_samples(self) -> int:
        return self.features.shape[0]

    @property
    def dim(self) -> int:
        return self.features.shape[1]

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 4 * self.features.size

    def to_bytes(self) -> bytes:
        return _pack(_KIND_PROXY_FEATURES, 0, self.n_samples, self.dim, math.nan, self.features.tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProxyFeaturesMessage":
        _, b, d, _, payload = _unpack(data, _KIND_PROXY_FEATURES, "proxy features")
        if b < 1 or d < 1 or len(payload) != 4 * b * d:
            raise ECOSInputError(f"proxy features message says B={b}, d={d} but carries {len(payload)} payload bytes, not {4 * b * d}.")
        return cls(np.frombuffer(payload, dtype="<f4").reshape(b, d).copy())


@dataclass(frozen=True, eq=False)
class LabelsMessage:
    """Client to cloud (`pseudo_label` only): one class per proxy sample, `-1` where the client abstained.

    Labels travel as int16 (two bytes each); `sigma` is the Gaussian noise the
    client added to its vote histograms (None: no noise), kept for the cloud's accounting.
    """

    labels: np.ndarray  # int16 [B], -1 = dropped
    sigma: float | None = None

    def __post_init__(self) -> None:
        lab = np.asarray(self.labels)
        if lab.ndim != 1 or lab.shape[0] < 1:
            raise ECOSInputError(f"labels must be a non-empty 1-D array, got shape {lab.shape}.")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ECOSInputError(f"labels must be integers, got dtype {lab.dtype}.")
        if (lab < -1).any() or (lab > np.iinfo(np.int16).max).any():
            raise ECOSInputError("labels must be class indices >= 0, or -1 for a dropped sample.")
        object.__setattr__(self, "labels", lab.astype(np.int16))

    @property
    def n_samples(self) -> int:
        return self.labels.shape[0]

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 2 * self.n_samples

    def to_bytes(self) -> bytes:
        sigma = math.nan if self.sigma is None else float(self.sigma)
        flags = _FLAG_EPSILON if self.sigma is not None else 0
        return _pack(_KIND_LABELS, flags, self.n_samples, 1, sigma, self.labels.astype("<i2").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "LabelsMessage":
        flags, b, d, sigma, payload = _unpack(data, _KIND_LABELS, "labels")
        if b < 1 or d != 1 or len(payload) != 2 * b:
            raise ECOSInputError(f"labels message says B={b} but carries {len(payload)} payload bytes, not {2 * b}.")
        return cls(np.frombuffer(payload, dtype="<i2").copy(), float(sigma) if flags & _FLAG_EPSILON else None)
