#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): the main job on trainer=gpu and trainer=ddp, faiss's GPU k-means against
# the CPU kernel, φ's images/s on GPU and CPU; one table, one JSON, exit 1 if a stage failed. Without CUDA the GPU
# stages are skipped and the CPU ones run, so CI can call it too:
#   uv run bash benchmarks/gpu_check.sh --small --out /tmp/gpu_check.json
# PYTHON names the interpreter (default python3: the venv's under `uv run`, the image's on a bare GPU machine).
#   bash benchmarks/gpu_check.sh wheels
# fills .whl (git-ignored) with what a bare GPU machine's image lacks, as uv.lock pins it, for Python 3.12 x86-64
# (docs/details.md, "GPU check (H200)", says how they travel and are installed there).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == wheels ]]; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")" .whl && { grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    hydra-core==1.3.8 omegaconf==2.3.1 dp-accounting==0.6.0 dm-tree==0.1.10 mlxtend==0.25.0 faiss-cpu==1.15.1
  python3 -m pip wheel -q --no-deps antlr4-python3-runtime==4.9.3 -w .whl  # an sdist only: pure Python, built here
  exit
fi
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
