"""Lightning's W&B logger without the one argument current wandb warns about on every run.

Lightning always passes `anonymous` to `wandb.init` (None unless asked); wandb ≥ 0.19
warns that the setting has no effect whatever its value. Dropping the key changes nothing
else: what the logger logs, where and how is Lightning's.
"""

from __future__ import annotations

from pytorch_lightning.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)
