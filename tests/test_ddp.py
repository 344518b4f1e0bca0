"""`train.py` under 2-process CPU DDP (gloo): both ranks extract the pool's φ features through
`trainer.predict`, every rank trains on the identical proxy set, and reruns reuse it."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from test_train import ROOT, TINY


def test_ddp_ranks_share_one_proxy_set_and_reruns_reuse_it(tmp_path):
    cache = tmp_path / "cache"  # fresh: the features are extracted in this run, not found from another test
    results = tmp_path / "ddp.json"
    cmd = [sys.executable, "train.py", *TINY, "trainer=ddp_cpu", "callbacks=none", "seed=4", f"cache_dir={cache}",
           f"hydra.run.dir={tmp_path / 'run'}", f"results_file={results}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(results.read_text())
    assert res["world_size"] == 2
    assert len(res["proxy_set_sha1_per_rank"]) == 2
    assert set(res["proxy_set_sha1_per_rank"]) == {res["proxy_set_sha1"]}
    assert res["selection_reused"] is False
    assert 0.0 <= res["client_test_acc"] <= 1.0

    # the pool's features: extracted by trainer.predict on both ranks, each row written by exactly one of them
    info = res["feature_cache"]
    assert info["via"] == "trainer.predict" and info["n_ranks"] == 2
    assert sum(info["rows_per_rank"]) == res["n_pool"] and min(info["rows_per_rank"]) > 0
    path = Path(info["path"])
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["n_ranks"] == 2 and side["rows_per_rank"] == info["rows_per_rank"]
    features = np.load(path, mmap_mode="r")
    assert features.dtype == np.float32 and not list(path.parent.glob("*.tmp"))
    # ... and they are the features one process computes for the same configuration (TINY: phi=pca, seed 4)
    from ecos_pl.data.digits_lite import DigitsLite
    from ecos_pl.phi import PCAPixels

    pool = DigitsLite(seed=4, cache_dir=cache / "data").load().pool.images
    single = PCAPixels(n_components=64, seed=4).fit(pool).transform(pool)
    np.testing.assert_allclose(features, single, rtol=0, atol=1e-5)

    rerun = tmp_path / "rerun.json"
    cmd[-1] = f"results_file={rerun}"
    cmd[-2] = f"hydra.run.dir={tmp_path / 'rerun'}"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads(rerun.read_text())
    assert again["selection_reused"] is True
    assert again["feature_cache"] is None  # a reused selection needs no φ: predict did not run
    assert again["proxy_set_sha1"] == res["proxy_set_sha1"]
    assert again["selection_artifact"] == res["selection_artifact"]
    assert Path(res["selection_artifact"]).is_file()
