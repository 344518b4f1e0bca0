"""How `ecos_adaptive`'s settings find the client's domain: the proxy set's in-domain fraction, no training.

    uv run python benchmarks/adaptive_probe.py                    # both data sets, default clients, seeds 1-3
    uv run python benchmarks/adaptive_probe.py --domains all      # digits5_lite: every client domain

Data, φ, the rounds and the selection only (train.py's pipeline with its defaults, ε = 0.58 in all): the in-domain
fraction is read off the pool's own domain labels, so nothing here looks at a client split or at any accuracy. This
is what `Refinement`'s defaults (ecos_pl/protocol/settings.py) were chosen on: the highest mean over the two data
sets' default clients (a first pass had q = 0.4 as the default; q = 0.5 won). Writes
benchmarks/results/adaptive_probe.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_samplers import DOMAINS, cpu_lock  # noqa: E402

from ecos_pl.atomic import write_json_atomic, write_text_atomic  # noqa: E402

#: label -> the sampler's class and settings (round 1's R is n_centroids)
VARIANTS = {
    "ecos R=128 (default)": ("ecos", {"n_centroids": 128}),
    "ecos R=192 (equal upload)": ("ecos", {"n_centroids": 192}),
    "adaptive 64→128, q 0.8, ε 0.5/0.5, budget everywhere": ("ecos_adaptive", {"mass": 0.8, "first_share": 0.5, "outside_budget": True}),
    "adaptive 64→128, q 0.6, ε 0.5/0.5": ("ecos_adaptive", {"mass": 0.6, "first_share": 0.5}),
    "adaptive 64→128, q 0.5, ε 0.3/0.7 (default)": ("ecos_adaptive", {}),
    "adaptive 64→128, q 0.4, ε 0.3/0.7": ("ecos_adaptive", {"mass": 0.4}),
    "adaptive 64→128, q 0.4, ε 0.5/0.5": ("ecos_adaptive", {"first_share": 0.5}),
    "adaptive 64→128, q 0.3, ε 0.3/0.7": ("ecos_adaptive", {"mass": 0.3}),
    "adaptive 64→192, q 0.5, ε 0.3/0.7": ("ecos_adaptive", {"round_centroids": [192]}),
}


def pipeline(data: str, domain: str | None, seed: int):
    import hydra

    from ecos_pl.flower.run_config import train_config

    overrides = [f"data={data}", f"seed={seed}", "scenario=compression"] + ([f"data.client_domain={domain}"] if domain else [])
    return hydra.utils.instantiate(train_config(overrides).datamodule.pipeline)


def make(kind: str, settings: dict):
    from ecos_pl.protocol import make_sampler
    from ecos_pl.protocol.adaptive import AdaptiveECOSSampler

    return AdaptiveECOSSampler(n_centroids=64, **settings) if kind == "ecos_adaptive" else make_sampler(kind, **settings)


def main(argv: list[str]) -> int:
    from ecos_pl.protocol.exchange import InProcessExchange

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--domains", default="default", help="digits5_lite's client domains: default (mnistm) or all")
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    cases = [("digits_lite", None)] + [("digits5_lite", d) for d in (DOMAINS["digits5_lite"] if args.domains == "all" else ["mnistm"])]
    found: dict[str, dict[str, list[float]]] = {}
    base: dict[str, list[float]] = {}
    for (data, domain), seed in ((c, s) for c in cases for s in args.seeds):
        case = data if domain is None else f"{data}, {domain}"
        with cpu_lock():
            p = pipeline(data, domain, seed)
            pool, in_domain = p.pool_features, p.data.pool_in_domain()
            base.setdefault(case, []).append(float(in_domain.mean()))
            for label, (kind, settings) in VARIANTS.items():
                sel = make(kind, settings).sample(pool, InProcessExchange(p.clients()), args.budget, seed)
                found.setdefault(label, {}).setdefault(case, []).append(float(in_domain[sel.indices].mean()))
        print(f"{case}, seed {seed}: " + ", ".join(f"{k.split(',')[0]} {v[case][-1]:.3f}" for k, v in found.items()), flush=True)
    cases_ = list(base)
    lines = [f"### In-domain fraction of the proxy set, ecos_adaptive's settings (compression defaults, ε = 0.58 in all, "
             f"B = {args.budget}, seeds {args.seeds})", "", f"`uv run python benchmarks/adaptive_probe.py {' '.join(argv)}`".replace(" `", "`"), "",
             "| setting | " + " | ".join(cases_) + " | mean |", "|---" * (len(cases_) + 2) + "|",
             "| pool base rate | " + " | ".join(f"{statistics.mean(base[c]):.3f}" for c in cases_) + " | |"]
    for label, per in found.items():
        means = [statistics.mean(per[c]) for c in cases_]
        lines.append(f"| {label} | " + " | ".join(f"{m:.3f} ± {statistics.pstdev(per[c]):.3f}" for m, c in zip(means, cases_))
                     + f" | {statistics.mean(means):.3f} |")
    lines += ["", "adaptive: round 1 R = 64, round 2 the given R; q: the score mass refined; ε split round 1 / round 2; "
              "budget on refined cells only unless the row says otherwise.", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    write_text_atomic(out / "adaptive_probe.md", text)
    write_json_atomic({"seeds": args.seeds, "budget": args.budget, "base_rate": base, "in_domain_fraction": found}, out / "adaptive_probe.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
