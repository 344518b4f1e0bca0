"""A scenario: what the proxy set is used for. One YAML under conf/scenario names one subclass by `_target_`.

A run asks its scenario for two things, in order: the teacher it needs (`teacher`:
an explicit step, None for scenarios that train on labels), what the training loader
pairs the proxy set with (`unlabelled`: FixMatch's pool samples, or nothing), then the
LightningModule to train (`module`). What else a scenario differs in — where the proxy set's labels
come from — is its `labels` node, which the data pipeline uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import pytorch_lightning as pl
from torch import nn


class Scenario(ABC):
    """Built from the `scenario` config node (`_recursive_=False`: nested nodes stay configs)."""

    def __init__(self, name: str, **settings):
        self.name, self.settings = name, settings

    def teacher(self, cfg, datamodule, make_trainer) -> tuple[nn.Module | None, dict]:
        """(teacher or None, results to report about it)."""
        return None, {"teacher_test_acc": None}

    def unlabelled(self, cfg):
        """What the training loader pairs the proxy set with (`ECOSDataModule.unlabelled`); None: the proxy set alone."""
        return None

    @abstractmethod
    def module(self, cfg, datamodule, teacher: nn.Module | None) -> pl.LightningModule:
        """The model the client needs, wrapped for training on the proxy set."""


def build_scenario(cfg) -> Scenario:
    import hydra

    return hydra.utils.instantiate(cfg.scenario, _recursive_=False)
