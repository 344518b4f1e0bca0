"""What a run prints: third-party noise filtered, so the lines left are ours and the results table.

Measured on the default run before this: 64 lines before the table, about 28 of them
Lightning's GPU/TPU banners and tips, faiss's SIMD loader, deprecation warnings from
inside Lightning, "modules in eval mode" for the intentionally frozen teacher, and W&B's
banner. Each filter below names one of them; nothing of ours is hidden.
"""

from __future__ import annotations

import logging
import os
import warnings

#: loggers whose INFO lines are banners, not information about this run
QUIET_LOGGERS = {
    "faiss.loader": logging.WARNING,  # which SIMD build it tried, six lines
    "lightning_fabric.utilities.seed": logging.WARNING,  # "Seed set to 1", once per fit
    "pytorch_lightning.utilities.rank_zero": logging.WARNING,  # GPU/TPU availability, the litlogger tip, "fit stopped"
    "absl": logging.ERROR,  # dp-accounting: RDP orders it cannot evaluate, one warning each
    "onnx_ir": logging.WARNING,  # the ONNX export's graph passes, a dozen lines
    "onnxscript": logging.WARNING,
    # torch 2.10's ONNX exporter: "Missing annotation for parameter ..." of torchvision's roi ops, four lines
    "torch.onnx._internal.exporter._schemas": logging.ERROR,
}
#: warnings raised inside libraries about their own internals, or about choices this project made on purpose
IGNORED_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # Lightning's own use of torch's pytree
    r".*Found \d+ module\(s\) in eval mode.*",  # the frozen teacher inside the distillation module
    r".*You defined a `validation_step` but have no `val_dataloader`.*",  # the teacher's fit has no validation
    r".*is smaller than the logging interval.*",  # tiny proxy sets in smoke runs
    r".*does not have many workers which may be a bottleneck.*",  # in-memory uint8 tensors need no workers
    r".*The anonymous setting has no effect.*",  # W&B about an argument Lightning passes
)


def quiet_third_party() -> None:
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for pattern in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    os.environ.setdefault("WANDB_SILENT", "true")  # its banner; the run folder is printed with the results
