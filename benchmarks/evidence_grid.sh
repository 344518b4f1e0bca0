#!/usr/bin/env bash
# The evidence grid of issue #27, in the order it is committed: hours of CPU on 2 cores, so it runs in the background,
# one flock per train.py run (ECOS_CPU_LOCK), resumable (every run is kept under benchmarks/results/runs/ and reused
# while its config is unchanged). Each step rewrites its table, RESULTS.md and the README summary when it completes.
#   nohup bash benchmarks/evidence_grid.sh > evidence_grid.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
export ECOS_CPU_LOCK="${ECOS_CPU_LOCK:-/tmp/ecos.lock}"
cs() { uv run python benchmarks/compare_samplers.py data=digits5_lite domains=all seeds=[1,2,3] "$@"; }
main4=samplers=[ecos,random,kcenter,uniform_cluster]
# 0. the ablation on the default client (3 seeds; it reuses the 5-seed label_outsourcing runs)
uv run python benchmarks/ablation.py --seeds 1 2 3
# 1. compression, DomainNet layout (the default): every client domain, the four samplers, then the ceilings on seed 1
cs scenario=compression "$main4"
cs scenario=compression samplers=[ecos,random,kcenter,uniform_cluster,full,oracle_central,local] one_seed=[full,oracle_central,local]
# 3. pseudo_label at the paper's budget B = 3000 within its ε ≤ 5.4 (PLD), with the Private-kNN setting chosen on public
#    data (benchmarks/label_privacy.py --public --seeds 1 --accountant pld --max-epsilon 5.4 budget=3000)
uv run python benchmarks/compare_samplers.py data=digits5_lite scenario=pseudo_label budget=3000 scenario.labels.accountant=pld \
  scenario.labels.sampling_rate=0.05 scenario.labels.k=10 scenario.labels.sigma=4 scenario.labels.threshold=0.3 \
  samplers=[ecos,random] seeds=[1] domains=[mnistm]
# 4. label_outsourcing, DomainNet layout (the default); `full` leaves FixMatch no unlabelled sample, so it is left out
cs scenario=label_outsourcing "$main4"
cs scenario=label_outsourcing samplers=[ecos,random,kcenter,uniform_cluster,oracle_central,local] one_seed=[oracle_central,local]
