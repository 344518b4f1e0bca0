"""How well each labelling φ lets the client label by a k-NN vote (the `pseudo_label` scenario).

    uv run python benchmarks/label_phi.py [--seeds 1 2 3] [--k 10] [--json benchmarks/results/label_phi.json]

No training and no noise: exact k-NN votes over the client's labelled split, scored
against the ground truth of (a) the client's validation split (`data.val_fraction`, carved
from its training part as `train.py` does; the client's test split is never read here) and
(b) the in-class samples of the default ECOS proxy set (protocol φ: the default style statistics).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecos_pl.data.digits_lite import DigitsLite  # noqa: E402
from ecos_pl.data.splits import with_validation  # noqa: E402
from ecos_pl.atomic import write_json_atomic  # noqa: E402
from ecos_pl.phi import HOGFeatures, PCAPixels, TimmFeatures  # noqa: E402
from ecos_pl.protocol import ECOSClient, make_sampler  # noqa: E402
from ecos_pl.protocol.label import knn_votes  # noqa: E402


def style_phi(seed: int) -> TimmFeatures:
    return TimmFeatures("resnet18", seed=seed, pooling="style", stages=(0, 1, 2))


#: the validation split train.py carves (conf/train.yaml's data.val_fraction)
VAL_FRACTION = yaml.safe_load((ROOT / "conf" / "train.yaml").read_text())["data"]["val_fraction"]

PHIS = {
    "HOG, PCA 64 (pseudo_label default)": lambda seed: HOGFeatures(64, seed=seed),
    "PCA of pixels, 64 components": lambda seed: PCAPixels(64, seed=seed),
    "random-init resnet18, style statistics (protocol default)": style_phi,
}


def vote_accuracy(phi, data, images, labels, k: int) -> float:
    votes = knn_votes(phi.transform(data.client_train.images), data.client_train.labels, phi.transform(images), k, data.num_classes)
    in_class = labels >= 0
    return float(np.mean(votes.argmax(1)[in_class] == labels[in_class]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--json", default=str(ROOT / "benchmarks/results/label_phi.json"))
    args = parser.parse_args()

    found: dict[tuple[str, str], list[float]] = {}
    for seed in args.seeds:
        data = with_validation(DigitsLite(seed=seed).load(), VAL_FRACTION, seed)
        protocol = style_phi(seed).fit(data.pool.images)
        client = ECOSClient(protocol.transform(data.client_train.images))
        proxy = data.pool.subset(make_sampler("ecos").sample(protocol.transform(data.pool.images), client, args.budget, seed).indices)
        for name, make_phi in PHIS.items():
            phi = make_phi(seed).fit(data.pool.images)
            found.setdefault((name, "client validation"), []).append(vote_accuracy(phi, data, data.client_val.images, data.client_val.labels, args.k))
            found.setdefault((name, "ECOS proxy set"), []).append(vote_accuracy(phi, data, proxy.images, proxy.labels, args.k))
        print(f"seed {seed} done", flush=True)

    lines = ["| labelling φ | client validation | ECOS proxy set (in-class) |", "|---|---|---|"]
    for name in PHIS:
        cells = [found[(name, where)] for where in ("client validation", "ECOS proxy set")]
        lines.append(f"| {name} | " + " | ".join(f"{statistics.mean(v):.3f} ± {statistics.stdev(v) if len(v) > 1 else 0:.3f}" for v in cells) + " |")
    print(f"\nexact {args.k}-NN vote accuracy over the client's labelled split, seeds {args.seeds}\n\n" + "\n".join(lines))
    write_json_atomic(
        {"k": args.k, "budget": args.budget, "seeds": args.seeds,
         "accuracy": [{"phi": p, "on": w, "per_seed": v} for (p, w), v in found.items()]},
        args.json,
    )
    print(f"written {args.json}")


if __name__ == "__main__":
    main()
