"""Scenarios `pseudo_label` and `label_outsourcing`: a classifier trained with cross-entropy on the labelled proxy set.

They are one module (`SupervisedModule`) and differ only in where the labels come
from (`scenario.labels`, assigned by the data module right after the selection):
the client's noisy k-NN votes or the annotators. With `scenario.ssl=fixmatch` (the
paper's label_outsourcing) the cloud also trains on unlabelled pool samples:
`FixMatchModule`, `ecos_pl.scenarios.fixmatch`.
"""

from __future__ import annotations

import torch

from ecos_pl.scenarios.base import SupervisedModule
from ecos_pl.scenarios.scenario import Scenario


def fixmatch_settings(cfg):
    """`scenario.fixmatch` as `FixMatchSettings` (range-checked), or None when `scenario.ssl` is not fixmatch."""
    from ecos_pl.scenarios.fixmatch import FixMatchSettings

    if cfg.scenario.get("ssl", "none") != "fixmatch":
        return None
    return FixMatchSettings(**(cfg.scenario.get("fixmatch") or {}))


class Labelled(Scenario):
    """The classifier (cfg.backbone.student, the model the client needs) trained on the proxy set's targets."""

    def unlabelled(self, cfg):
        from ecos_pl.scenarios.fixmatch import FixMatchData

        settings = fixmatch_settings(cfg)
        return None if settings is None else FixMatchData(settings, cfg.scenario.get("unlabelled_from", "scores"))

    def module(self, cfg, datamodule, teacher):
        kwargs = dict(
            arch=cfg.backbone.student, num_classes=datamodule.data.num_classes, lr=cfg.scenario.lr,
            label_smoothing=cfg.scenario.get("label_smoothing", 0.0), mixup_alpha=cfg.scenario.get("mixup_alpha", 0.0),
            pretrained=cfg.backbone.get("pretrained", False), input_size=cfg.backbone.get("input_size"),
        )
        settings, cls = fixmatch_settings(cfg), SupervisedModule
        if settings is not None:
            from ecos_pl.scenarios.fixmatch import FixMatchModule

            cls = FixMatchModule
            kwargs.update(threshold=settings.threshold, unlabelled_weight=settings.unlabelled_weight)
        with torch.random.fork_rng(devices=[]):  # the init depends on the seed alone
            torch.manual_seed(cfg.seed)
            return cls(**kwargs)
