"""Every bad input of ECOS.md that the protocol touches: one clear error that names the parameter."""

import numpy as np
import pytest

from ecos_pl.protocol import (
    ECOSClient,
    ECOSInputError,
    ScoresMessage,
    allocate_budget,
    compress,
    coverage_scores,
    make_sampler,
)


@pytest.fixture(scope="module")
def small():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 8)).astype(np.float32)
    message, clusters = compress(pool, 10, seed=0)
    return pool, message, clusters


@pytest.mark.parametrize("budget", [0, -5, 201, 2.5])
@pytest.mark.parametrize("sampler", ["ecos", "random", "kcenter", "uniform_cluster", "oracle_central"])
def test_budget_out_of_range(small, sampler, budget):
    pool = small[0]
    with pytest.raises(ECOSInputError, match="budget"):
        make_sampler(sampler).sample(pool, ECOSClient(pool[:20]), budget, seed=0)


@pytest.mark.parametrize("r", [0, -1, 201])
def test_n_centroids_out_of_range(small, r):
    with pytest.raises(ECOSInputError, match="n_centroids"):
        compress(small[0], r)


def test_empty_client(small):
    with pytest.raises(ECOSInputError, match="client_features is empty"):
        ECOSClient(np.zeros((0, 8), np.float32))
    with pytest.raises(ECOSInputError, match="client_features is empty"):
        coverage_scores(np.zeros((0, 8), np.float32), small[1])


def test_dimension_mismatch(small):
    with pytest.raises(ECOSInputError, match="client_features has dimension 5 but the centroids have dimension 8"):
        coverage_scores(np.ones((3, 5), np.float32), small[1])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features(small, bad):
    pool = small[0].copy()
    pool[17, 3] = bad
    with pytest.raises(ECOSInputError, match="pool_features contains NaN or infinite"):
        compress(pool, 10)
    client = small[0][:5].copy()
    client[0, 0] = bad
    with pytest.raises(ECOSInputError, match="client_features contains NaN or infinite"):
        coverage_scores(client, small[1])


@pytest.mark.parametrize(
    "scores, words",
    [
        (np.r_[np.ones(9), -1.0], "negative"),
        (np.r_[np.ones(9), np.nan], "NaN"),
        (np.ones(9), "length 9 but there are 10 centroids"),
        (np.ones((10, 1)), "1-D"),
        (np.zeros(10), "all zero"),
    ],
)
def test_bad_scores(small, scores, words):
    with pytest.raises(ECOSInputError, match=words) as err:
        allocate_budget(scores, small[2].sizes, 20)
    assert "scores" in str(err.value)


def test_bad_scores_message():
    with pytest.raises(ECOSInputError, match="scores contains negative"):
        ScoresMessage(np.array([1.0, -2.0]))


@pytest.mark.parametrize("eps", [0, -1, float("nan"), float("inf"), "abc"])
def test_bad_epsilon(small, eps):
    with pytest.raises(ECOSInputError, match="epsilon"):
        coverage_scores(small[0][:5], small[1], epsilon=eps)
    with pytest.raises(ECOSInputError, match="epsilon"):
        ECOSClient(small[0][:5], epsilon=eps)


def test_unknown_sampler():
    with pytest.raises(ValueError, match="sampler='nope'"):
        make_sampler("nope")


def test_atomic_writes_leave_the_old_file_whole_when_the_writer_fails(tmp_path):
    import json
    import os
    import stat

    from ecos_pl.atomic import write_atomic, write_json_atomic, write_text_atomic

    path = write_json_atomic({"a": 1}, tmp_path / "sub" / "r.json")
    assert json.loads(path.read_text()) == {"a": 1}
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # shareable, not mkstemp's private 0600

    def fails(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fails)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temporary left behind
    assert write_text_atomic(tmp_path / "t.csv", "a,b\r\n1,2\n").read_bytes() == b"a,b\r\n1,2\n"  # no newline translation
