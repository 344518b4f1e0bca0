"""Train a model for the client on an ECOS proxy set.

    uv run python train.py scenario=compression
    uv run python train.py sampler=random seed=2 results_file=results/random-2.json

Composes `conf/train.yaml` with Hydra; everything else lives in `ecos_pl`. A bad
setting is one sentence on stderr and exit code 2 (`HYDRA_FULL_ERROR=1` shows the
traceback instead).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import ecos_pl.conf_store  # noqa: F401 - registers the protocol settings nodes (protocol/*) before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """One job; returns the client's *validation* accuracy (None with data.val_fraction=0): what a Hydra sweeper
    (hydra/sweeper=optuna) maximises, so no setting is ever chosen on the test split."""
    from ecos_pl.console import quiet_third_party

    quiet_third_party()

    from ecos_pl.bad_input import exit_on_bad_input
    from ecos_pl.config_schema import config_errors, validate_config

    with exit_on_bad_input("train.py", config_errors()):
        from hydra.core.hydra_config import HydraConfig

        # before the heavy imports below: a typo costs a second, not a teacher's training; `+key=value` keys too
        validate_config(cfg, HydraConfig.get().overrides.task if HydraConfig.initialized() else ())
        from pytorch_lightning.utilities import rank_zero_only
        from rich.console import Console

        from ecos_pl.atomic import write_json_atomic
        from ecos_pl.experiment import results_table, run_experiment
        from ecos_pl.interrupt import stop_on_signals

        with stop_on_signals("train.py"):  # SIGTERM/SIGINT: exit 143/130 and one line saying where, never 0
            results = run_experiment(cfg, validated=True)  # checked above, once
    if rank_zero_only.rank != 0:  # under DDP only rank zero reports
        return results["client_val_acc"]
    Console().print(results_table(results))
    if cfg.get("results_file"):
        path = write_json_atomic(results, cfg.results_file)
        print(f"results written to {path}")
    return results["client_val_acc"]


if __name__ == "__main__":
    main()
