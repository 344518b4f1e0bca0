"""Settings are checked before any work: types and ranges at startup, pool-bounded ones right after the data load."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ecos_pl.config_schema import validate_config
from ecos_pl.protocol.errors import ECOSInputError

ROOT = Path(__file__).resolve().parents[1]


def composed(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


@pytest.mark.parametrize("scenario", ["compression", "pseudo_label", "label_outsourcing"])
@pytest.mark.parametrize("sampler", ["ecos", "random", "full", "kcenter", "uniform_cluster", "oracle_central", "local"])
def test_every_default_configuration_is_valid(scenario, sampler):
    checked = validate_config(composed(f"scenario={scenario}", f"sampler={sampler}"))
    assert checked["run"].budget == 400 and checked["scenario"].name == scenario


@pytest.mark.parametrize(
    ("override", "sentence"),
    [
        ("budget=abc", "budget must be a whole number, got 'abc'."),
        ("budget=0", "budget must be at least 1, got 0."),
        ("budget=2.5", "budget must be a whole number, got 2.5."),
        ("n_centroids=0", "n_centroids must be at least 1, got 0."),
        ("seed=-1", "seed must be at least 0, got -1."),
        ("client.epsilon=0", "client.epsilon must be a finite number in (0, ∞), got 0.0."),
        ("client.epsilon=abc", "client.epsilon must be a number, got 'abc'."),
        ("scenario.lr=-0.1", "scenario.lr must be a finite number in (0, ∞), got -0.1."),
        ("scenario.epochs=0", "scenario.epochs must be at least 1, got 0."),
        ("scenario.train_length=forever", "scenario.train_length='forever' is not one of: budget, epochs."),
        ("scenario.temperature=0", "scenario.temperature must be a finite number in (0, ∞), got 0.0."),
        ("scenario.teacher.source=cloud", "scenario.teacher.source='cloud' is not one of: client, pool."),
        ("scenario.teacher.checkpoint=/no/such/teacher.safetensors", "scenario.teacher.checkpoint='/no/such/teacher.safetensors' is not a file."),
        ("sampler.temperature=0", "sampler.temperature must be a finite number in (0, ∞), got 0.0."),
        ("sampler.radius_quantile=1.5", "sampler.radius_quantile must be a finite number in (0, 1], got 1.5."),
        ("sampler.send_radii=maybe", "sampler.send_radii must be true or false, got 'maybe'."),
        ("datamodule.batch_size=0", "datamodule.batch_size must be at least 1, got 0."),
        ("datamodule.pipeline.feature_dtype=int8", "datamodule.pipeline.feature_dtype='int8' is not one of: auto, float32, float16."),
        ("cache_dir=null", "cache_dir must name a folder"),
        ("trainer.max_epochs=1", "trainer.max_epochs=1 has no effect under scenario.train_length=budget"),
    ],
)
def test_a_bad_setting_is_one_sentence_naming_its_key(override, sentence):
    with pytest.raises(ECOSInputError) as err:
        validate_config(composed(override))
    assert str(err.value).startswith(sentence)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "sentence"),
    [
        (["scenario=pseudo_label", "scenario.labels.k=0"], "scenario.labels.k must be at least 1, got 0."),
        (["scenario=pseudo_label", "scenario.labels.delta=1"], "scenario.labels.delta must be a finite number in (0, 1), got 1.0."),
        (["scenario=pseudo_label", "scenario.mixup_alpha=-1"], "scenario.mixup_alpha must be a finite number in [0, ∞), got -1.0."),
        (["scenario=label_outsourcing", "scenario.ssl=semi"], "scenario.ssl='semi' is not one of: fixmatch, none."),
        (["scenario=label_outsourcing", "scenario.fixmatch.threshold=abc"], "scenario.fixmatch.threshold must be a number, got 'abc'."),
        (["scenario=label_outsourcing", "scenario.fixmatch.cutout=2"], "scenario.fixmatch.cutout must be a finite number in [0, 1], got 2.0."),
        (["data=folders"], "data.root must be set (add data.root=... to the command line)."),
        (["data=folders", "data.root=/x", "data.client_domain=a", "data.test_fraction=1"], "data.test_fraction must be a finite number in (0, 1), got 1.0."),
        (["data=domainnet", "data.root=/x", "data.image_size=4"], "data.image_size must be at least 8, got 4."),
    ],
)
def test_group_settings_are_checked_too(overrides, sentence):
    with pytest.raises(ECOSInputError, match=re.escape(sentence)):
        validate_config(composed(*overrides))


def test_epochs_mode_honours_max_epochs():
    validate_config(composed("scenario.train_length=epochs", "trainer.max_epochs=3"))


def test_budget_larger_than_the_pool_stops_before_any_model_is_trained(monkeypatch):
    from ecos_pl import experiment

    def no_teacher(*args, **kwargs):
        raise AssertionError("the scenario was built before the budget was checked")

    monkeypatch.setattr(experiment, "build_module", no_teacher)
    with pytest.raises(ECOSInputError, match=r"budget=100000 is larger than the pool size \(\d+\)\."):
        experiment.run_experiment(composed("budget=100000", "logger=none", "callbacks=none"))


def test_train_py_prints_one_sentence_exits_2_and_builds_nothing(tmp_path):
    cache = tmp_path / "cache"
    results = tmp_path / "results.json"
    cmd = [sys.executable, "train.py", "budget=abc", f"results_file={results}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**_env(), "ECOS_CACHE": str(cache)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["train.py: error: budget must be a whole number, got 'abc'."]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not results.exists() and not cache.exists()  # no data were built


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    # HYDRA_FULL_ERROR=1: train.py's main raises the error itself (Hydra prints its traceback, exit code 1)
    from runs import call_main

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ECOSInputError, match=r"^budget must be at least 1, got 0\.$"):
        call_main("train", tmp_path, "budget=0")


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}


@pytest.mark.parametrize("extra", ["debug=smoke", "debug=fast_dev_run", "debug=overfit", "experiment=exact_scores",
                                   "experiment=ecos_md_defaults", "trainer=gpu"])
@pytest.mark.parametrize("scenario", ["compression", "pseudo_label"])
def test_debug_and_experiment_configs_compose_and_validate(extra, scenario):
    cfg = composed(f"scenario={scenario}", extra)
    validate_config(cfg)
    if extra == "debug=smoke":
        assert cfg.budget == 120 and cfg.trainer.limit_train_batches == 2 and cfg.phi._target_.endswith("PCAPixels")
    if extra == "experiment=exact_scores":
        assert cfg.client.epsilon is None
    if extra == "experiment=ecos_md_defaults":
        assert cfg.n_centroids == 64 and cfg.sampler.temperature == 1.0


def test_help_lists_the_groups_and_the_keys_users_change(tmp_path):
    proc = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for words in ("scenario: compression, label_outsourcing, pseudo_label", "debug: fast_dev_run, overfit, smoke",
                  "client.epsilon (0.58)", "budget: proxy-set size B (400)"):
        assert words in proc.stdout
