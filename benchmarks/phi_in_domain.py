"""How well each φ lets ECOS find the client's domain: the proxy set's in-domain fraction.

    uv run python benchmarks/phi_in_domain.py [--seeds 1 2 3] [--budget 400] [--json benchmarks/results/phi_in_domain.json]

No training: data, φ, compress, score, select only (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecos_pl.data.digits_lite import DigitsLite  # noqa: E402
from ecos_pl.atomic import write_json_atomic  # noqa: E402
from ecos_pl.phi import PCAPixels, TimmFeatures  # noqa: E402
from ecos_pl.protocol import ECOSClient, make_sampler  # noqa: E402

PHIS = {
    "random-init resnet18, pooled penultimate": lambda seed: TimmFeatures("resnet18", seed=seed),
    "random-init resnet10t, pooled penultimate": lambda seed: TimmFeatures("resnet10t", seed=seed),
    "PCA of pixels, 64 components": lambda seed: PCAPixels(64, seed=seed),
    "random-init resnet18, channel mean+std of stages 0-2 (default)": lambda seed: TimmFeatures(
        "resnet18", seed=seed, pooling="style", stages=(0, 1, 2)
    ),
}
SETTINGS = [(64, 1.0), (128, 0.5)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/phi_in_domain.json"))
    args = parser.parse_args()

    found: dict[tuple[str, int, float], list[float]] = {}
    base_rate = []
    for seed, (phi_name, make_phi) in itertools.product(args.seeds, PHIS.items()):
        data = DigitsLite(seed=seed).load()
        in_domain = data.pool_in_domain()
        base_rate.append(float(in_domain.mean()))
        phi = make_phi(seed).fit(data.pool.images)
        pool, client = phi.transform(data.pool.images), phi.transform(data.client_train.images)
        for r, tau in SETTINGS:
            sel = make_sampler("ecos", n_centroids=r, temperature=tau).sample(pool, ECOSClient(client), args.budget, seed)
            found.setdefault((phi_name, r, tau), []).append(float(in_domain[sel.indices].mean()))
        print(f"seed {seed}: {phi_name} done", flush=True)

    header = "| φ | " + " | ".join(f"R={r}, τ={t:g}" for r, t in SETTINGS) + " |"
    lines = [header, "|---" * (len(SETTINGS) + 1) + "|"]
    for phi_name in PHIS:
        cells = []
        for r, t in SETTINGS:
            v = found[(phi_name, r, t)]
            cells.append(f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}")
        lines.append(f"| {phi_name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"\nin-domain fraction of the proxy set, budget {args.budget}, seeds {args.seeds} "
          f"(pool base rate {statistics.mean(base_rate):.3f})\n\n{table}")
    write_json_atomic(
        {"budget": args.budget, "seeds": args.seeds, "pool_base_rate": statistics.mean(base_rate),
         "in_domain_fraction": [{"phi": p, "n_centroids": r, "temperature": t, "per_seed": v} for (p, r, t), v in found.items()]},
        args.json,
    )
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
