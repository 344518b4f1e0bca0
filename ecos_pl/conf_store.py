"""The protocol's settings objects as Hydra config nodes `protocol/<part>`, so conf/ takes its defaults from them.

`conf/sampler/ecos.yaml` extends `/protocol/clustering` and `/protocol/allocation`,
`conf/scenario/pseudo_label.yaml` extends `/protocol/labelling`, `conf/train.yaml`'s
`client` extends `/protocol/score_privacy`: each default is written once, in
`ecos_pl.protocol.settings`. Registered on import (train.py, eval.py and the tests
import this module before Hydra composes).
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from ecos_pl.protocol.settings import SETTINGS


def register() -> None:
    store = ConfigStore.instance()
    for name, cls in SETTINGS.items():
        store.store(group="protocol", name=name, node=cls().to_dict())


register()
