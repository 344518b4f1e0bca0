"""Client test accuracy against the client's ε, for ECOS and random, on the embedded default (3 seeds).

    uv run python benchmarks/privacy_tradeoff.py                 # both curves
    uv run python benchmarks/privacy_tradeoff.py --part scores   # or --part labels

`scores`: `compression`, ECOS's scores Gaussian at ε = 0.07, 0.58 (the default), 1.23
(the paper's Fig. 7 points) and exact counts; random asks the client nothing, so it is
one reference line. `labels`: `pseudo_label` (scores at the default ε = 0.58), the
Private-kNN setting (γ = 0.2, k = 40, threshold 0.3) at σ = 8, 4 (the default), 2,
and the old non-private labelling (every client sample votes, k = 10, σ = 2,
threshold 0.5); ε is the whole exchange at δ = 1e-5. Every run goes through
`train.py` (kept under benchmarks/results/runs/privacy/, reused while its config is
unchanged: `compare_samplers.run_kept`). Writes a markdown table, JSON and a PNG.
The settings were fixed before any of these runs; nothing here chooses a default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_samplers import run_kept  # noqa: E402

from ecos_pl.atomic import write_atomic, write_json_atomic  # noqa: E402

SEEDS = (1, 2, 3)
SCORE_EPSILONS = (0.07, 0.58, 1.23, None)
LABEL_SETTINGS = {  # the default first: an interrupted run still answers "are the defaults private and better than random?"
    "σ=4 (default)": [],
    "σ=8": ["scenario.labels.sigma=8.0"],
    "σ=2": ["scenario.labels.sigma=2.0"],
    "old: γ=1, k=10, σ=2, thr 0.5": ["scenario.labels.sampling_rate=1.0", "scenario.labels.k=10", "scenario.labels.sigma=2.0",
                                     "scenario.labels.threshold=0.5"],
}


def runs(part: str) -> list[tuple[str, str, list[str]]]:
    """(curve, point, overrides) of every run of one part."""
    out = []
    if part == "scores":
        for eps in SCORE_EPSILONS:
            out.append(("ecos", "exact" if eps is None else f"{eps:g}", ["scenario=compression", "sampler=ecos", f"client.epsilon={'null' if eps is None else eps}"]))
        out.append(("random", "any", ["scenario=compression", "sampler=random"]))
    else:
        for name, overrides in LABEL_SETTINGS.items():
            for sampler in ("ecos", "random"):
                out.append((sampler, name, ["scenario=pseudo_label", f"sampler={sampler}", *overrides]))
    return out


def summarise(results: list[dict], key: str):
    values = [r[key] for r in results if r.get(key) is not None]
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else (None, None)


def measure(part: str, kept_only: bool = False) -> list[dict]:
    """Every point of one part (`kept_only`: only the points whose runs are all kept, running nothing)."""
    rows = []
    for curve, point, overrides in runs(part):
        results = []
        for seed in SEEDS:
            slug = "-".join(o.split("=", 1)[1] for o in overrides).replace("/", "_")
            path = ROOT / "benchmarks/results/runs/privacy" / f"{part}-{slug}-seed{seed}.json"
            if kept_only and not path.exists():
                break
            kept = run_kept([*overrides, f"seed={seed}", "logger=csv"], path)
            if kept is None:
                raise SystemExit(1)
            results.append(kept)
        if len(results) < len(SEEDS):
            continue
        epsilon_key = "epsilon" if part == "scores" else "exchange_epsilon"
        eps_values = {r.get(epsilon_key) for r in results}
        row = {"part": part, "curve": curve, "point": point, "overrides": overrides,
               "epsilon": eps_values.pop() if len(eps_values) == 1 else sorted(map(str, eps_values)),
               "client_test_acc": summarise(results, "client_test_acc"), "in_domain_fraction": summarise(results, "in_domain_fraction"),
               "per_seed": [r["client_test_acc"] for r in results]}
        if part == "labels":
            row["pseudo_label_acc"] = summarise(results, "pseudo_label_acc")
            row["n_trained"] = summarise(results, "n_trained")
        rows.append(row)
    return rows


def fmt(pair) -> str:
    mean, sd = pair
    return "—" if mean is None else f"{mean:.3f} ± {sd:.3f}"


def table(rows: list[dict]) -> str:
    lines = []
    for part in ("scores", "labels"):
        part_rows = [r for r in rows if r["part"] == part]
        if not part_rows:
            continue
        if part == "scores":
            lines += ["### compression: scores' ε (Gaussian, δ = 1e-5)", "", "| sampler | scores ε | client test acc | in-domain |", "|---|---|---|---|"]
            lines += [f"| {r['curve']} | {r['point']} | {fmt(r['client_test_acc'])} | {fmt(r['in_domain_fraction'])} |" for r in part_rows]
        else:
            lines += ["", "### pseudo_label: ε of the whole exchange (scores ε = 0.58 + labels, δ = 1e-5)", "",
                      "| setting | sampler | exchange ε | pseudo-label acc | labels kept | client test acc |", "|---|---|---|---|---|---|"]
            for r in part_rows:
                eps = r["epsilon"] if isinstance(r["epsilon"], str) else f"{r['epsilon']:.2f}" if r["epsilon"] is not None else "∞"
                lines.append(f"| {r['point']} | {r['curve']} | {eps} | {fmt(r['pseudo_label_acc'])} | {fmt(r['n_trained'])} | {fmt(r['client_test_acc'])} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [p for p in ("scores", "labels") if any(r["part"] == p for r in rows)]
    fig, axes = plt.subplots(1, len(parts), figsize=(5.5 * len(parts), 4), squeeze=False)
    for ax, part in zip(axes[0], parts):
        for curve, colour in (("ecos", "tab:blue"), ("random", "tab:grey")):
            pts = [r for r in rows if r["part"] == part and r["curve"] == curve]
            if part == "scores" and curve == "random":
                ax.axhline(pts[0]["client_test_acc"][0], color=colour, ls="--", label="random (asks nothing)")
                continue
            finite = sorted((r for r in pts if isinstance(r["epsilon"], (int, float))), key=lambda r: r["epsilon"])
            xs = [r["epsilon"] for r in finite]
            ys = [r["client_test_acc"][0] for r in finite]
            es = [r["client_test_acc"][1] for r in finite]
            ax.errorbar(xs, ys, yerr=es, marker="o", color=colour, label=curve, capsize=3)
            exact = [r for r in pts if r["epsilon"] is None]
            if exact:
                ax.axhline(exact[0]["client_test_acc"][0], color=colour, ls=":", label=f"{curve}, exact counts")
        ax.set_xscale("log")
        ax.set_xlabel("scores' ε" if part == "scores" else "ε of the whole exchange")
        ax.set_ylabel("client test accuracy")
        ax.set_title("compression" if part == "scores" else "pseudo_label")
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("scores", "labels", "both"), default="both")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/privacy_tradeoff"))
    parser.add_argument("--kept-only", action="store_true", help="tabulate the points whose 3 runs are kept; run nothing")
    args = parser.parse_args()
    parts = ("scores", "labels") if args.part == "both" else (args.part,)
    rows = [row for part in parts for row in measure(part, args.kept_only)]
    text = table(rows)
    print(text)
    out = Path(args.out)
    write_atomic(out.with_suffix(".md"), lambda f: f.write(text.encode()))
    write_json_atomic({"seeds": list(SEEDS), "rows": rows}, out.with_suffix(".json"))
    plot(rows, out.with_suffix(".png"))
    print(f"written {out}.md, .json and .png")


if __name__ == "__main__":
    main()
