"""Property-based tests: message parsing never fails in any other way than one clear error; selection is always a valid subset."""

import struct
import warnings
import zlib

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ecos_pl.protocol import ECOSCloud, ECOSInputError
from ecos_pl.protocol.messages import (
    HEADER_BYTES,
    MESSAGE_TYPES,
    CentroidsMessage,
    LabelsMessage,
    ProxyFeaturesMessage,
    ScoresMessage,
    parse_message,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
tags = st.none() | st.binary(min_size=4, max_size=4)


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["centroids", "scores", "proxy", "labels"]))
    r = draw(st.integers(1, 6))
    tag = draw(tags)
    if kind == "centroids":
        d = draw(st.integers(1, 4))
        c = np.array(draw(st.lists(finite32, min_size=r * d, max_size=r * d)), np.float32).reshape(r, d)
        radii = draw(st.none() | st.lists(st.floats(0, 10, width=32), min_size=r, max_size=r))
        return CentroidsMessage(c, None if radii is None else np.array(radii, np.float32), tag)
    if kind == "scores":
        s = draw(st.lists(st.floats(0, 1e6, width=32), min_size=r, max_size=r))
        return ScoresMessage(np.array(s, np.float32), draw(st.none() | st.floats(1e-3, 100)), tag)
    if kind == "proxy":
        d = draw(st.integers(1, 4))
        return ProxyFeaturesMessage(np.array(draw(st.lists(finite32, min_size=r * d, max_size=r * d)), np.float32).reshape(r, d), tag)
    labels = draw(st.lists(st.integers(-1, 300), min_size=r, max_size=r))
    return LabelsMessage(np.array(labels, np.int64), draw(st.none() | st.floats(0.1, 50)), tag)


def reseal(body: bytes) -> bytes:
    """Replace the CRC so a mutation reaches the checks behind the checksum."""
    return body[:-4] + struct.pack("<I", zlib.crc32(body[:-4]))


def check_parse(data: bytes) -> None:
    """The property: a valid message that writes itself back byte for byte, or ECOSInputError, never anything else."""
    try:
        msg = parse_message(data)
    except ECOSInputError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert type(msg) in MESSAGE_TYPES.values()
    assert msg.to_bytes() == bytes(data) and msg.nbytes == len(data)
    again = type(msg).from_bytes(msg.to_bytes())
    assert again.to_bytes() == msg.to_bytes()


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_clearly(data):
    check_parse(data)
    check_parse(b"ECOS\x02" + data)
    if len(data) >= 4:
        check_parse(reseal(b"ECOS\x02" + data))


@FAST
@given(messages())
def test_valid_messages_round_trip(msg):
    data = msg.to_bytes()
    assert len(data) == msg.nbytes
    back = type(msg).from_bytes(data)
    assert back.to_bytes() == data and back.tag == msg.tag
    assert parse_message(data).to_bytes() == data


@FAST
@given(messages(), st.data())
def test_mutated_messages_parse_or_fail_clearly(msg, data):
    raw = bytearray(msg.to_bytes())
    how = data.draw(st.sampled_from(["flip", "header", "truncate", "extend", "field"]))
    if how == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif how == "header":  # any header bytes, resealed: every field check is reached
        i = data.draw(st.integers(4, HEADER_BYTES - 5))
        raw[i] = data.draw(st.integers(0, 255))
        raw = bytearray(reseal(bytes(raw)))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        if data.draw(st.booleans()) and len(raw) >= 4:
            raw = bytearray(reseal(bytes(raw)))
    elif how == "extend":
        raw = bytearray(reseal(bytes(raw[:-4]) + data.draw(st.binary(min_size=1, max_size=12)) + b"\0\0\0\0"))
    else:  # one 4-byte field (R, d, value halves, tag, a payload value) set to anything, resealed
        i = data.draw(st.sampled_from([8, 12, 16, 20, 24] + list(range(28, len(raw) - 7, 4))))
        raw[i : i + 4] = data.draw(st.binary(min_size=4, max_size=4))
        raw = bytearray(reseal(bytes(raw)))
    check_parse(bytes(raw))


@st.composite
def selection_problems(draw):
    n = draw(st.integers(5, 120))
    d = draw(st.integers(2, 8))
    r = draw(st.integers(1, min(n, 12)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(draw(st.integers(1, 5)), d)) * draw(st.floats(0.0, 5.0))
    x = (centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, d))).astype(np.float32)
    if draw(st.booleans()):  # duplicated rows: k-center must still not pick one index twice
        x[: n // 2] = x[0]
    scores = draw(st.lists(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0, 40.0]) | st.floats(0, 1e4), min_size=r, max_size=r))
    budget = draw(st.integers(1, n))
    temperature = draw(st.sampled_from([0.25, 1.0, 4.0]))
    return x, r, np.array(scores, np.float32), budget, seed, temperature


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(selection_problems())
def test_selection_is_a_valid_subset_of_the_pool(problem):
    x, r, scores, budget, seed, temperature = problem
    assume(scores.sum() > 0)
    cloud = ECOSCloud(x, r, seed=seed, temperature=temperature, niter=5)
    down = cloud.compress()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the proxy set is smaller than the budget" is allowed here
        indices = cloud.select([ScoresMessage(scores), ScoresMessage(scores[::-1].copy())], budget)
    assert down.n_centroids == r
    assert indices.dtype == np.int64 and indices.ndim == 1
    assert len(np.unique(indices)) == len(indices)  # no duplicates
    assert len(indices) <= budget  # never over the budget
    assert ((indices >= 0) & (indices < len(x))).all()  # only pool indices
    assert len(indices) == int(cloud.allocation.sum())
    scored = np.flatnonzero(scores + scores[::-1] > 0)
    assert np.isin(cloud.clusters.assignments[indices], scored).all()  # nothing from an unscored cluster

