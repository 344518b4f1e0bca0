"""Lightning callbacks that Hydra's `callbacks` config group instantiates."""

from callbacks.sampling_diagnostics import SamplingDiagnostics, sampling_diagnostics

__all__ = ["SamplingDiagnostics", "sampling_diagnostics"]
