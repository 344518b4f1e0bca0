"""Lightning's rich progress bar, with a label saying which fit is running and epochs counted from one.

A run trains the teacher, extracts φ, trains the student and tests it; with the stock
bar all of them read "Epoch 0/0" or "Predicting", so a user cannot tell which of the
long steps is under way.
"""

from __future__ import annotations

from pytorch_lightning.callbacks import RichProgressBar


class LabelledProgressBar(RichProgressBar):
    def __init__(self, label: str = "", predict_label: str = "φ features", **kwargs):
        super().__init__(**kwargs)
        self.label = label
        self.predict_label = predict_label

    def _get_train_description(self, current_epoch: int) -> str:
        trainer = self.trainer
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        epochs = f"epoch {current_epoch + 1}" + (f"/{total}" if total else "")
        return f"{self.label}: {epochs}" if self.label else epochs

    @property
    def predict_description(self) -> str:
        return self.predict_label

    @property
    def test_description(self) -> str:
        return f"{self.label}: testing" if self.label else "testing"
