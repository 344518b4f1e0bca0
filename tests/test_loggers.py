"""logger=tensorboard and logger=many (CSV + TensorBoard + W&B at once) write what their users look for in the run's folder."""

import csv

import pytest

from tests.test_sweeps import app_config

# log every step: the smoke fit has two
SMOKE = ["debug=smoke", "data=digits_lite", "callbacks=none", "save_outputs=false", "trainer.log_every_n_steps=1"]


def _event_files(run_dir):
    return sorted((run_dir / "tensorboard").glob("version_*/events.out.tfevents.*"))


def _scalar_tags(event_files) -> set:
    """The scalars in these event files (fit and test each open the writer again: one file each, one version folder)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in event_files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.fixture
def offline_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_tensorboard_logger_writes_event_files_in_the_run_folder(tmp_path):
    from ecos_pl import experiment

    cfg = app_config(tmp_path, *SMOKE, "logger=tensorboard")
    results = experiment.run_experiment(cfg)
    events = _event_files(tmp_path)
    assert events and {e.parent.name for e in events} == {"version_0"}, list(tmp_path.rglob("*"))
    tags = _scalar_tags(events)
    assert "result/client_test_acc" in tags  # the run's results, logged at its end
    assert {"train/loss", "test/acc"} <= tags, tags  # and the fit's own metrics
    assert (events[0].parent / "hparams.yaml").is_file()
    assert 0.0 <= results["client_test_acc"] <= 1.0


def test_many_loggers_write_csv_tensorboard_and_wandb_together(tmp_path, offline_wandb):
    import wandb

    from ecos_pl import experiment
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    cfg = app_config(tmp_path, *SMOKE, "logger=many")
    loggers = experiment._instantiate_group(cfg.logger)
    assert sorted(type(lg).__mro__[0].__name__ for lg in loggers) == ["CSVLogger", "TensorBoardLogger", "WandbLogger"]
    assert all(isinstance(lg, (CSVLogger, TensorBoardLogger, WandbLogger)) for lg in loggers)

    experiment.run_experiment(cfg)
    assert wandb.run is None  # finished at the end of the job, as with logger=wandb alone

    metrics = sorted((tmp_path / "csv").glob("version_*/metrics.csv"))
    assert len(metrics) == 1
    with metrics[0].open() as f:
        columns = next(csv.reader(f))
    assert {"train/loss", "test/acc"} <= set(columns), columns

    events = _event_files(tmp_path)
    assert events and "result/client_test_acc" in _scalar_tags(events)

    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), list((tmp_path / "wandb").rglob("*"))


def test_csv_metrics_hold_the_final_results(tmp_path):
    """The results are logged after trainer.test has finalized the loggers: they are saved again (CSVLogger writes on save)."""
    from ecos_pl import experiment

    experiment.run_experiment(app_config(tmp_path, *SMOKE, "logger=csv"))
    with next((tmp_path / "csv").glob("version_*/metrics.csv")).open() as f:
        assert "result/client_test_acc" in next(csv.reader(f))


def test_many_loggers_can_leave_one_out(tmp_path):
    from ecos_pl.experiment import _instantiate_group

    cfg = app_config(tmp_path, *SMOKE, "logger=many", "~logger.wandb")
    assert sorted(cfg.logger) == ["csv", "tensorboard"]
    assert len(_instantiate_group(cfg.logger)) == 2
