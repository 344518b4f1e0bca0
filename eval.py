"""Test a saved student on the client's test split: the number the run reported, from the file the client receives.

    uv run python eval.py ckpt_path=outputs/compression/<run>/student.safetensors

Give the same data, seed and backbone overrides as the run (they fix the split and the architecture).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

import ecos_pl.conf_store  # noqa: F401 - registers the protocol settings nodes (protocol/*) before Hydra composes


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from ecos_pl.console import quiet_third_party

    quiet_third_party()
    from ecos_pl.bad_input import exit_on_bad_input
    from ecos_pl.config_schema import config_errors

    with exit_on_bad_input("eval.py", config_errors()):
        from ecos_pl.experiment import evaluate_student

        result = evaluate_student(cfg)
    print(f"client test accuracy of {result['student']} on {result['data']} (seed {result['seed']}, "
          f"{result['n_client_test']} images): {result['client_test_acc']:.4f}")
    return result["client_test_acc"]


if __name__ == "__main__":
    main()
