"""`conf/train.yaml` composed as `train.py` sees it inside Hydra's app, for runs in this process.

The tests and the benchmarks run many jobs in one interpreter: each pays for its training,
not for a new Python and its imports. `${hydra:runtime.output_dir}` resolves to `output_dir`.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import ecos_pl.conf_store  # noqa: F401 - the protocol settings nodes (protocol/*) Hydra composes from

CONF = Path(__file__).resolve().parents[1] / "conf"


def train_config(*overrides: str, hydra_node: bool = False) -> DictConfig:
    """conf/train.yaml composed with `overrides`, as `train.py` composes it (with Hydra's own node if asked)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():  # inside train.py's own Hydra app: its config dir is this one
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_node)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra_node)


def app_config(output_dir: Path | str, *overrides: str) -> DictConfig:
    """The composed config with Hydra's own node, made the current HydraConfig (as inside `@hydra.main`)."""
    cfg = train_config(*overrides, hydra_node=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg
