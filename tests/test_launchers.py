"""Sweeps beyond one machine, as lightning-hydra-template users run them: Hydra's submitit launcher (its local
executor here; SLURM composes) and the Optuna sweeper, which maximises the validation accuracy train.py returns."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runs import SMOKE

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the sweeps extra is not installed (uv sync --extra sweeps)")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the sweeps extra is not installed (uv sync --extra sweeps)")


def _train_py(tmp_path, *args, timeout=240):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=timeout)
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-3000:])
    return run


PER_JOB_RESULTS = "results_file=${hydra:runtime.output_dir}/results.json"


def test_a_two_job_sweep_through_submitit_local_gives_two_wandb_runs(tmp_path):
    sweep = tmp_path / "multirun"
    _train_py(tmp_path, "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
              "hydra.launcher.cpus_per_task=1", f"hydra.sweep.dir={sweep}", *[o for o in SMOKE if o != "logger=csv"],
              "logger=wandb", "callbacks=none", "save_outputs=false", "seed=1,2", PER_JOB_RESULTS)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # submitit ran them, not the basic launcher
    for job in jobs:
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1  # one W&B run per job
    assert sorted(json.loads((j / "results.json").read_text())["seed"] for j in jobs) == [1, 2]


def test_submitit_slurm_launcher_composes(tmp_path):
    run = _train_py(tmp_path, "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                    "hydra.launcher.gpus_per_node=4", "trainer=ddp", "--cfg", "hydra", timeout=60)
    assert "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher" in run.stdout
    assert "partition: gpu" in run.stdout and "gpus_per_node: 4" in run.stdout


def test_optuna_tunes_tau_and_r_on_the_validation_split(tmp_path):
    import yaml

    sweep = tmp_path / "multirun"
    _train_py(tmp_path, "-m", "experiment=tune_tau_r", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", *SMOKE,
              "callbacks=none", "save_outputs=false", "hydra.sweeper.params.n_centroids='choice(8, 16)'", PER_JOB_RESULTS)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"sampler.temperature", "n_centroids"}
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/results.json"))]
    assert len(trials) == 2
    # the objective is the validation accuracy train.py returns, never the test accuracy
    assert best["best_value"] == pytest.approx(max(t["client_val_acc"] for t in trials))
    assert {t["n_centroids"] for t in trials} <= {8, 16}
