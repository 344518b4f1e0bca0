"""Same seed, same model: a tiny job run twice, once in this process and once in a fresh one, each from an empty
cache (data, teacher, selection and student all rebuilt), ends with bit-identical student weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from runs import SMOKE, train

ROOT = Path(__file__).resolve().parents[1]
JOB = (*SMOKE, "callbacks=none", "seed=3", "client.epsilon=1.0")


def test_same_seed_gives_identical_student_weights_in_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ECOS_CACHE", str(tmp_path / "cache-a"))
    here = train(tmp_path / "here", *JOB, f"cache_dir={tmp_path / 'cache-a'}")
    env = {**os.environ, "ECOS_CACHE": str(tmp_path / "cache-b"), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    fresh = tmp_path / "fresh"
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), *JOB, f"cache_dir={tmp_path / 'cache-b'}",
                          f"hydra.run.dir={fresh}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = load_file(here.folder / "student.safetensors"), load_file(fresh / "student.safetensors")
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not (a[k] == b[k]).all()]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_cpu_kernels_is_checked():
    from ecos_pl.cpu_kernels import pin_cpu_kernels
    from ecos_pl.protocol.errors import ECOSInputError

    with pytest.raises(ECOSInputError, match=r"cpu_kernels must be one of native, avx2, got 'avx512'"):
        pin_cpu_kernels("avx512")
    pin_cpu_kernels("native")  # leaves torch's choice


@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="AVX2 is an x86-64 instruction set")
def test_cpu_kernels_avx2_caps_torch_in_a_fresh_process():
    code = ("from ecos_pl.cpu_kernels import pin_cpu_kernels; pin_cpu_kernels('avx2'); import torch; "
            "torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3)); "
            "print(torch.backends.cpu.get_cpu_capability())")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "AVX2", run.stderr[-2000:]
