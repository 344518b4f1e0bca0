"""`train.py` end to end with a tiny configuration (debug=smoke), as a user runs it: its `main`, in process."""

from pathlib import Path

import pytest

from runs import SMOKE, call_main

ROOT = Path(__file__).resolve().parents[1]

#: the tiny configuration on a command line (tests/test_ddp.py, tests/test_reliability_caches.py)
TINY = list(SMOKE)

#: the shared runs (conftest.tiny_run): the ecos run also goes through the default callbacks (progress bar,
#: checkpoint, diagnostics) and writes the run's outputs (tests/test_outputs.py reads them)
ECOS_RUN = ("sampler=ecos", "seed=2", "callbacks=default")
RANDOM_RUN = ("sampler=random", "seed=2", "callbacks=none", "save_outputs=false")

REQUIRED = {
    "scenario", "sampler", "data", "seed", "budget", "n_centroids", "n_selected", "client_test_acc",
    "teacher_test_acc", "in_domain_fraction", "bytes_down", "bytes_up", "epsilon", "timings",
}


@pytest.mark.parametrize("sampler, overrides", [("ecos", ECOS_RUN), ("random", RANDOM_RUN)], ids=["ecos", "random"])
def test_train_end_to_end(tiny_run, sampler, overrides):
    run = tiny_run(*overrides)
    res = run.results
    assert REQUIRED <= res.keys()
    assert res["sampler"] == sampler and res["scenario"] == "compression" and res["data"] == "digits_lite"
    assert res["seed"] == 2 and res["budget"] == 120 and res["n_selected"] == 120
    assert 0.0 <= res["client_test_acc"] <= 1.0 and 0.0 <= res["teacher_test_acc"] <= 1.0
    assert run.returned == res["client_val_acc"]  # a sweeper optimises validation, never test
    assert 0.0 <= res["in_domain_fraction"] <= 1.0
    assert set(res["timings"]) >= {"features", "compress", "score", "select", "train"}
    if sampler == "ecos":  # private by default: the paper's Gaussian scores
        assert res["epsilon"] == 0.58
        assert res["score_privacy"] == {"mechanism": "gaussian", "epsilon": 0.58, "delta": 1e-5, "noise_sigma": pytest.approx(6.1373, abs=1e-3),
                                        "adjacency": "add_remove", "epsilon_replace_one": pytest.approx(0.847, abs=2e-3)}
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
    assert "client test accuracy" in run.stdout  # the final table
    assert f"results written to {run.results_file}" in run.stdout


def test_bad_budget_fails_with_one_clear_sentence(tmp_path):
    run = call_main("train", tmp_path, *TINY, "callbacks=none", "budget=0")
    assert run.code == 2
    assert run.stderr.strip().splitlines() == ["train.py: error: budget must be at least 1, got 0."]
    assert run.results is None and not list(tmp_path.iterdir())  # nothing was built or written


def test_same_seed_same_numbers_with_noisy_scores(tiny_run):
    # the second run draws its proxy set again (reuse_selection=false): the same noise, not the cached selection
    a = tiny_run("seed=2", "client.epsilon=1.0", "callbacks=none", "save_outputs=false").results
    b = tiny_run("seed=2", "client.epsilon=1.0", "callbacks=none", "save_outputs=false", "datamodule.pipeline.reuse_selection=false").results
    assert b["selection_reused"] is False
    assert a["epsilon"] == b["epsilon"] == 1.0
    assert a["proxy_set_sha1"] == b["proxy_set_sha1"]
    assert a["client_test_acc"] == b["client_test_acc"]
    assert a["teacher_test_acc"] == b["teacher_test_acc"]


def test_the_default_data_is_the_embedded_digits5(tmp_path):
    """Without data=: digits5_lite, client MNIST-M; compression runs in the domainnet layout, as the paper runs it on
    DomainNet: half of the client domain's training part is the client's, the other half in the pool with the other
    four domains' training parts, and a 1,000-image test split."""
    from runs import train

    res = train(tmp_path, "sampler=ecos", "callbacks=none", "save_outputs=false", smoke=("debug=smoke", "logger=csv")).results
    assert res["data"] == "digits5_lite" and res["client_domain"] == "mnistm"
    assert res["pool_in_domain_fraction"] == pytest.approx(1 / 9) and res["composition_by_domain"]["mnistm"] > 0
    assert res["n_pool"] == 4500 and res["n_client_train"] + res["n_client_val"] == 500 and res["n_client_test"] == 1000
    assert res["teacher_source"] == "pool" and res["n_selected"] == 120
