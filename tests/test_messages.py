"""The two protocol messages: exact sizes, round trips, and clear failures on damaged bytes."""

import numpy as np
import pytest

from ecos_pl.protocol import CentroidsMessage, ECOSInputError, ScoresMessage
from ecos_pl.protocol.messages import HEADER_BYTES


def test_centroids_round_trip_and_size():
    rng = np.random.default_rng(0)
    msg = CentroidsMessage(rng.normal(size=(16, 8)), radii=rng.uniform(size=16))
    data = msg.to_bytes()
    assert len(data) == msg.nbytes == HEADER_BYTES + 4 * (16 * 8 + 16)
    back = CentroidsMessage.from_bytes(data)
    np.testing.assert_array_equal(back.centroids, msg.centroids)
    np.testing.assert_array_equal(back.radii, msg.radii)


def test_scores_round_trip_and_size():
    msg = ScoresMessage(np.arange(64, dtype=np.float32), epsilon=0.5)
    data = msg.to_bytes()
    assert len(data) == msg.nbytes == HEADER_BYTES + 4 * 64
    assert HEADER_BYTES <= 32
    back = ScoresMessage.from_bytes(data)
    np.testing.assert_array_equal(back.scores, msg.scores)
    assert back.epsilon == 0.5
    assert ScoresMessage.from_bytes(ScoresMessage(np.ones(3)).to_bytes()).epsilon is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic", "kind"])
def test_damaged_messages_fail_clearly(damage):
    data = bytearray(ScoresMessage(np.ones(10)).to_bytes())
    if damage == "truncate":
        data = data[:-5]
    elif damage == "flip":
        data[HEADER_BYTES] ^= 0xFF
    elif damage == "magic":
        data[:4] = b"XXXX"
    with pytest.raises(ECOSInputError, match="scores message"):
        if damage == "kind":
            ScoresMessage.from_bytes(CentroidsMessage(np.ones((2, 2))).to_bytes())
        else:
            ScoresMessage.from_bytes(bytes(data))


def test_header_layout_is_documented_and_self_describing():
    """Schema 2: magic, version, kind, flags, dtype, R, d, value (ε/σ), tag, then payload and CRC32."""
    import struct

    from ecos_pl.protocol.messages import SCHEMA_VERSION, answer_tag, phi_tag

    assert HEADER_BYTES == 32 and SCHEMA_VERSION == 2
    down = CentroidsMessage(np.ones((3, 2)), tag=phi_tag("some φ"))
    up = ScoresMessage(np.arange(3.0), epsilon=0.25, tag=answer_tag(down))
    data = up.to_bytes()
    magic, version, kind, flags, dtype, r, d, eps, tag = struct.unpack_from("<4sBBBBIId4s", data)
    assert (magic, version, kind, dtype, r, d, eps, tag) == (b"ECOS", 2, 2, 1, 3, 1, 0.25, answer_tag(down))
    assert flags == 2 | 4  # value and tag set
    back = ScoresMessage.from_bytes(data)
    assert back.tag == answer_tag(down) and back.epsilon == 0.25
    assert CentroidsMessage.from_bytes(down.to_bytes()).tag == phi_tag("some φ") != phi_tag("another φ")
    assert ScoresMessage(np.ones(2)).tag is None


@pytest.mark.parametrize("field, value, words", [
    (4, 1, "schema version 1"), (7, 2, "dtype"), (6, 0x80, "flags"), (12, 2, "d=2"),
])
def test_wrong_header_fields_fail_clearly_even_with_a_valid_checksum(field, value, words):
    import zlib

    data = bytearray(ScoresMessage(np.ones(4)).to_bytes())
    data[field] = value
    data[-4:] = zlib.crc32(bytes(data[:-4])).to_bytes(4, "little")
    with pytest.raises(ECOSInputError, match=words):
        ScoresMessage.from_bytes(bytes(data))


@pytest.mark.parametrize("scores, words", [([1.0, float("nan")], "NaN"), ([1.0, -1.0], "negative"), ([], "empty")])
def test_bad_score_values_are_refused(scores, words):
    with pytest.raises(ECOSInputError, match=words):
        ScoresMessage(np.array(scores, dtype=np.float32))
