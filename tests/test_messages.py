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
