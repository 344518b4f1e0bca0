"""Everything that crosses between client and cloud, as small typed, self-describing messages.

Two messages make the protocol (centroids down, scores up); `pseudo_label` adds the proxy set's features down and
one label per proxy sample up.

Wire format, schema version 2 (little endian), `HEADER_BYTES` = 32 in all:

    offset size field
         0    4 magic  b"ECOS"
         4    1 schema version (2)
         5    1 kind   (1 centroids, 2 scores, 3 proxy features, 4 labels)
         6    1 flags  (1 radii follow the centroids, 2 `value` is set, 4 `tag` is set)
         7    1 dtype  of the payload (1 float32, 2 int16), fixed per kind
         8    4 R      u32 (rows: centroids, scores, proxy samples, labels)
        12    4 d      u32 (columns; 1 for scores and labels)
        16    8 value  f64: the budget share a centroids round asks for, ε of the scores, σ of the labels' noise; 0 when unset
        24    4 tag    4 bytes of a sha256: φ's fingerprint (centroids, proxy features), or the
                       fingerprint of the message answered (scores, labels); zero when unset
        28    n payload
      28+n    4 CRC32  of everything before it

`nbytes` is the exact length of `to_bytes()`, so the reported traffic is the real traffic (scores: `4·R + 32` bytes).
Parsing is strict (every field checked; every byte string that parses writes itself back unchanged); whatever is
wrong raises `ECOSInputError` with one sentence. The tag is a consistency check against mix-ups (wrong φ, scores
for another compression run), not authentication: like the CRC, it does not stop a forger.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ecos_pl.protocol.errors import ECOSInputError, check_epsilon, check_scores

#: a label that is none: a client's abstention in a `LabelsMessage`, a target not trained on, a pool sample outside
#: the client's classes (`ecos_pl.data.base`)
NONE_LABEL = -1
MAGIC, SCHEMA_VERSION = b"ECOS", 2
KIND_CENTROIDS = 1
KIND_SCORES = 2
KIND_PROXY_FEATURES = 3
KIND_LABELS = 4
KIND_NAMES = {KIND_CENTROIDS: "centroids", KIND_SCORES: "scores", KIND_PROXY_FEATURES: "proxy features", KIND_LABELS: "labels"}
FLAG_RADII, FLAG_VALUE, FLAG_TAG = 1, 2, 4
DTYPE_FLOAT32, DTYPE_INT16 = 1, 2
DTYPES = {DTYPE_FLOAT32: np.dtype("<f4"), DTYPE_INT16: np.dtype("<i2")}
TAG_BYTES = 4
_NO_TAG = bytes(TAG_BYTES)
# magic, version u8, kind u8, flags u8, dtype u8, R u32, d u32, value f64, tag 4s
_HEADER = struct.Struct(f"<4sBBBBIId{TAG_BYTES}s")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size
#: bounds of the header's shape fields, checked before anything is allocated for a payload:
#: rows (R centroids or scores, B proxy samples or labels), columns d, and values R·d (1 GiB of float32)
MAX_ROWS, MAX_DIM, MAX_VALUES = 2**24, 2**16, 2**28
#: the longest message there can be; a longer file is refused before it is read
MAX_MESSAGE_BYTES = HEADER_BYTES + 4 * (MAX_VALUES + MAX_ROWS)


def check_message_shape(what: str, r: int, d: int) -> None:
    """R and d within the bounds every reader accepts (a message that breaks them is never written or read)."""
    if not (1 <= r <= MAX_ROWS and 1 <= d <= MAX_DIM and r * d <= MAX_VALUES):
        raise ECOSInputError(
            f"{what} message says R={r}, d={d}; this program reads 1 <= R <= {MAX_ROWS}, 1 <= d <= {MAX_DIM} "
            f"and R·d <= {MAX_VALUES}."
        )


def phi_tag(fingerprint: str) -> bytes:
    """The 4-byte tag of a φ, from its `fingerprint()` string."""
    return hashlib.sha256(f"ecos-phi:{fingerprint}".encode()).digest()[:TAG_BYTES]


def answer_tag(message) -> bytes:
    """The 4-byte tag a reply carries: the fingerprint of the message it answers (which carries φ's tag)."""
    return hashlib.sha256(message.to_bytes()).digest()[:TAG_BYTES]


def wire_float32(values, name: str) -> np.ndarray:
    """`values` as the float32 they travel as, checked after the cast: NaN, ±inf, and a finite value that
    float32 cannot hold (|x| > 3.4e38, which the cast turns into inf) are each one sentence naming `name`."""
    x = np.asarray(values)
    if np.issubdtype(x.dtype, np.number) and not np.issubdtype(x.dtype, np.complexfloating):
        with np.errstate(over="ignore", invalid="ignore"):
            wide = x.astype(np.float64, copy=False)
            out = x.astype(np.float32)
        if not np.isfinite(wide).all():
            raise ECOSInputError(f"{name} contain NaN or infinite values.")
        if not np.isfinite(out).all():
            big = float(np.abs(wide).max())
            raise ECOSInputError(f"{name} hold {big:g}, beyond the float32 range of a message (|x| <= {np.finfo(np.float32).max:.4g}).")
    else:
        out = np.asarray(values, dtype=np.float32)  # a non-numeric array: the caller's own checks name it
    return np.ascontiguousarray(out)


def _check_tag(tag) -> bytes | None:
    if tag is None:
        return None
    if isinstance(tag, str):
        try:
            tag = bytes.fromhex(tag)
        except ValueError:
            raise ECOSInputError(f"tag must be {TAG_BYTES} bytes or {2 * TAG_BYTES} hex digits, got {tag!r}.") from None
    if not isinstance(tag, (bytes, bytearray)) or len(tag) != TAG_BYTES:
        raise ECOSInputError(f"tag must be {TAG_BYTES} bytes, got {tag!r}.")
    return bytes(tag)


def _pack(kind: int, flags: int, dtype: int, r: int, d: int, value: float | None, tag: bytes | None, payload: bytes) -> bytes:
    check_message_shape(KIND_NAMES[kind], r, d)
    if value is not None:
        flags |= FLAG_VALUE
    if tag is not None:
        flags |= FLAG_TAG
    body = _HEADER.pack(MAGIC, SCHEMA_VERSION, kind, flags, dtype, r, d, 0.0 if value is None else float(value), tag or _NO_TAG)
    return body + payload + _CRC.pack(zlib.crc32(body + payload))


@dataclass(frozen=True)
class _Parsed:
    kind: int
    flags: int
    dtype: int
    r: int
    d: int
    value: float | None
    tag: bytes | None
    payload: bytes


def _envelope(data, what: str) -> _Parsed:
    """Magic, version, checksum and the header's own consistency; nothing about the kind yet."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ECOSInputError(f"{what} message must be bytes, got {type(data).__name__}.")
    data = bytes(data)
    if len(data) < HEADER_BYTES:
        raise ECOSInputError(f"{what} message is truncated: {len(data)} bytes, the header alone is {HEADER_BYTES}.")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ECOSInputError(f"{what} message has {len(data)} bytes, more than any message can ({MAX_MESSAGE_BYTES}).")
    magic, version, kind, flags, dtype, r, d, value, tag = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ECOSInputError(f"{what} message does not start with the ECOS magic bytes; it is not an ECOS message.")
    if version != SCHEMA_VERSION:
        raise ECOSInputError(f"{what} message has schema version {version}; this program reads version {SCHEMA_VERSION}.")
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if zlib.crc32(data[: len(data) - _CRC.size]) != crc:
        raise ECOSInputError(f"{what} message fails its checksum; it was truncated or altered.")
    if not flags & FLAG_VALUE and data[16:24] != bytes(8):
        raise ECOSInputError(f"{what} message has a value field ({value!r}) but its flags say none was set.")
    if not flags & FLAG_TAG and tag != _NO_TAG:
        raise ECOSInputError(f"{what} message has a tag but its flags say none was set.")
    return _Parsed(
        kind, flags, dtype, r, d,
        float(value) if flags & FLAG_VALUE else None,
        tag if flags & FLAG_TAG else None,
        data[_HEADER.size : len(data) - _CRC.size],
    )


def _unpack(data, kind: int, dtype: int, allowed_flags: int) -> tuple[_Parsed, np.ndarray]:
    """The envelope, then this kind's flags, dtype and shape fields; the payload as a 1-D array of the kind's dtype."""
    what = KIND_NAMES[kind]
    p = _envelope(data, what)
    if p.kind != kind:
        got = KIND_NAMES.get(p.kind, f"unknown-kind ({p.kind})")
        raise ECOSInputError(f"{what} message expected, but this is a {got} message; wrong file?")
    if p.flags & ~allowed_flags:
        raise ECOSInputError(f"{what} message has flags {p.flags:#04x}, which this kind does not use.")
    if p.dtype != dtype:
        raise ECOSInputError(f"{what} message has dtype code {p.dtype}; {what} are always {DTYPES[dtype].name} (code {dtype}).")
    check_message_shape(what, p.r, p.d)
    itemsize = DTYPES[dtype].itemsize
    if len(p.payload) % itemsize:
        raise ECOSInputError(f"{what} message has {len(p.payload)} payload bytes, not a whole number of {itemsize}-byte values.")
    return p, np.frombuffer(p.payload, dtype=DTYPES[dtype])


def _expect_size(what: str, values: np.ndarray, n_items: int, shape: str) -> None:
    if values.size != n_items:
        raise ECOSInputError(
            f"{what} message says {shape} but carries {values.size} values, not {n_items}; it is truncated or malformed."
        )


@dataclass(frozen=True, eq=False)
class CentroidsMessage:
    """Cloud to client: the R centroids of the pool's features (and optionally each cluster's radius).

    `tag`: φ's tag (`phi_tag(phi.fingerprint())`) when the cloud knows φ, so the
    client can check that it extracts its features with the same φ.
    `share`: the part of the client's score budget this round asks for, in (0, 1], when a strategy asks
    several rounds (`ecos_adaptive`); None: one round, the whole budget. The client decides whether it
    has that much left (`ECOSClient`), so the cloud can split the client's ε but never enlarge it.
    """

    KIND = KIND_CENTROIDS  # not a field

    centroids: np.ndarray  # float32 [R, d]
    radii: np.ndarray | None = None  # float32 [R]
    tag: bytes | None = None
    share: float | None = None

    def __post_init__(self) -> None:
        c = wire_float32(self.centroids, "centroids")
        if c.ndim != 2 or c.shape[0] < 1 or c.shape[1] < 1:
            raise ECOSInputError(f"centroids must be a non-empty [R, d] array, got shape {c.shape}.")
        object.__setattr__(self, "centroids", c)
        if self.radii is not None:
            radii = wire_float32(self.radii, "radii")
            if radii.shape != (c.shape[0],) or not np.isfinite(radii).all() or (radii < 0).any():
                raise ECOSInputError(f"radii must be {c.shape[0]} finite non-negative numbers, one per centroid.")
            object.__setattr__(self, "radii", radii)
        object.__setattr__(self, "tag", _check_tag(self.tag))
        if self.share is not None:
            share = self.share
            if isinstance(share, bool) or not isinstance(share, (int, float, np.floating)) or not 0.0 < float(share) <= 1.0:
                raise ECOSInputError(f"share must be a number in (0, 1], the part of the client's budget a round asks for; got {share!r}.")
            object.__setattr__(self, "share", float(share))

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
        payload = self.centroids.astype("<f4").tobytes() + (self.radii.astype("<f4").tobytes() if self.radii is not None else b"")
        flags = FLAG_RADII if self.radii is not None else 0
        return _pack(KIND_CENTROIDS, flags, DTYPE_FLOAT32, self.n_centroids, self.dim, self.share, self.tag, payload)

    @classmethod
    def from_bytes(cls, data: bytes) -> "CentroidsMessage":
        p, values = _unpack(data, KIND_CENTROIDS, DTYPE_FLOAT32, FLAG_RADII | FLAG_TAG | FLAG_VALUE)
        has_radii = bool(p.flags & FLAG_RADII)
        _expect_size("centroids", values, p.r * p.d + (p.r if has_radii else 0), f"R={p.r}, d={p.d}{' with radii' if has_radii else ''}")
        radii = values[p.r * p.d :].copy() if has_radii else None
        return cls(values[: p.r * p.d].reshape(p.r, p.d).copy(), radii, p.tag, p.value)


def _vector_message(cls, data: bytes, kind: int, dtype: int, what: str, per: str, rows: str):
    """A message of one value per row (scores, labels) from bytes: d must be 1, with a value (ε, σ) and a tag allowed."""
    p, values = _unpack(data, kind, dtype, FLAG_VALUE | FLAG_TAG)
    if p.d != 1:
        raise ECOSInputError(f"{what} message says d={p.d}; {what} are one {per} (d=1).")
    _expect_size(what, values, p.r, f"{rows}={p.r}")
    return cls(values.copy(), p.value, p.tag)


@dataclass(frozen=True, eq=False)
class ScoresMessage:
    """Client to cloud: one centroid-coverage score per centroid, nothing per sample.

    `epsilon` is the ε the client spent on these scores, Gaussian or Laplace (None: exact counts).
    `tag` is `answer_tag(centroids)`: which centroids (and so which φ) the scores answer.
    """

    KIND = KIND_SCORES  # not a field

    scores: np.ndarray  # float32 [R]
    epsilon: float | None = None
    tag: bytes | None = None

    def __post_init__(self) -> None:
        s = np.asarray(self.scores)
        scores = check_scores(s, s.shape[0] if s.ndim == 1 else -1)
        if len(scores) < 1:
            raise ECOSInputError("scores is empty; there must be one score per centroid.")
        object.__setattr__(self, "scores", wire_float32(scores, "scores"))  # checked as sent: 1e39 is no float32
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "tag", _check_tag(self.tag))

    @property
    def n_centroids(self) -> int:
        return self.scores.shape[0]

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 4 * self.n_centroids

    def to_bytes(self) -> bytes:
        return _pack(KIND_SCORES, 0, DTYPE_FLOAT32, self.n_centroids, 1, self.epsilon, self.tag, self.scores.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ScoresMessage":
        return _vector_message(cls, data, KIND_SCORES, DTYPE_FLOAT32, "scores", "number per centroid", "R")


@dataclass(frozen=True, eq=False)
class ProxyFeaturesMessage:
    """Cloud to client (`pseudo_label` only): φ of the B proxy samples, to be labelled by the client."""

    KIND = KIND_PROXY_FEATURES  # not a field

    features: np.ndarray  # float32 [B, d]
    tag: bytes | None = None

    def __post_init__(self) -> None:
        f = wire_float32(self.features, "proxy features")
        if f.ndim != 2 or f.shape[0] < 1 or f.shape[1] < 1:
            raise ECOSInputError(f"proxy features must be a non-empty [B, d] array, got shape {f.shape}.")
        object.__setattr__(self, "features", f)
        object.__setattr__(self, "tag", _check_tag(self.tag))

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
        return _pack(KIND_PROXY_FEATURES, 0, DTYPE_FLOAT32, self.n_samples, self.dim, None, self.tag, self.features.astype("<f4").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "ProxyFeaturesMessage":
        p, values = _unpack(data, KIND_PROXY_FEATURES, DTYPE_FLOAT32, FLAG_TAG)
        _expect_size("proxy features", values, p.r * p.d, f"B={p.r}, d={p.d}")
        return cls(values.reshape(p.r, p.d).copy(), p.tag)


@dataclass(frozen=True, eq=False)
class LabelsMessage:
    """Client to cloud (`pseudo_label` only): one class per proxy sample, `-1` where the client abstained.

    Labels travel as int16 (two bytes each); `sigma` is the Gaussian noise the
    client added to its vote histograms (None: no noise), kept for the cloud's accounting.
    `tag` is `answer_tag(proxy_features)`: which proxy set the labels answer.
    """

    KIND = KIND_LABELS  # not a field

    labels: np.ndarray  # int16 [B], -1 = dropped
    sigma: float | None = None
    tag: bytes | None = None

    def __post_init__(self) -> None:
        lab = np.asarray(self.labels)
        if lab.ndim != 1 or lab.shape[0] < 1:
            raise ECOSInputError(f"labels must be a non-empty 1-D array, got shape {lab.shape}.")
        if not np.issubdtype(lab.dtype, np.integer):
            raise ECOSInputError(f"labels must be integers, got dtype {lab.dtype}.")
        if (lab < -1).any() or (lab > np.iinfo(np.int16).max).any():
            raise ECOSInputError("labels must be class indices >= 0, or -1 for a dropped sample.")
        object.__setattr__(self, "labels", lab.astype(np.int16))
        if self.sigma is not None:
            sigma = float(self.sigma)
            if not np.isfinite(sigma) or sigma <= 0:
                raise ECOSInputError(f"sigma must be a positive, finite number (or None for no noise), got {self.sigma!r}.")
            object.__setattr__(self, "sigma", sigma)
        object.__setattr__(self, "tag", _check_tag(self.tag))

    @property
    def n_samples(self) -> int:
        return self.labels.shape[0]

    @property
    def nbytes(self) -> int:
        return HEADER_BYTES + 2 * self.n_samples

    def to_bytes(self) -> bytes:
        return _pack(KIND_LABELS, 0, DTYPE_INT16, self.n_samples, 1, self.sigma, self.tag, self.labels.astype("<i2").tobytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "LabelsMessage":
        return _vector_message(cls, data, KIND_LABELS, DTYPE_INT16, "labels", "class per proxy sample", "B")


MESSAGE_TYPES = {
    KIND_CENTROIDS: CentroidsMessage,
    KIND_SCORES: ScoresMessage,
    KIND_PROXY_FEATURES: ProxyFeaturesMessage,
    KIND_LABELS: LabelsMessage,
}


def parse_message(data: bytes, expected=None):
    """Any ECOS message (or, with `expected`, one of those classes); `ECOSInputError` (one sentence) for anything else."""
    if expected is not None:
        return expected.from_bytes(data)
    p = _envelope(data, "ECOS")
    if p.kind not in MESSAGE_TYPES:
        raise ECOSInputError(f"ECOS message has unknown kind {p.kind}.")
    return MESSAGE_TYPES[p.kind].from_bytes(data)
