"""Lightning callbacks that Hydra's `callbacks` config group instantiates."""

from callbacks.labelled_progress import LabelledProgressBar
from callbacks.plain_progress import PlainProgressBar, progress_bar
from callbacks.sampling_diagnostics import SamplingDiagnostics, sampling_diagnostics

__all__ = ["LabelledProgressBar", "PlainProgressBar", "SamplingDiagnostics", "progress_bar", "sampling_diagnostics"]
