"""Private-kNN settings against their ε: how well the client's noisy labels match the truth (no training).

    uv run python benchmarks/label_privacy.py [--seeds 1 2 3] [--json benchmarks/results/label_privacy.json]

For each seed: the default data, the default protocol φ and ECOS's default proxy set
(B = 400, scores Gaussian at ε = 0.58), the default labelling φ (HOG). Every
combination of sampling rate γ, k, σ and threshold labels that proxy set; the table
gives the ε of the whole exchange (labels and scores, δ = 1e-5), the share of the
proxy set that gets a label, and how many of those labels are right, scored against
the pool's ground truth (a simulation-only truth; the client's test split is never
read). `pseudo_label`'s defaults are the most accurate setting whose exchange ε is at
most 8 (the goal, 5, is the paper's range: see the table), among those that label at least half of the proxy set.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecos_pl.atomic import write_json_atomic  # noqa: E402
from ecos_pl.data.digits_lite import DigitsLite  # noqa: E402
from ecos_pl.phi import HOGFeatures, TimmFeatures  # noqa: E402
from ecos_pl.protocol import ECOSClient, make_sampler  # noqa: E402
from ecos_pl.protocol.label import PseudoLabeller, label_epsilon  # noqa: E402
from ecos_pl.protocol.messages import ProxyFeaturesMessage  # noqa: E402
from ecos_pl.protocol.privacy import ScoreMechanism  # noqa: E402

GRID = {"sampling_rate": [0.1, 0.2, 0.3, 0.5], "k": [10, 20, 40, 80], "sigma": [2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0],
        "threshold": [None, 0.3]}
#: the issue's bound on the whole exchange (its goal, the paper's range, is 5: the table shows both)
MAX_EPSILON, MIN_KEPT = 8.0, 0.5


def proxy_labelling_inputs(seed: int, budget: int, scores: ScoreMechanism):
    data = DigitsLite(seed=seed).load()
    protocol = TimmFeatures("resnet18", seed=seed, pooling="style", stages=(0, 1, 2)).fit(data.pool.images)
    client = ECOSClient(protocol.transform(data.client_train.images), epsilon=scores.epsilon, mechanism=scores.mechanism,
                        delta=scores.delta, seed=seed)
    proxy = data.pool.subset(make_sampler("ecos").sample(protocol.transform(data.pool.images), client, budget, seed).indices)
    hog = HOGFeatures(64, seed=seed).fit(data.pool.images)
    return data, proxy, hog.transform(data.client_train.images), hog.transform(proxy.images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/label_privacy.json"))
    args = parser.parse_args()
    scores = ScoreMechanism("gaussian", 0.58, 1e-5)

    rows: dict[tuple, dict[str, list]] = {}
    for seed in args.seeds:
        data, proxy, client_x, proxy_x = proxy_labelling_inputs(seed, args.budget, scores)
        truth, down = np.asarray(proxy.labels), ProxyFeaturesMessage(proxy_x)
        for values in itertools.product(*GRID.values()):
            setting = dict(zip(GRID, values))
            labels = PseudoLabeller(client_x, data.client_train.labels, data.num_classes, seed=seed, **setting).label(down).labels
            kept = labels >= 0
            in_class = kept & (truth >= 0)
            row = rows.setdefault(values, {"acc": [], "kept": []})
            row["acc"].append(float(np.mean(labels[in_class] == truth[in_class])) if in_class.any() else 0.0)
            row["kept"].append(float(kept.mean()))
        print(f"seed {seed} done", flush=True)

    table = []
    for values, row in rows.items():
        setting = dict(zip(GRID, values))
        eps = label_epsilon(setting["sigma"], args.budget, 1e-5, [scores], sampling_rate=setting["sampling_rate"])
        table.append({**setting, "exchange_epsilon": eps, "label_acc": statistics.mean(row["acc"]),
                      "kept": statistics.mean(row["kept"]), "per_seed": row})
    table.sort(key=lambda r: r["exchange_epsilon"])
    eligible = [r for r in table if r["exchange_epsilon"] <= MAX_EPSILON and r["kept"] >= MIN_KEPT]
    chosen = max(eligible, key=lambda r: r["label_acc"]) if eligible else None
    lines = ["| γ | k | σ | threshold | exchange ε | labelled share | label accuracy |", "|---|---|---|---|---|---|---|"]
    for r in table:
        mark = " **(default)**" if r is chosen else ""
        lines.append(f"| {r['sampling_rate']} | {r['k']} | {r['sigma']:g} | {r['threshold']} | {r['exchange_epsilon']:.2f} | "
                     f"{r['kept']:.3f} | {r['label_acc']:.3f}{mark} |")
    print("\n".join(lines))
    write_json_atomic({"seeds": args.seeds, "budget": args.budget, "scores": scores.report(), "grid": GRID,
                       "max_epsilon": MAX_EPSILON, "min_kept": MIN_KEPT, "chosen": chosen, "rows": table}, args.json)
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
