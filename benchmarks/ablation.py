"""What each part of ECOS adds on the default client: selection alone, then the unlabelled restriction, then the vote.

    uv run python benchmarks/ablation.py                      # client mnistm, seeds 1-5
    uv run python benchmarks/ablation.py --seeds 1 2 3 4 5

Each row is a `compare_samplers.py` table of ECOS and random (its runs kept and reused, one
flock per run with ECOS_CPU_LOCK), on the scenario's default layout; the row adds one part:

- label_outsourcing, supervised (`scenario.ssl=none`): the proxy set alone;
- label_outsourcing, FixMatch on the whole pool for both (`scenario.unlabelled_from=pool`): + semi-supervision,
  the samplers still differing in the proxy set alone;
- label_outsourcing, FixMatch on ECOS's scored clusters (the default): + the unlabelled restriction;
- pseudo_label without the cloud's neighbour vote (`scenario.labels.cloud_vote_k=0`): selection and the client's labels;
- pseudo_label with it (the default): + the vote.

ECOS − random with its paired 95 % bootstrap interval per row; writes markdown and JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_samplers  # noqa: E402
from results_md import _mean, margins, paired_ci  # noqa: E402

from ecos_pl.atomic import write_json_atomic, write_text_atomic  # noqa: E402

#: (scenario, the part the row adds, its extra overrides)
ROWS = [
    ("label_outsourcing", "proxy set alone (supervised)", ["scenario.ssl=none"]),
    ("label_outsourcing", "+ FixMatch, whole pool unlabelled for both", ["scenario.unlabelled_from=pool"]),
    ("label_outsourcing", "+ unlabelled set restricted to ECOS's scored clusters (default)", []),
    ("pseudo_label", "selection + the client's private labels, no cloud vote", ["scenario.labels.cloud_vote_k=0"]),
    ("pseudo_label", "+ the cloud's neighbour vote (default)", []),
]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--domain", default="mnistm")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    seeds = "[" + ",".join(map(str, args.seeds)) + "]"
    lines = [f"### Ablation on the default client ({args.domain}), digits5_lite, seeds {args.seeds}", "",
             f"`uv run python benchmarks/ablation.py {' '.join(argv)}`".replace(" `", "`"), "",
             "| scenario (layout) | what the row adds | ECOS | random | ECOS − random | 95 % CI (paired bootstrap) | pseudo-labels right (ECOS / random) |",
             "|---|---|---|---|---|---|---|"]
    found = []
    for scenario, part, extra in ROWS:
        argv_ = ["data=digits5_lite", f"scenario={scenario}", *extra, "samplers=[ecos,random]", f"seeds={seeds}",
                 f"domains=[{args.domain}]", f"out={args.out}", f"table=parts/ablation-{scenario}{compare_samplers.variant_tag(extra)}-{args.domain}"]
        if compare_samplers.main(argv_) != 0:
            return 1
        layout = compare_samplers.data_layout([f"scenario={scenario}", "data=digits5_lite", *extra])
        table = json.loads((ROOT / args.out / "parts" / f"ablation-{scenario}{compare_samplers.variant_tag(extra)}-{args.domain}.json").read_text())
        rows = table["runs"]
        acc = {s: _mean([r["client_test_acc"] for r in rows[s]]) for s in ("ecos", "random")}
        labels = [_mean([r.get("pseudo_label_acc") for r in rows[s]]) for s in ("ecos", "random")]
        label_cell = " / ".join(f"{v:.3f}" for v in labels) if None not in labels else "—"
        lines.append(f"| {scenario} ({layout}) | {part} | {100 * acc['ecos']:.1f} | {100 * acc['random']:.1f} | "
                     f"{margins(rows, [args.domain], 'random'):+.1f} | {paired_ci(rows, 'random')} | {label_cell} |")
        found.append({"scenario": scenario, "layout": layout, "part": part, "overrides": extra, "ecos": acc["ecos"], "random": acc["random"],
                      "pseudo_label_acc": labels})
    lines += ["", "Client test accuracy (%), mean over seeds; every run's settings are the scenario's defaults but the row's override."]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = ROOT / args.out / f"ablation-digits5_lite-{args.domain}"
    write_text_atomic(stem.with_suffix(".md"), text)
    write_json_atomic({"domain": args.domain, "seeds": args.seeds, "rows": found}, stem.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
