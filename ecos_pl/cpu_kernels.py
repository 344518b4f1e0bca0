"""Which CPU kernels torch runs, for numbers that repeat across machines, not only on one.

Why: the same seed gave the same proxy set and teacher on two machines of one kind but different students (0.3667
and 0.3967, issue 30). oneDNN and ATen pick their kernels by the CPU's instruction set: on this AMD EPYC (AVX-512) a
convolution's and a linear layer's outputs differ in the last bits between the AVX-512 and the AVX2 kernels, and a
training run amplifies that. `cpu_kernels=avx2` caps both at AVX2, so every x86-64 CPU with AVX2 runs the same
kernels; it cost 1.4-1.9x the training step time here (resnet10t, batch 64, 2 cores), so `native` stays the default.
The cap must be set before torch runs its first CPU operation in the process (both libraries fix their choice then).
"""

from __future__ import annotations

import os

from ecos_pl.protocol.errors import ECOSInputError

CHOICES = ("native", "avx2")
#: what `avx2` sets: oneDNN's and ATen's instruction-set caps, and MKL's conditional numerical reproducibility
AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def pin_cpu_kernels(choice: str) -> None:
    """Apply `cpu_kernels` (native: leave torch's choice; avx2: cap the kernels at AVX2) before any CPU operation."""
    if choice not in CHOICES:
        raise ECOSInputError(f"cpu_kernels must be one of {', '.join(CHOICES)}, got {choice!r}.")
    if choice == "native":
        return
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise ECOSInputError(f"cpu_kernels=avx2 applies to x86-64 CPUs only; this one is {platform.machine()}.")
    for key, value in AVX2_ENV.items():
        os.environ[key] = value
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "DEFAULT"):
        raise ECOSInputError(f"cpu_kernels=avx2 came too late: torch already runs {capability} kernels in this process; "
                             "set it on the command line of a fresh process (or ATEN_CPU_CAPABILITY=avx2 before starting).")
