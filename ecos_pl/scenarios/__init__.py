"""Scenarios: what the proxy set is used for. Each builds its LightningModule from the run's config."""

from __future__ import annotations

from ecos_pl.scenarios.base import ProxyTrainingModule, SupervisedModule
from ecos_pl.scenarios.compression import DistillationModule, build_compression
from ecos_pl.scenarios.labelled import build_labelled

#: scenario name -> builder; the labelled two share one builder and differ only in `scenario.labels`
SCENARIOS = {"compression": build_compression, "pseudo_label": build_labelled, "label_outsourcing": build_labelled}


def build_module(cfg, datamodule, make_trainer):
    """(LightningModule, extra results) for `cfg.scenario.name`."""
    name = cfg.scenario.name
    if name not in SCENARIOS:
        raise ValueError(f"scenario={name!r} is not one of: {', '.join(sorted(SCENARIOS))}.")
    return SCENARIOS[name](cfg, datamodule, make_trainer)


__all__ = ["SCENARIOS", "DistillationModule", "ProxyTrainingModule", "SupervisedModule", "build_module"]
