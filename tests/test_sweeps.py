"""What a Lightning + Hydra + W&B user expects of a run: one W&B run per job, a resolved config, named progress bars."""

from pathlib import Path

import pytest

from runs import app_config  # noqa: F401 - also imported from here by other test files
from test_train import TINY

ROOT = Path(__file__).resolve().parents[1]


def test_logged_config_is_resolved_and_has_no_copies(tmp_path):
    from ecos_pl.experiment import loggable_config

    logged = loggable_config(app_config(tmp_path, "seed=3", "budget=50"))
    text = repr(logged)
    assert "${" not in text
    assert logged["seed"] == 3 and logged["budget"] == 50
    assert "budget" not in logged["datamodule"] and "seed" not in logged["datamodule"]  # wiring, not settings
    assert logged["logger"]["save_dir"] == str(tmp_path) and logged["logger"]["group"] == "compression-digits5_lite"
    assert logged["cache_dir"].startswith("/")  # an oc.env resolver is resolved, not dropped


def test_each_job_of_a_sweep_logs_into_its_own_wandb_run(tmp_path, monkeypatch):
    import wandb

    from ecos_pl import experiment
    from ecos_pl.wandb_logger import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    logged = []
    original = WandbLogger.log_hyperparams

    def spy(self, params, *args, **kwargs):
        logged.append((self.experiment.id, dict(params)))
        return original(self, params, *args, **kwargs)

    monkeypatch.setattr(WandbLogger, "log_hyperparams", spy)
    tiny = [o for o in TINY if not o.startswith("logger=")]
    for seed in (1, 2):
        cfg = app_config(tmp_path / f"job{seed}", *tiny, f"seed={seed}", "logger=wandb", "callbacks=default", "tags=[ci,sweep]",
                         "save_outputs=false")  # the artifact upload is tests/test_outputs.py's
        experiment.run_experiment(cfg)
        assert wandb.run is None  # finished at the end of its job
    final = {run_id: params for run_id, params in logged if "seed" in params}
    assert len(final) == 2  # two runs, not one reused
    assert sorted(p["seed"] for p in final.values()) == [1, 2]  # each run holds its own seed
    for job in (1, 2):
        assert len(list((tmp_path / f"job{job}" / "wandb").glob("offline-run-*"))) == 1


def test_learning_rate_monitor_only_with_a_logger(tmp_path):
    from pytorch_lightning.callbacks import LearningRateMonitor

    from ecos_pl.experiment import _trainer_callbacks

    cfg = app_config(tmp_path, "logger=csv")
    assert any(isinstance(c, LearningRateMonitor) for c in _trainer_callbacks(cfg, loggers=[object()]))
    assert not any(isinstance(c, LearningRateMonitor) for c in _trainer_callbacks(cfg, loggers=[]))


@pytest.mark.parametrize(("label", "expected"), [("teacher: resnet18", "teacher: resnet18: epoch 3/40"), ("", "epoch 3/40")])
def test_progress_bar_names_the_fit_and_counts_epochs_from_one(label, expected):
    from types import SimpleNamespace

    from callbacks import LabelledProgressBar

    bar = LabelledProgressBar(label=label)
    bar._trainer = SimpleNamespace(max_epochs=40)
    assert bar._get_train_description(2) == expected
    assert bar.predict_description == "φ features"
