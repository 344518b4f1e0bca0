"""Adaptive multi-round ECOS against one-round ECOS at equal ε (0.58 in all) and at equal upload (R = 64 + 128).

    uv run python benchmarks/adaptive.py                          # default clients, seeds 1-3
    uv run python benchmarks/adaptive.py --domains all            # digits5_lite: every client domain

Compression (train.py's runs through `compare_samplers.py`, kept and reused, one flock per run with ECOS_CPU_LOCK) on
`digits_lite` (its one client, photo) and `digits5_lite` (DomainNet layout, the scenario's default). Rows: `ecos`
(R = 128, the default), `ecos_adaptive` (R₁ = 64 then R₂ = 128, ε split 0.3 / 0.7), and `ecos:n_centroids=192`
(one round with as many centroids as both rounds: equal upload). Writes benchmarks/results/adaptive.{md,json,png}:
client test accuracy, in-domain fraction, bytes up, the paired 95 % interval of adaptive − each, and a picture of
the proxy set's make-up after each round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_samplers  # noqa: E402
from results_md import _mean, _spread, paired, paired_ci  # noqa: E402

from ecos_pl.atomic import write_atomic, write_json_atomic, write_text_atomic  # noqa: E402

SAMPLERS = ["ecos", "ecos_adaptive", "ecos:n_centroids=192"]
DATA = {"digits_lite": None, "digits5_lite": "mnistm"}  # data set -> its default client domain (None: one client)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--domains", default="default", help="digits5_lite's client domains: default (mnistm) or all")
    ap.add_argument("--data", nargs="+", default=list(DATA))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    seeds = "[" + ",".join(map(str, args.seeds)) + "]"
    tables, found = [], {}
    for data in args.data:
        domains = [] if DATA[data] is None else (["domains=all"] if args.domains == "all" else [f"domains=[{DATA[data]}]"])
        cs = [f"data={data}", "scenario=compression", f"samplers=[{','.join(SAMPLERS)}]", f"seeds={seeds}", *domains, f"out={args.out}", f"table=parts/adaptive-{data}"]
        if compare_samplers.main(cs) != 0:
            return 1
        out = Path(args.out)
        stem = out / "parts" / f"adaptive-{data}.json"
        table = json.loads(stem.read_text())
        found[data] = table
        tables.append(rows_of(data, table["runs"], table.get("domains"), table.get("layout")))
    header = ["| data (layout), client | sampler | client test acc (%) | in-domain fraction | bytes up | ε (all rounds) "
              "| adaptive − this (points) | 95 % CI (paired bootstrap) | adaptive ahead |", "|---|---|---|---|---|---|---|---|---|"]
    command = "uv run python benchmarks/adaptive.py " + " ".join(argv)
    text = "\n".join([f"### Adaptive multi-round ECOS against one round (compression, seeds {args.seeds})", "",
                      f"`{command.strip()}`", "", *header, *[line for t in tables for line in t], "",
                      "Equal ε: every row releases ε = 0.58 (δ = 1e-5) in all; ecos_adaptive splits it 0.3 / 0.7 over its "
                      "two rounds (dp-accounting composes the two Gaussian releases back to 0.58). Equal upload: "
                      "`ecos:n_centroids=192` sends as many centroids in one round as ecos_adaptive's two (64 + 128).",
                      "95 % CI: percentile bootstrap of the mean paired difference over client domain × seed pairs.", ""])
    print(text)
    out = Path(args.out)
    write_text_atomic(out / "adaptive.md", text)
    write_json_atomic({"command": command.strip(), "seeds": args.seeds, "tables": found}, out / "adaptive.json")
    figure(found, out / "adaptive.png")
    print(f"written {out / 'adaptive.md'}, adaptive.json and adaptive.png")
    return 0


def rows_of(data: str, runs: dict[str, list[dict]], domains, layout) -> list[str]:
    first = runs["ecos_adaptive"][0]
    where = f"{data} ({layout or 'one layout'}), {', '.join(domains) if domains else first.get('client_domain')}"
    lines = []
    for sampler in SAMPLERS:
        rs = runs.get(sampler, [])
        acc = [r["client_test_acc"] for r in rs]
        ind = [r["in_domain_fraction"] for r in rs]
        pairs = paired(runs, sampler, first="ecos_adaptive")
        ahead = f"{sum(a > b for a, b in pairs)} of {len(pairs)}" if sampler != "ecos_adaptive" else "—"
        diff = _mean([100 * (a - b) for a, b in pairs]) if sampler != "ecos_adaptive" else None
        lines.append(
            f"| {where} | {sampler} | {100 * _mean(acc):.1f}{_spread(acc)} | {_mean(ind):.3f} ± {statistics.pstdev(ind):.3f} | {rs[0]['bytes_up']} "
            f"| {rs[0].get('epsilon')} | {'—' if diff is None else f'{diff:+.1f}'} "
            f"| {'—' if sampler == 'ecos_adaptive' else paired_ci(runs, sampler, first='ecos_adaptive')} | {ahead} |"
        )
    return lines


def figure(found: dict, path: Path) -> None:
    """Stacked bars: the proxy set's make-up by pool domain after each round (seed 1), beside one-round ECOS's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(found), figsize=(5.5 * len(found), 4.2), squeeze=False)
    for ax, (data, table) in zip(axes[0], found.items()):
        runs = table["runs"]
        adaptive, one = runs["ecos_adaptive"][0], runs["ecos"][0]
        bars = [("ECOS\n(one round)", one["composition_by_domain"])]
        bars += [(f"adaptive\nafter round {t + 1}", r["composition_by_domain"]) for t, r in enumerate(adaptive["rounds"])]
        names = list(bars[0][1])
        bottom = [0] * len(bars)
        client = adaptive.get("client_domain")
        for name in names:
            heights = [b[1].get(name, 0) for b in bars]
            ax.bar(range(len(bars)), heights, bottom=bottom, label=name + (" (client's)" if name == client else ""),
                   edgecolor="black" if name == client else None, linewidth=1.5 if name == client else 0)
            bottom = [a + b for a, b in zip(bottom, heights)]
        ax.set_xticks(range(len(bars)), [b[0] for b in bars])
        ax.set_ylabel("proxy samples")
        ax.set_title(f"{data}, client {client}, seed {adaptive['seed']}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Proxy set's make-up after each round (compression, ε = 0.58 in all)")
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
