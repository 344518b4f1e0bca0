"""`experiment=paper_digits5` and `experiment=paper_domainnet`: the paper's settings and sweeps, run on small trees in
the two on-disk layouts (what a user's disk copy looks like), through train.py in process."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ecos_pl.compose import app_config
from ecos_pl.data.digits5 import DOMAINS as DIGITS5
from ecos_pl.data.domainnet import DOMAINS as DOMAINNET
from runs import train
from test_data_sources import digits5_tree, write_pngs  # noqa: F401 - digits5_tree: a fixture

#: the tiny run's settings without its data (the experiment chooses the data)
PLAIN_SMOKE = ("debug=smoke", "logger=csv")
#: small enough for trees of a few images per class (the sweeps' budgets are the paper's)
SMALL = ("budget=12", "n_centroids=4", "scenario.epochs=1", "backbone.student=test_resnet", "backbone.teacher=test_resnet")


@pytest.fixture
def domainnet_tree(tmp_path) -> Path:
    root = tmp_path / "domainnet"
    for k, d in enumerate(DOMAINNET):
        for c in ("bird", "zebra"):
            write_pngs(root / d / c, 10, seed=k)
        listed = sorted(f"{d}/{c}/{p.name}" for c in ("bird", "zebra") for p in (root / d / c).iterdir())[::3]
        (root / f"{d}_test.txt").write_text("".join(f"{f} 0\n" for f in listed))
    return root


@pytest.mark.parametrize("name, data, scenario, budgets, domains", [
    ("paper_digits5", "digits5", "pseudo_label", "1000,3000,5000", ",".join(DIGITS5)),
    ("paper_domainnet", "domainnet", "label_outsourcing", "1000,3000", ",".join(DOMAINNET)),
])
def test_the_paper_configs_sweep_the_papers_grid(tmp_path, name, data, scenario, budgets, domains):
    cfg = app_config(tmp_path, f"experiment={name}", "data.root=/nowhere")
    assert cfg.data.name == data and cfg.scenario.name == scenario
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params["budget"] == budgets and params["data.client_domain"] == domains
    assert params["seed"] == "1,2,3" and params["sampler"] == "ecos,kcenter,random"


def test_paper_digits5_runs_on_a_tree_in_its_layout(tmp_path, digits5_tree):  # noqa: F811 - the imported fixture
    run = train(tmp_path / "run", "experiment=paper_digits5", f"data.root={digits5_tree}", "data.client_domain=svhn",
                "data.image_size=8", *SMALL, "scenario.labels.k=2", "scenario.labels.sampling_rate=1.0", smoke=PLAIN_SMOKE)
    res = run.results
    assert res["data"] == "digits5" and res["client_domain"] == "svhn" and res["scenario"] == "pseudo_label"
    assert res["n_client_test"] == 6 and res["n_client_train"] + res["n_client_val"] == 12
    assert res["n_pool"] == 4 * 12 + 1  # the other four domains' train parts (and mnist's loose image); no test image


def test_paper_domainnet_runs_with_the_official_test_lists(tmp_path, domainnet_tree):
    run = train(tmp_path / "run", "experiment=paper_domainnet", f"data.root={domainnet_tree}", "data.client_domain=sketch",
                "data.classes=[bird,zebra]", "data.image_size=8", *SMALL, "scenario.ssl=none", smoke=PLAIN_SMOKE)
    res = run.results
    assert res["data"] == "domainnet" and res["scenario"] == "label_outsourcing"
    listed = len((domainnet_tree / "sketch_test.txt").read_text().splitlines())
    assert res["n_client_test"] == listed
    assert res["n_client_train"] + res["n_client_val"] == (20 - listed) // 2
