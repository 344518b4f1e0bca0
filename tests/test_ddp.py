"""`train.py` under 2-process CPU DDP (gloo): every rank trains on the identical proxy set; reruns reuse it."""

import json
import subprocess
import sys
from pathlib import Path

from test_train import ROOT, TINY


def test_ddp_ranks_share_one_proxy_set_and_reruns_reuse_it(tmp_path):
    results = tmp_path / "ddp.json"
    cmd = [sys.executable, "train.py", *TINY, "trainer=ddp_cpu", "callbacks=none", "seed=4",
           f"hydra.run.dir={tmp_path / 'run'}", f"results_file={results}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(results.read_text())
    assert res["world_size"] == 2
    assert len(res["proxy_set_sha1_per_rank"]) == 2
    assert set(res["proxy_set_sha1_per_rank"]) == {res["proxy_set_sha1"]}
    assert res["selection_reused"] is False
    assert 0.0 <= res["client_test_acc"] <= 1.0

    rerun = tmp_path / "rerun.json"
    cmd[-1] = f"results_file={rerun}"
    cmd[-2] = f"hydra.run.dir={tmp_path / 'rerun'}"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.loads(rerun.read_text())
    assert again["selection_reused"] is True
    assert again["proxy_set_sha1"] == res["proxy_set_sha1"]
    assert again["selection_artifact"] == res["selection_artifact"]
    assert Path(res["selection_artifact"]).is_file()
