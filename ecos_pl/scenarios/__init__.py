"""Scenarios: what the proxy set is used for. `conf/scenario/<name>.yaml` names its class by `_target_`."""

from __future__ import annotations

from ecos_pl.scenarios.base import ProxyTrainingModule, SupervisedModule
from ecos_pl.scenarios.compression import Compression, DistillationModule
from ecos_pl.scenarios.labelled import Labelled
from ecos_pl.scenarios.scenario import Scenario, build_scenario


def build_module(cfg, datamodule, make_trainer):
    """(LightningModule, extra results): the scenario's teacher first (an explicit step), what the training loader
    pairs the proxy set with (unlabelled pool samples for FixMatch, else nothing), then its module."""
    scenario = build_scenario(cfg)
    teacher, extra = scenario.teacher(cfg, datamodule, make_trainer)
    datamodule.unlabelled = scenario.unlabelled(cfg)
    return scenario.module(cfg, datamodule, teacher), extra


__all__ = ["Compression", "DistillationModule", "Labelled", "ProxyTrainingModule", "Scenario", "SupervisedModule",
           "build_module", "build_scenario"]
