"""Lightning callbacks that Hydra's `callbacks` config group instantiates."""

from callbacks.labelled_progress import LabelledProgressBar
from callbacks.sampling_diagnostics import SamplingDiagnostics, sampling_diagnostics

__all__ = ["LabelledProgressBar", "SamplingDiagnostics", "sampling_diagnostics"]
