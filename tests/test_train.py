"""`train.py` end to end with a tiny configuration, as a user runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "scenario.epochs=1",
    "scenario.teacher.epochs=1",
    "backbone.teacher=test_resnet",
    "backbone.student=test_resnet",
    "+trainer.limit_train_batches=2",
    "trainer.check_val_every_n_epoch=1",
    "phi=pca",
    "budget=120",
    "n_centroids=16",
    "logger=csv",
]

REQUIRED = {
    "scenario", "sampler", "data", "seed", "budget", "n_centroids", "n_selected", "client_test_acc",
    "teacher_test_acc", "in_domain_fraction", "bytes_down", "bytes_up", "epsilon", "timings",
}


def run_train(tmp_path, *overrides, callbacks="none", tiny=TINY):
    out = tmp_path / "run"
    results = tmp_path / "results.json"
    cmd = [sys.executable, "train.py", *tiny, f"hydra.run.dir={out}", f"results_file={results}", f"callbacks={callbacks}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(results.read_text()), proc


@pytest.mark.parametrize("sampler", ["ecos", "random"])
def test_train_end_to_end(tmp_path, sampler):
    # the ecos run also goes through the default callbacks (progress bar, checkpoint, diagnostics)
    res, proc = run_train(tmp_path, f"sampler={sampler}", "seed=2", callbacks="default" if sampler == "ecos" else "none")
    assert REQUIRED <= res.keys()
    assert res["sampler"] == sampler and res["scenario"] == "compression" and res["data"] == "digits_lite"
    assert res["seed"] == 2 and res["budget"] == 120 and res["n_selected"] == 120
    assert 0.0 <= res["client_test_acc"] <= 1.0 and 0.0 <= res["teacher_test_acc"] <= 1.0
    assert 0.0 <= res["in_domain_fraction"] <= 1.0
    assert set(res["timings"]) >= {"features", "compress", "score", "select", "train"}
    if sampler == "ecos":  # private by default: the paper's Gaussian scores
        assert res["epsilon"] == 0.58
        assert res["score_privacy"] == {"mechanism": "gaussian", "epsilon": 0.58, "delta": 1e-5, "noise_sigma": pytest.approx(6.1373, abs=1e-3)}
    else:
        assert res["epsilon"] is None and res["score_privacy"] is None
    if sampler == "ecos":
        assert res["n_centroids"] == 16
        assert 0 < res["bytes_up"] <= 4 * 16 + 32
        assert res["bytes_down"] >= 4 * 16 * 64
        # the client's domain is ~8% of the pool; ECOS must find it even with a 1-epoch setup
        assert res["in_domain_fraction"] > 2 * res["pool_in_domain_fraction"]
        for png in res["figures"].values():
            assert Path(png).stat().st_size > 1000
    else:
        assert res["bytes_up"] == 0 and res["n_centroids"] is None
    assert "client test accuracy" in proc.stdout  # the final table


def test_bad_budget_fails_with_one_clear_sentence(tmp_path):
    out = tmp_path / "run"
    results = tmp_path / "results.json"
    cmd = [sys.executable, "train.py", *TINY, f"hydra.run.dir={out}", f"results_file={results}", "callbacks=none", "budget=0"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "budget must be at least 1, got 0" in proc.stderr + proc.stdout
    assert not results.exists()


def test_same_seed_same_numbers_with_noisy_scores(tmp_path):
    a, _ = run_train(tmp_path / "a", "seed=3", "client.epsilon=1.0")
    b, _ = run_train(tmp_path / "b", "seed=3", "client.epsilon=1.0")
    assert a["epsilon"] == b["epsilon"] == 1.0
    assert a["proxy_set_sha1"] == b["proxy_set_sha1"]
    assert a["client_test_acc"] == b["client_test_acc"]
    assert a["teacher_test_acc"] == b["teacher_test_acc"]
