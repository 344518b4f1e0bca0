"""Scenarios `pseudo_label` and `label_outsourcing`: a classifier trained with cross-entropy on the labelled proxy set.

They are one module (`SupervisedModule`) and differ only in where the labels come
from (`scenario.labels`, assigned by the data module right after the selection):
the client's noisy k-NN votes or the annotators.
"""

from __future__ import annotations

import torch

from ecos_pl.scenarios.base import SupervisedModule
from ecos_pl.scenarios.scenario import Scenario


class Labelled(Scenario):
    """The classifier (cfg.backbone.student, the model the client needs) trained on the proxy set's targets."""

    def module(self, cfg, datamodule, teacher):
        with torch.random.fork_rng(devices=[]):  # the init depends on the seed alone
            torch.manual_seed(cfg.seed)
            return SupervisedModule(
                arch=cfg.backbone.student, num_classes=datamodule.data.num_classes, lr=cfg.scenario.lr,
                label_smoothing=cfg.scenario.get("label_smoothing", 0.0), mixup_alpha=cfg.scenario.get("mixup_alpha", 0.0),
                pretrained=cfg.backbone.get("pretrained", False), input_size=cfg.backbone.get("input_size"),
            )
