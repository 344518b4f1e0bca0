"""`benchmarks/RESULTS.md`: the embedded Digits-5 tables beside the paper's, rewritten from the benchmarks' JSON.

Nothing in RESULTS.md is typed by hand: `compare_samplers.py` (per scenario, every client
domain) and `budget_curve.py` call `write_results` after they write their JSON, and it
rebuilds the whole file from every such JSON in `benchmarks/results/`.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecos_pl.atomic import write_text_atomic  # noqa: E402

#: ECOS.md "The paper's results" (accuracy %, mean of 3 seeds): the nearest anchor of each scenario. The paper has
#: Digits numbers only for client labelling; the other two scenarios' anchors are its DomainNet rows at B = 1000.
PAPER = {
    "pseudo_label": {"anchor": "client labelling (Private-kNN), Digits avg of 5, B = 5000, ε ≈ 5.35",
                     "ecos": 69.0, "kcenter": 67.4, "random": 65.9},
    "compression": {"anchor": "compression, DomainNet, B = 1000", "ecos": 78.6, "kcenter": 70.8, "random": 76.4},
    "label_outsourcing": {"anchor": "selective labelling, DomainNet avg of 6 clients, B = 1000",
                          "ecos": 82.5, "kcenter": 72.0, "random": 79.9, "local": 80.6},
}


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.mean(values) if values else None


def domain_means(rows: dict[str, list[dict]], domains: list[str], key: str = "client_test_acc") -> dict[str, dict[str, float]]:
    """{sampler: {domain: mean over seeds}} for the domains every sampler ran."""
    out = {}
    for sampler, runs in rows.items():
        by = {d: _mean([r.get(key) for r in runs if r.get("client_domain") == d]) for d in domains}
        out[sampler] = {d: v for d, v in by.items() if v is not None}
    return out


def seed_averages(rows: dict[str, list[dict]], domains: list[str], sampler: str, key: str = "client_test_acc") -> dict[int, float]:
    """{seed: `sampler`'s accuracy averaged over the client domains} for the seeds that ran every domain."""
    by_seed: dict[int, dict[str, float]] = {}
    for r in rows.get(sampler, []):
        if r.get(key) is not None and r.get("client_domain") in domains:
            by_seed.setdefault(r["seed"], {})[r["client_domain"]] = r[key]
    return {seed: statistics.mean(v.values()) for seed, v in sorted(by_seed.items()) if len(v) == len(domains)}


def _spread(values: list[float]) -> str:
    """` ± sd` over seeds, in points (nothing for a single seed)."""
    return f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""


def per_domain_table(rows: dict[str, list[dict]], domains: list[str]) -> str:
    means = domain_means(rows, domains)
    lines = ["| sampler | " + " | ".join(domains) + " | average |", "|---" * (len(domains) + 2) + "|"]
    for sampler, by in means.items():
        cells = [f"{100 * by[d]:.1f}" if d in by else "—" for d in domains]
        avg = _mean(by.values()) if len(by) == len(domains) else None
        spread = _spread(list(seed_averages(rows, domains, sampler).values()))
        lines.append(f"| {sampler} | " + " | ".join(cells) + f" | {'—' if avg is None else f'**{100 * avg:.1f}**{spread}'} |")
    return ("Client test accuracy (%), mean over seeds, per client domain (average: ± sd of the seeds' averages):\n\n"
            + "\n".join(lines) + "\n")


def means_line(rows: dict[str, list[dict]], key: str, label: str) -> str | None:
    """One line: each sampler's mean of `key` over every run (None when no run reports it)."""
    cells = [f"{s} {100 * m:.1f}" for s, runs in rows.items() if (m := _mean([r.get(key) for r in runs])) is not None]
    return f"{label} (%, mean over domains and seeds): " + " · ".join(cells) + ".\n" if cells else None


def margin_spread(rows: dict[str, list[dict]], domains: list[str], over: str) -> str:
    """` ± sd` over seeds of ECOS's domain average minus `over`'s (nothing for a single seed)."""
    ecos, other = seed_averages(rows, domains, "ecos"), seed_averages(rows, domains, over)
    return _spread([ecos[s] - other[s] for s in ecos if s in other])


def paired(rows: dict[str, list[dict]], over: str, key: str = "client_test_acc", first: str = "ecos") -> list[tuple[float, float]]:
    """(`first`'s (ECOS's), `over`'s) `key` for each client domain × seed both ran."""
    theirs = {(r.get("client_domain"), r["seed"]): r.get(key) for r in rows.get(over, [])}
    return [(r[key], theirs[(r.get("client_domain"), r["seed"])]) for r in rows.get(first, [])
            if theirs.get((r.get("client_domain"), r["seed"])) is not None and r.get(key) is not None]


def paired_wins(rows: dict[str, list[dict]], over: str) -> tuple[int, int]:
    """(client domain × seed pairs where ECOS's test accuracy is above `over`'s, pairs both ran)."""
    pairs = paired(rows, over)
    return sum(a > b for a, b in pairs), len(pairs)


#: the paired bootstrap: resamples and the seed of its generator (fixed: the same JSON always gives the same interval)
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 10_000, 0


def bootstrap_ci(diffs, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of paired differences (the pairs resampled with replacement);
    None for fewer than two pairs."""
    d = np.asarray(list(diffs), dtype=np.float64)
    if len(d) < 2:
        return None
    means = d[np.random.default_rng(seed).integers(0, len(d), (resamples, len(d)))].mean(1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def paired_ci(rows: dict[str, list[dict]], over: str, first: str = "ecos") -> str:
    """`first` (ECOS) − `over`'s 95 % paired-bootstrap interval in points, `[lo, hi]` ("—" for fewer than two pairs)."""
    ci = bootstrap_ci(100 * (a - b) for a, b in paired(rows, over, first=first))
    return "—" if ci is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def margins(rows: dict[str, list[dict]], domains: list[str], over: str) -> float | None:
    """ECOS minus `over`, in points, averaged over the client domains both ran."""
    means = domain_means(rows, domains)
    if "ecos" not in means or over not in means:
        return None
    common = [d for d in domains if d in means["ecos"] and d in means[over]]
    return 100 * _mean([means["ecos"][d] - means[over][d] for d in common]) if common else None


def margins_table(rows: dict[str, list[dict]], domains: list[str], scenario: str | None = None) -> str:
    scenario = scenario or next(iter(rows.values()))[0]["scenario"]
    paper = PAPER.get(scenario, {})
    lines = ["| ECOS minus | ours (points, avg of domains) | paper (points) | ECOS ahead (domain × seed pairs) | 95 % CI (paired bootstrap) |",
             "|---|---|---|---|---|"]
    for over in ("random", "kcenter", "uniform_cluster", "full", "oracle_central", "local"):
        ours = margins(rows, domains, over)
        theirs = paper["ecos"] - paper[over] if over in paper else None
        if ours is not None or theirs is not None:
            spread = margin_spread(rows, domains, over)
            won, pairs = paired_wins(rows, over)
            lines.append(f"| {over} | {'—' if ours is None else f'{ours:+.1f}{spread}'} | {'—' if theirs is None else f'{theirs:+.1f}'} | "
                         f"{f'{won} of {pairs}' if pairs else '—'} | {paired_ci(rows, over)} |")
    anchor = f"Paper's anchor: {paper['anchor']}.\n\n" if paper else ""
    ci = (f"95 % CI: percentile bootstrap of the mean of ECOS − baseline over the client domain × seed pairs "
          f"(paired by seed; {BOOTSTRAP_RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}).\n")
    return anchor + "\n".join(lines) + "\n\n" + ci


#: how a title names the layout of digits5_lite (`data.layout`); a table written before layouts existed is the digits one
LAYOUT_WORDS = {"digits": " (Digits layout: the client's domain absent from the pool)",
                "domainnet": " (DomainNet layout: half of the client's domain in the pool)"}


def layout_of(table: dict) -> str | None:
    return table.get("layout") or ("digits" if table.get("data") == "digits5_lite" or "digits5_lite" in table.get("title", "") else None)


def titled(table: dict) -> str:
    """The table's title, naming its layout when the title does not."""
    layout = layout_of(table)
    title = table["title"]
    if layout is None or "layout" in title:
        return title
    at = f" on {table.get('data') or 'digits5_lite'}"
    return title.replace(at, at + LAYOUT_WORDS[layout], 1) if at in title else title + LAYOUT_WORDS[layout]


#: the benchmarks' own results folder: only its tables reach the README
RESULTS_DIR = ROOT / "benchmarks" / "results"


def write_results(results_dir: Path, readme: Path | None = None) -> Path:
    """Rebuild RESULTS.md from every compare_samplers / budget_curve JSON of digits5_lite in `results_dir`,
    and the summary table between the markers of `readme` (None: the repository's README, and only when
    `results_dir` is the benchmarks' own folder: a run with `out=` elsewhere leaves the README alone)."""
    results_dir = Path(results_dir)
    if readme is None and results_dir.resolve() == RESULTS_DIR.resolve():
        readme = ROOT / "README.md"
    parts = [
        "# Results on the embedded Digits-5 (`digits5_lite`)",
        "",
        "Written by `benchmarks/results_md.py` from the benchmarks' JSON (never by hand); each section names the",
        "command that reproduces it. Accuracy is on the client's test split, read once per run after training;",
        "nothing here was chosen by looking at it (settings are chosen on the validation split, `data.val_fraction`).",
        "The paper's anchors are ECOS.md's table (ImageNet-pretrained φ, real Digits-5 / DomainNet); ours use the",
        "default offline φ on 32×32 packaged images, so compare margins, not absolute numbers.",
        "",
    ]
    # per scenario, the defaults' table first, then its variants (tagged by their extra overrides)
    for path in sorted(results_dir.glob("compare_samplers-*-digits5_lite*.json"), key=lambda p: (p.stem.split("-")[1], p.stem.count("-"), p.name)):
        table = json.loads(path.read_text())
        if not table.get("domains"):
            continue
        rows, domains, scenario = table["runs"], table["domains"], table["scenario"]
        teacher = _mean([r.get("teacher_test_acc") for r in next(iter(rows.values()))])
        parts += [f"## {titled(table)}", "", "```bash", table.get("command", "(command not recorded)"), "```", "",
                  per_domain_table(rows, domains), margins_table(rows, domains, scenario)]
        parts += [line for line in (means_line(rows, "client_val_acc", "Client validation accuracy"),
                                    means_line(rows, "pseudo_label_acc", "Pseudo-labels right, of those kept")) if line]
        if teacher is not None:
            parts.append(f"Teacher (pool-trained unless the title says otherwise) on the client's test split: {100 * teacher:.1f}% "
                         "(mean over domains and seeds).\n")
    for path in sorted(results_dir.glob("budget_curve-*.json")):
        curve = json.loads(path.read_text())
        parts += [f"## {titled(curve)}", "", "```bash", curve["command"], "```", "", curve["markdown"], ""]
        if curve.get("figure"):
            # next to its JSON (the absolute path it was written to may be another checkout's)
            parts += [f"![budget curve]({results_dir.name}/{Path(curve['figure']).name})", ""]
    # the benchmarks that write their own markdown (ablation.py, adaptive.py): their table as written, picture beside it
    for path in sorted(results_dir.glob("ablation-*.md")) + sorted(results_dir.glob("adaptive.md")):
        parts += [path.read_text().strip().replace("### ", "## ", 1), ""]
        if path.with_suffix(".png").exists():
            parts += [f"![{path.stem}]({results_dir.name}/{path.with_suffix('.png').name})", ""]
    out = results_dir.parent / "RESULTS.md"
    write_text_atomic(out, "\n".join(parts).rstrip() + "\n")
    if readme is not None:
        write_readme_summary(results_dir, readme)
    return out


#: the README's one summary table lives between these lines, rewritten by `write_readme_summary`
SUMMARY_START, SUMMARY_END = "<!-- summary table: benchmarks/results_md.py -->", "<!-- end of summary table -->"


def summary_table(results_dir: Path) -> str:
    """One row per scenario: each sampler's accuracy averaged over client domains and seeds, ECOS − random beside the paper's."""
    samplers = ("ecos", "kcenter", "random", "uniform_cluster", "full", "oracle_central", "local")
    found = {}
    # the defaults' tables (no override beyond scenario, data and layout), per layout; the one with most client domains
    for path in sorted(Path(results_dir).glob("compare_samplers-*-digits5_lite*.json")):
        table = json.loads(path.read_text())
        variant = [o for o in table.get("overrides", []) if not o.startswith(("scenario=", "data=", "data.layout="))]
        if not table.get("domains") or variant:
            continue
        label = f"{table['scenario']} ({layout_of(table)} layout)"
        if label not in found or len(table["domains"]) > len(found[label]["domains"]):
            found[label] = table
    if not found:
        return "(no benchmark has run yet)"
    shown = [s for s in samplers if any(s in t["runs"] for t in found.values())]
    lines = ["| scenario (layout) | " + " | ".join(shown) + " | ECOS − random (paper) | 95 % CI | domains × seeds |",
             "|---" * (len(shown) + 4) + "|"]
    for label, table in found.items():
        means = domain_means(table["runs"], table["domains"])
        cells = [f"{100 * _mean(means[s].values()):.1f}" if means.get(s) else "—" for s in shown]
        ours, paper = margins(table["runs"], table["domains"], "random"), PAPER.get(table["scenario"], {})
        spread = margin_spread(table["runs"], table["domains"], "random")
        theirs = f"{paper['ecos'] - paper['random']:+.1f}" if paper else "—"
        seeds = len({r["seed"] for r in table["runs"].get("ecos", [])})
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'—' if ours is None else f'{ours:+.1f}{spread}'} ({theirs}) | "
                     f"{paired_ci(table['runs'], 'random')} | {len(table['domains'])} × {seeds} |")
    return "\n".join(lines)


def write_readme_summary(results_dir: Path, readme: Path) -> None:
    write_readme_block(readme, SUMMARY_START, SUMMARY_END, summary_table(results_dir))


def write_readme_block(readme: Path, start: str, end: str, block: str) -> None:
    """Replace what lies between the marker lines `start` and `end` of `readme` (nothing when they are missing)."""
    text = readme.read_text()
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text_atomic(readme, f"{head}{start}\n{block}\n{end}{tail}")
