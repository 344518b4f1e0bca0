"""timm classifiers that take images in [0, 1] and apply their own normalisation.

Keeping the normalisation inside the model lets teacher, student and φ be
different timm backbones fed by the same data loaders.
"""

from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def create_timm_model(name: str, *, num_classes: int, pretrained: bool | str = False, **kwargs) -> nn.Module:
    """`timm.create_model`, offline: `pretrained` is False, True (an already-filled cache) or a weights file."""
    if not timm.is_model(name):
        raise ValueError(f"model name {name!r} is not a timm model (see timm.list_models()).")
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrained={str(path)!r} does not exist; give a local weights file or pretrained=false.")
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    if pretrained is True:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as err:  # noqa: BLE001 - offline hub failures come in many types
            raise RuntimeError(
                f"pretrained weights for {name!r} are not in the local cache and cannot be downloaded here; "
                "pass a weights file as pretrained=PATH or set pretrained=false."
            ) from err
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


class ImageClassifier(nn.Module):
    """A timm backbone with its own input normalisation in front; `num_classes=0` gives pooled features."""

    def __init__(self, name: str, num_classes: int, pretrained: bool | str = False, **timm_kwargs):
        super().__init__()
        self.name = name
        self.num_classes = num_classes
        self.backbone = create_timm_model(name, num_classes=num_classes, pretrained=pretrained, **timm_kwargs)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        self.normalize = Normalize(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN), cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))
