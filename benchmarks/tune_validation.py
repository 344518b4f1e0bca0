"""Choose ECOS's R (centroids) and τ (sampler temperature) on the client's VALIDATION split: a grid, seeds, a table.

    uv run python benchmarks/tune_validation.py                                  # compression, default client, seeds 1-3
    uv run python benchmarks/tune_validation.py --scenario label_outsourcing --seeds 1 2

Every (R, τ) pair runs ECOS as `train.py` does (through `compare_samplers.run_kept`: kept, resumable,
one flock per run with ECOS_CPU_LOCK); the table and the heat map show only the client's validation
accuracy, mean over seeds, and the chosen pair is the best mean. The test split is read by each run
(train.py always reports it) but never shown or used here. Writes markdown, JSON and a PNG.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare_samplers import data_layout, data_name, run_kept  # noqa: E402

from ecos_pl.atomic import write_atomic, write_json_atomic, write_text_atomic  # noqa: E402


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenario", default="compression")
    ap.add_argument("--data", default="digits5_lite")
    ap.add_argument("--domain", default="mnistm", help="the client domain (default: the default client)")
    ap.add_argument("--centroids", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args(argv)
    out = (ROOT / args.out).resolve()
    base = [f"scenario={args.scenario}", f"data={args.data}", f"data.client_domain={args.domain}", "sampler=ecos", "logger=csv"]
    name = data_name(args.data, data_layout(base))
    runs_dir = out / "runs" / f"tune-{args.scenario}-{name}-{args.domain}"
    val: dict[tuple[int, float], list[float]] = {}
    for r in args.centroids:
        for tau in args.temperatures:
            for seed in args.seeds:
                kept = run_kept([*base, f"n_centroids={r}", f"sampler.temperature={tau}", f"seed={seed}"],
                                runs_dir / f"r{r}-tau{tau}-seed{seed}.json")
                if kept is None:
                    return 1
                val.setdefault((r, tau), []).append(kept["client_val_acc"])
    mean = {k: statistics.mean(v) for k, v in val.items()}
    best = max(mean, key=mean.get)
    sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in val.items()}
    title = (f"R and τ on the validation split: {args.scenario} on {name}, client {args.domain}, seeds {args.seeds}")
    command = "uv run python benchmarks/tune_validation.py " + " ".join(argv)
    lines = [f"### {title}", "", f"`{command.strip()}`", "",
             "Client validation accuracy (%), mean ± sd over seeds (the test split is not shown):", "",
             "| R \\ τ | " + " | ".join(f"{t:g}" for t in args.temperatures) + " |", "|---" * (len(args.temperatures) + 1) + "|"]
    for r in args.centroids:
        cells = [f"{'**' if (r, t) == best else ''}{100 * mean[r, t]:.1f} ± {100 * sd[r, t]:.1f}{'**' if (r, t) == best else ''}"
                 for t in args.temperatures]
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    lines += ["", f"Best on validation: R = {best[0]}, τ = {best[1]:g} ({100 * mean[best]:.1f})."]
    table = "\n".join(lines) + "\n"
    print(table)
    stem = out / f"tune_validation-{args.scenario}-{name}-{args.domain}"
    write_text_atomic(stem.with_suffix(".md"), table)
    write_json_atomic({"title": title, "command": command.strip(), "best": {"n_centroids": best[0], "temperature": best[1]},
                       "val_acc": [{"n_centroids": r, "temperature": t, "seeds": args.seeds, "val_acc": v} for (r, t), v in val.items()]},
                      stem.with_suffix(".json"))
    figure(mean, args.centroids, args.temperatures, title, stem.with_suffix(".png"))
    print(f"written {stem}.md, .json and .png")
    return 0


def figure(mean: dict, centroids: list[int], temperatures: list[float], title: str, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = [[100 * mean[r, t] for t in temperatures] for r in centroids]
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    im = ax.imshow(grid, cmap="viridis")
    ax.set_xticks(range(len(temperatures)), [f"{t:g}" for t in temperatures])
    ax.set_yticks(range(len(centroids)), [str(r) for r in centroids])
    ax.set_xlabel("τ (sampler.temperature)")
    ax.set_ylabel("R (n_centroids)")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w")
    fig.colorbar(im, label="validation accuracy (%)")
    ax.set_title(title.split(": ", 1)[0], fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
