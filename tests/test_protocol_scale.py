"""The protocol at scale: the benchmark script end to end (tiny), memory stays linear, no needless copies."""

import importlib.util
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from ecos_pl.protocol import ECOSClient, ECOSCloud, kcenter_greedy

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "protocol_scale.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("protocol_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_runs_tiny_with_reference(bench, tmp_path):
    out = tmp_path / "scale.json"
    argv = ["--n", "20000", "--dim", "32", "--centroids", "50", "--budget", "500", "--components", "20"]
    returned = bench.main([*argv, "--reference", "--json", str(out), "--seed", "1"])
    result = json.loads(out.read_text())
    for key in (
        "compress_s", "score_s", "select_s", "total_s", "peak_rss_mb", "feature_matrix_mb", "extra_rss_mb",
        "in_domain_fraction", "reference_total_s", "reference_in_domain_fraction", "speedup", "config",
    ):  # fmt: skip
        assert key in result, key
    assert result["total_s"] == pytest.approx(returned["total_s"])
    assert result["n_selected"] == 500
    assert result["in_domain_fraction"] > 0.9
    assert result["reference_in_domain_fraction"] > 0.9
    assert math.isfinite(result["speedup"]) and result["speedup"] > 0
    assert result["feature_matrix_mb"] == pytest.approx(20000 * 32 * 4 / 2**20)
    assert result["extra_rss_mb"] == pytest.approx(result["peak_rss_mb"] - result["feature_matrix_mb"])
    assert not list(tmp_path.glob(".*.tmp")), "the atomic write left its temp file behind"


def test_dense_reference_kcenter_picks_what_kcenter_greedy_picks(bench):
    x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    np.testing.assert_array_equal(bench.dense_kcenter(x, 40, 7), kcenter_greedy(x, 40, 7))


def test_kcenter_greedy_memory_is_linear_in_the_cluster():
    n, d, k = 20_000, 16, 50
    x = np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)
    tracemalloc.start()
    try:
        picked = kcenter_greedy(x, k)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(np.unique(picked)) == k
    assert peak < 40 * n * 8  # a few length-n vectors; an n×n matrix would be n*n*8 = 3.2 GB
    assert peak < n * n * 8 / 1000


def _unit_pool(n=4000, d=24, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_float32_unit_norm_pool_is_never_copied():
    pool = _unit_pool()
    cloud = ECOSCloud(pool, 16, seed=0)
    assert cloud.pool_features is pool
    reply = ECOSClient(pool[:100]).score(cloud.compress())
    assert len(cloud.select(reply, 50)) == 50
    assert cloud.pool_features is pool


def test_a_float16_memmap_pool_is_converted_once_and_selects_as_float32(tmp_path):
    pool16 = np.lib.format.open_memmap(tmp_path / "pool.npy", mode="w+", dtype=np.float16, shape=(4000, 24))
    pool16[:] = _unit_pool() * 3.0  # not unit-norm: converted and normalised in one new array
    pool16.flush()
    pool16 = np.load(tmp_path / "pool.npy", mmap_mode="r")
    as32 = np.asarray(pool16, dtype=np.float32)
    cloud16, cloud32 = ECOSCloud(pool16, 16, seed=0), ECOSCloud(as32, 16, seed=0)
    feats = cloud16.pool_features
    assert feats.dtype == np.float32 and feats.flags.c_contiguous and feats.flags.writeable
    assert not np.shares_memory(feats, as32)
    np.testing.assert_array_equal(feats, cloud32.pool_features)
    client = ECOSClient(as32[:200])
    picks16 = cloud16.select(client.score(cloud16.compress()), 100)
    picks32 = cloud32.select(client.score(cloud32.compress()), 100)
    np.testing.assert_array_equal(picks16, picks32)
