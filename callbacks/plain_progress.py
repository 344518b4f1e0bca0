"""Progress as plain log lines, for output that is not a terminal (a log file, nohup, CI, a SLURM job).

Rich's live bars draw nothing without a terminal, so a redirected run was silent for minutes (issue 30: one
line after the data, then 6.5 minutes of nothing). `PlainProgressBar` is a Lightning progress bar that logs one
line when a fit, an extraction or a test starts, one every `every_s` seconds of work and one per epoch (loss,
val/acc, elapsed, ETA), and one at the end. Lines go through `logging`, so Hydra writes them to the terminal and to
the run's `train.log` alike. `progress_bar()` picks the rich bar on a terminal and this one elsewhere.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from pytorch_lightning.callbacks import ProgressBar

log = logging.getLogger("ecos_pl.progress")


def progress_bar(label: str = "", every_s: float = 30.0, plain: bool | None = None):
    """The run's progress bar: `LabelledProgressBar` (rich) on a terminal, `PlainProgressBar` otherwise
    (`plain=True`/`False` forces one)."""
    from callbacks.labelled_progress import LabelledProgressBar

    if plain is None:
        plain = not sys.stdout.isatty()
    return PlainProgressBar(label, every_s=every_s) if plain else LabelledProgressBar(label)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class PlainProgressBar(ProgressBar):
    """One log line per stage start and end, per epoch, and every `every_s` seconds in between."""

    def __init__(self, label: str = "", predict_label: str = "φ features", every_s: float = 30.0):
        super().__init__()
        if not (isinstance(every_s, (int, float)) and math.isfinite(every_s) and every_s > 0):
            raise ValueError(f"callbacks.progress_bar.every_s must be a number of seconds > 0, got {every_s!r}.")
        self.label, self.predict_label, self.every_s = label, predict_label, float(every_s)
        self._enabled = True
        self._start = self._last = 0.0

    # Lightning's ProgressBar interface
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def _say(self, what: str, *args) -> None:
        if self._enabled and self.trainer.is_global_zero:
            name = self.label or "fit"
            log.info("%s: " + what, name, *args)
        self._last = time.monotonic()

    def _due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def _elapsed_eta(self, done: int, total: float | None) -> str:
        elapsed = time.monotonic() - self._start
        if not total or not math.isfinite(total) or done <= 0:
            return f"{_duration(elapsed)} elapsed"
        return f"{_duration(elapsed)} elapsed, ETA {_duration(elapsed / done * max(0, total - done))}"

    def _metrics(self) -> str:
        shown = []
        for key in ("train/loss", "loss", "val/acc"):
            value = self.trainer.callback_metrics.get(key)
            if value is not None and value.numel() == 1:
                shown.append(f"{key} {float(value):.4f}")
        return (", ".join(shown) + ", ") if shown else ""

    # fit
    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        total = trainer.estimated_stepping_batches
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self._say("training started (%s%s steps)", f"{epochs} epochs, " if epochs else "",
                  total if math.isfinite(total) else "?")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due():
            self._say("epoch %d, step %d/%s, %s%s", trainer.current_epoch + 1, trainer.global_step,
                      _total(trainer), self._metrics(), self._elapsed_eta(trainer.global_step, _total(trainer)))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self._say("epoch %d%s done, step %d/%s, %s%s", trainer.current_epoch + 1, f"/{epochs}" if epochs else "",
                  trainer.global_step, _total(trainer), self._metrics(),
                  self._elapsed_eta(trainer.global_step, _total(trainer)))

    def on_train_end(self, trainer, pl_module) -> None:
        self._say("training finished after %d steps in %s", trainer.global_step,
                  _duration(time.monotonic() - self._start))

    # φ extraction (predict) and evaluation
    def on_predict_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        self._say("%s started (%s batches)", self.predict_label, _batches(trainer.num_predict_batches))

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._due():
            total = _batches(trainer.num_predict_batches)
            self._say("%s: batch %d/%s, %s", self.predict_label, batch_idx + 1, total,
                      self._elapsed_eta(batch_idx + 1, total if isinstance(total, int) else None))

    def on_predict_end(self, trainer, pl_module) -> None:
        self._say("%s finished in %s", self.predict_label, _duration(time.monotonic() - self._start))

    def on_test_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        self._say("testing started (%s batches)", _batches(trainer.num_test_batches))

    def on_test_end(self, trainer, pl_module) -> None:
        self._say("testing finished in %s", _duration(time.monotonic() - self._start))


def _total(trainer) -> int | str:
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) else "?"


def _batches(counts) -> int | str:
    total = sum(c for c in counts if math.isfinite(c)) if counts else 0
    return int(total) if total else "?"
