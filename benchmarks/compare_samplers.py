"""Run every sampler over several seeds (and client domains) as `train.py` runs, and tabulate the results.

    uv run python benchmarks/compare_samplers.py                        # compression, seeds 1-3
    uv run python benchmarks/compare_samplers.py seeds=[1] samplers=[ecos,random] budget=200
    uv run python benchmarks/compare_samplers.py data=digits5_lite domains=all scenario=pseudo_label

`seeds=`, `samplers=` (a name, or `name:key=value,...` for a sampler with its own settings, e.g.
`ecos:n_centroids=192`), `domains=` (client domains: a list, or `all` of the data's), `one_seed=`
(samplers run on the first seed only), `out=` belong to this script; every other `key=value` is a Hydra override passed to each run.
The runs are `train.py`'s own (`run_experiment` on the composed config) in this process,
one after the other. Each writes its results JSON (kept, so an interrupted comparison
resumes where it stopped); the table (mean ± std over seeds, per client domain and
averaged, with ECOS's margins beside the paper's) is printed and written as markdown and
JSON, and `benchmarks/RESULTS.md` is rewritten from every table of the embedded Digits-5.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import ecos_pl.conf_store  # noqa: E402,F401 - the protocol settings nodes Hydra composes from
from ecos_pl.atomic import write_json_atomic, write_text_atomic  # noqa: E402

DEFAULTS = {
    "seeds": [1, 2, 3],
    "samplers": ["ecos", "random", "full", "kcenter", "uniform_cluster", "oracle_central", "local"],
    "domains": None,  # None: the data config's client domain
    "one_seed": [],  # samplers run on the first seed only (the costly ceilings: full, local, oracle_central)
    "out": "benchmarks/results",
    # the table's name under `out` (None: compare_samplers-<scenario>-<data>...); a benchmark that runs a few rows for
    # its own table (ablation.py, adaptive.py) names its own, so it never overwrites a headline table's seeds
    "table": None,
}
#: the client domains of `domains=all`
DOMAINS = {"digits5_lite": ["mnist", "svhn", "usps", "syn", "mnistm"]}
#: columns of the table; one that no run reports (e.g. labels_bought outside label_outsourcing) is left out
COLUMNS = [
    "client_val_acc", "client_test_acc", "teacher_val_acc", "teacher_test_acc", "in_domain_fraction", "n_selected", "n_trained", "bytes_up", "bytes_down",
    "labels_bought", "pseudo_label_acc", "labels_dropped", "label_bytes_down", "label_bytes_up", "exchange_epsilon",
]


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    opts, overrides = dict(DEFAULTS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in DEFAULTS:
            opts[key] = yaml.safe_load(value)
        else:
            overrides.append(arg)
    opts["seeds"] = [int(s) for s in (opts["seeds"] if isinstance(opts["seeds"], list) else [opts["seeds"]])]
    opts["samplers"] = opts["samplers"] if isinstance(opts["samplers"], list) else [opts["samplers"]]
    opts["one_seed"] = opts["one_seed"] if isinstance(opts["one_seed"], list) else [opts["one_seed"]]
    if opts["domains"] is not None and not isinstance(opts["domains"], list):
        opts["domains"] = [opts["domains"]]
    return opts, overrides


def config_sha1(overrides: list[str]) -> str:
    """Hash of the run's composed config (interpolations unresolved, `results_file` left out).

    A kept run is reused only when its config hash matches, so changing a config file
    (not only the command line) reruns the runs it affects instead of reusing stale ones.
    """
    from omegaconf import OmegaConf

    from ecos_pl.compose import train_config

    cfg = train_config(*(o for o in overrides if not o.startswith("results_file=")))
    text = OmegaConf.to_yaml(without_in_process_transport(cfg))
    for old, new in MOVED_TARGETS.items():
        text = text.replace(old, new)
    return hashlib.sha1(text.encode()).hexdigest()


#: classes that moved module without changing behaviour (#28: the same proxy sets and labels, checked by sha1), named
#: as before in the hash so the runs kept before the move stay valid
MOVED_TARGETS = {"ecos_pl.protocol.labels.": "ecos_pl.scenarios.labels."}


def without_in_process_transport(cfg):
    """The config without its `transport` nodes when they are the default in-process one: a transport carries the same
    messages (the same proxy set on every transport, tests/test_transport.py), so runs kept from before the transport
    group existed stay valid; any other transport is part of the hash."""
    from omegaconf import OmegaConf

    if OmegaConf.select(cfg, "transport._target_", default=None) != "ecos_pl.protocol.transport.InProcess":
        return cfg
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))  # a deep copy, interpolations kept
    del cfg.datamodule.pipeline["transport"]
    del cfg["transport"]
    return cfg


def data_layout(overrides: list[str]) -> str | None:
    """The runs' `data.layout` (the scenario's default unless overridden); None for data without layouts."""
    from omegaconf import OmegaConf

    from ecos_pl.compose import train_config

    return OmegaConf.select(train_config(*overrides), "data.layout", default=None)


def data_name(data: str, layout: str | None) -> str:
    """The data's name in file and folder names: the layout names them (digits: no suffix, as before layouts
    existed), not the variant tag, so data.layout=domainnet on the command line and a scenario whose default it
    is write the same table."""
    return f"{data}{'' if layout in (None, 'digits') else f'_{layout}'}"


def variant_tag(extra: list[str]) -> str:
    """`-<sha1[:8]>` of the sorted extra overrides ("" for none): runs with other overrides never share (and never
    reuse) each other's results or tables."""
    return f"-{hashlib.sha1(' '.join(sorted(extra)).encode()).hexdigest()[:8]}" if extra else ""


def run_in_process(overrides: list[str], result_file: Path) -> bool:
    """`python train.py *overrides` without a new interpreter: its config, `run_experiment`, its results file."""
    from ecos_pl.compose import app_config
    from ecos_pl.console import quiet_third_party
    from ecos_pl.experiment import run_experiment

    quiet_third_party()
    with tempfile.TemporaryDirectory(prefix="ecos-bench-") as folder:  # the run's folder (checkpoints, logs): not kept
        try:
            results = run_experiment(app_config(folder, *overrides, "save_outputs=false"))
        except Exception as err:  # noqa: BLE001 - reported, and the comparison stops
            import traceback

            traceback.print_exc()
            print(f"run failed ({type(err).__name__}: {err})", file=sys.stderr)
            return False
    write_json_atomic(results, result_file)
    return True


@contextlib.contextmanager
def cpu_lock():
    """With ECOS_CPU_LOCK=PATH, each run holds an exclusive flock on PATH: on a shared machine no other
    timed job runs beside it, and none waits for the whole benchmark."""
    path = os.environ.get("ECOS_CPU_LOCK")
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_kept(run_overrides: list[str], result_file: Path) -> dict | None:
    """One `train.py` run's results: the kept file when its config hash matches, else a fresh run (None: it failed)."""
    config = config_sha1(run_overrides)
    kept = json.loads(result_file.read_text()) if result_file.exists() else None
    if kept is not None and kept.get("config_sha1") != config:
        print(f"[{time.strftime('%H:%M:%S')}] {result_file.name}: its config changed since it ran; running it again", flush=True)
        kept = None
    if kept is None:
        print(f"[{time.strftime('%H:%M:%S')}] train.py {' '.join(run_overrides)}", flush=True)
        with cpu_lock():
            ok = run_in_process(run_overrides, result_file)
        if not ok:
            print(f"run failed: {' '.join(run_overrides)}", file=sys.stderr)
            return None
        kept = json.loads(result_file.read_text())
        write_json_atomic({**kept, "config_sha1": config}, result_file)
    return kept


def mean_std(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if all(float(v).is_integer() for v in values) and len(set(values)) == 1:
        return f"{int(values[0])}"  # a count that does not vary (sizes, bytes)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def markdown(rows: dict[str, list[dict]], title: str, command: str = "") -> str:
    columns = [c for c in COLUMNS if any(r.get(c) is not None for runs in rows.values() for r in runs)]
    lines = [f"### {title}", "", *([f"`{command}`", ""] if command else []), "| sampler | " + " | ".join(columns) + " | train s |", "|---" * (len(columns) + 2) + "|"]
    for sampler, runs in rows.items():
        cells = [mean_std([r.get(c) for r in runs]) for c in columns]
        cells.append(mean_std([r["timings"]["train"] for r in runs]))
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    opts, overrides = parse_args(argv)
    scenario = next((o.split("=", 1)[1] for o in overrides if o.startswith("scenario=")), "compression")
    data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "digits_lite")
    domains = DOMAINS.get(data, []) if opts["domains"] == ["all"] else opts["domains"]
    out_dir = (ROOT / opts["out"]).resolve()
    layout = data_layout(overrides)
    tag = variant_tag([o for o in overrides if not o.startswith(("scenario=", "data=", "data.layout="))])
    data_label = data_name(data, layout)
    runs_dir = out_dir / "runs" / f"{scenario}-{data_label}{tag}"
    rows: dict[str, list[dict]] = {}
    for domain in domains or [None]:
        where = [] if domain is None else [f"data.client_domain={domain}"]
        for sampler in opts["samplers"]:
            for seed in opts["seeds"][:1] if sampler in opts["one_seed"] else opts["seeds"]:
                spec, file_stem = sampler_overrides(sampler)
                name = f"{file_stem}-{domain}-seed{seed}" if domain else f"{file_stem}-seed{seed}"
                kept = run_kept([*spec, f"seed={seed}", "logger=csv", *where, *overrides], runs_dir / f"{name}.json")
                if kept is None:
                    return 1
                rows.setdefault(sampler, []).append(kept)
    from results_md import LAYOUT_WORDS

    once = [s for s in opts["samplers"] if s in opts["one_seed"]]
    title = f"{scenario} on {data}{LAYOUT_WORDS.get(layout, '')}, seeds {opts['seeds']}" \
        + (f" ({', '.join(once)}: seed {opts['seeds'][0]})" if once and len(opts["seeds"]) > 1 else "") \
        + (f", client domains {domains}" if domains else "") + (f" ({' '.join(overrides)})" if overrides else "")
    command = "uv run python benchmarks/compare_samplers.py " + " ".join(argv)
    table = markdown(rows, title, command.strip()) + (per_domain(rows, domains) if domains else "")
    print(table)
    # a table of some client domains only is named by them, so it never overwrites the every-domain table
    subset = f"-{'_'.join(domains)}" if domains and sorted(domains) != sorted(DOMAINS.get(data, [])) else ""
    stem = out_dir / (opts["table"] or f"compare_samplers-{scenario}-{data_label}{tag}{subset}")
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_suffix(".md"), table)
    write_json_atomic({"title": title, "command": command.strip(), "scenario": scenario, "data": data, "layout": layout,
                       "domains": domains, "overrides": overrides, "runs": rows}, stem.with_suffix(".json"))
    print(f"written {stem}.md and {stem}.json")
    if data == "digits5_lite":
        from results_md import write_results

        print(f"written {write_results(out_dir)}")
    return 0


def sampler_overrides(entry: str) -> tuple[list[str], str]:
    """`ecos` -> ([sampler=ecos], "ecos"); `ecos:n_centroids=192` -> ([sampler=ecos, sampler.n_centroids=192], "ecos@n_centroids192")."""
    name, _, settings = entry.partition(":")
    pairs = [kv for kv in settings.split(",") if kv]
    if any("=" not in kv for kv in pairs):
        raise SystemExit(f"samplers: {entry!r} must be name or name:key=value,...")
    return [f"sampler={name}", *(f"sampler.{kv}" for kv in pairs)], name + "".join(f"@{kv.replace('=', '')}" for kv in pairs)


def per_domain(rows: dict[str, list[dict]], domains: list[str]) -> str:
    """Client test accuracy per client domain (mean over seeds) and their average; ECOS's margins beside the paper's."""
    from results_md import margins_table, per_domain_table

    return "\n" + per_domain_table(rows, domains) + "\n" + margins_table(rows, domains)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
