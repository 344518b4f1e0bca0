"""Accuracy against the budget B at equal optimizer steps: ECOS, random and k-center against `full` (the whole pool).

    uv run python benchmarks/budget_curve.py --scenario compression
    uv run python benchmarks/budget_curve.py --scenario label_outsourcing --budgets 400 1000 3000 --domains mnistm

Every run trains about `--steps` optimizer steps (280, the default run's at B = 400): at budget B,
`scenario.epochs = round(steps / ⌈B / batch⌉)` (`train_length=budget`), for `full` too. So the samplers
differ only in what they train on (a small proxy set is seen many times, the pool few), and the
budgets only in how many samples share the same compute. Where ECOS's line meets `full`'s, a
proxy set stops paying. The budget a user
should pick is read from the *validation* accuracy (the `val` columns); the test columns are the
final numbers. Runs go through `compare_samplers.run_kept` (kept, resumable); writes a markdown
table, JSON and a PNG, then rebuilds benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_samplers import data_layout, data_name, run_kept, variant_tag  # noqa: E402
from results_md import LAYOUT_WORDS, _mean  # noqa: E402

from ecos_pl.atomic import write_atomic, write_json_atomic  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="compression")
    ap.add_argument("--data", default="digits5_lite")
    ap.add_argument("--budgets", type=int, nargs="+", default=[400, 1000, 3000])
    ap.add_argument("--samplers", nargs="+", default=["ecos", "random", "kcenter", "full"])
    ap.add_argument("--domains", nargs="+", default=None, help="client domains (default: the data config's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1])
    ap.add_argument("--steps", type=int, default=280, help="optimizer steps of every run (the default run's at B = 400)")
    ap.add_argument("--batch", type=int, default=64, help="datamodule.batch_size (conf/train.yaml)")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to every run")
    args = ap.parse_args(argv)
    out = (ROOT / args.out).resolve()
    layout = data_layout([f"scenario={args.scenario}", f"data={args.data}", *args.overrides])
    tag = variant_tag([o for o in args.overrides if not o.startswith("data.layout=")])
    name = data_name(args.data, layout)
    runs_dir = out / "runs" / f"budget-{args.scenario}-{name}{tag}"
    found: dict[tuple[str, int], list[dict]] = {}
    for budget in args.budgets:
        for sampler in args.samplers:
            for domain in args.domains or [None]:
                for seed in args.seeds:
                    epochs = max(1, round(args.steps / math.ceil(budget / args.batch)))
                    where = [] if domain is None else [f"data.client_domain={domain}"]
                    overrides = [f"scenario={args.scenario}", f"data={args.data}", *where, f"sampler={sampler}", f"budget={budget}", f"scenario.epochs={epochs}", f"seed={seed}",
                                 f"datamodule.batch_size={args.batch}", "logger=csv", *args.overrides]
                    kept = run_kept(overrides, runs_dir / f"{sampler}-b{budget}-{domain or 'default'}-seed{seed}.json")
                    if kept is None:
                        return 1
                    found.setdefault((sampler, budget), []).append(kept)

    lines = ["| sampler | " + " | ".join(f"B = {b} val / test" for b in args.budgets) + " |", "|---" * (len(args.budgets) + 1) + "|"]
    curve = {}
    for sampler in args.samplers:
        cells = []
        for b in args.budgets:
            runs = found[(sampler, b)]
            val, test = _mean([r.get("client_val_acc") for r in runs]), _mean([r["client_test_acc"] for r in runs])
            curve.setdefault(sampler, []).append({"budget": b, "val": val, "test": test, "steps": runs[0]["train_steps"]})
            cells.append(f"{'—' if val is None else f'{100 * val:.1f}'} / {100 * test:.1f}")
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    steps = " · ".join(f"B = {p['budget']}: {p['steps']} steps" for p in curve[args.samplers[0]]) + " for every sampler"
    epsilons = [(b, _mean([r.get("exchange_epsilon") for r in found[("ecos", b)]])) for b in args.budgets if ("ecos", b) in found]
    if any(e is not None for _, e in epsilons):  # the label round's ε grows with the number of proxy samples labelled
        steps += ". ECOS's whole exchange costs " + " · ".join(f"ε = {e:.1f} at B = {b}" for b, e in epsilons if e is not None)
    best = max(curve.get("ecos", []), key=lambda p: p["val"] or 0.0, default=None)
    text = "\n".join(lines) + f"\n\nAccuracy %, mean over client domains {args.domains or 'of the data config'} and seeds {args.seeds}; {steps}.\n"
    if best is not None and best["val"] is not None:
        text += f"ECOS's best budget by validation accuracy: B = {best['budget']}.\n"
    title = f"Budget curve: {args.scenario} on {args.data}{LAYOUT_WORDS.get(layout, '')}, about {args.steps} optimizer steps per run" \
        + (f" ({' '.join(args.overrides)})" if args.overrides else "")
    figure = out / f"budget_curve-{args.scenario}-{name}{tag}.png"
    _plot(curve, title, figure)
    command = "uv run python benchmarks/budget_curve.py " + " ".join(argv)
    write_json_atomic({"title": title, "command": command.strip(), "layout": layout, "markdown": text, "curve": curve, "figure": str(figure),
                       "runs": {f"{s}-{b}": r for (s, b), r in found.items()}}, out / f"budget_curve-{args.scenario}-{name}{tag}.json")
    print(f"### {title}\n\n{text}")
    if args.data == "digits5_lite":
        from results_md import write_results

        print(f"written {write_results(out)}")
    return 0


def _plot(curve: dict, title: str, path: Path) -> None:
    """Validation (where the budget is chosen) and test accuracy against B, one panel each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, split in zip(axes, ("val", "test")):
        for sampler, points in curve.items():
            shown = [p for p in points if p[split] is not None]
            ax.plot([p["budget"] for p in shown], [100 * p[split] for p in shown], marker="o", label=sampler,
                    ls="--" if sampler == "full" else "-")
        budgets = sorted({p["budget"] for points in curve.values() for p in points})
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("budget B (full: the whole pool, at B's step count)")
        ax.set_title("validation (chooses B)" if split == "val" else "test (read once)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("client accuracy (%)")
    axes[1].legend()
    fig.suptitle(title, fontsize=10)
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
