"""Run every sampler over several seeds through `train.py`, and tabulate the results.

    uv run python benchmarks/compare_samplers.py                        # compression, seeds 1-3
    uv run python benchmarks/compare_samplers.py seeds=[1] samplers=[ecos,random] budget=200

`seeds=`, `samplers=`, `out=` belong to this script; every other `key=value` is a
Hydra override passed to each `train.py` run. Each run writes its own results
JSON (kept, so an interrupted comparison resumes where it stopped); the table
(mean ± std over seeds) is printed and written as markdown and JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ecos_pl.conf_store  # noqa: E402,F401 - the protocol settings nodes Hydra composes from
from ecos_pl.atomic import write_json_atomic, write_text_atomic  # noqa: E402

DEFAULTS = {
    "seeds": [1, 2, 3],
    "samplers": ["ecos", "random", "full", "kcenter", "uniform_cluster", "oracle_central", "client_data"],
    "out": "benchmarks/results",
}
#: columns of the table; one that no run reports (e.g. labels_bought outside label_outsourcing) is left out
COLUMNS = [
    "client_test_acc", "teacher_test_acc", "in_domain_fraction", "n_selected", "n_trained", "bytes_up", "bytes_down",
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
    return opts, overrides


def config_sha1(overrides: list[str]) -> str:
    """Hash of the run's composed config (interpolations unresolved, `results_file` left out).

    A kept run is reused only when its config hash matches, so changing a config file
    (not only the command line) reruns the runs it affects instead of reusing stale ones.
    """
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[o for o in overrides if not o.startswith("results_file=")])
    return hashlib.sha1(OmegaConf.to_yaml(cfg).encode()).hexdigest()


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
        cmd = [sys.executable, "train.py", *run_overrides, f"results_file={result_file}"]
        print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}", flush=True)
        with cpu_lock():
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
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


def markdown(rows: dict[str, list[dict]], title: str) -> str:
    columns = [c for c in COLUMNS if any(r.get(c) is not None for runs in rows.values() for r in runs)]
    lines = [f"### {title}", "", "| sampler | " + " | ".join(columns) + " | train s |", "|---" * (len(columns) + 2) + "|"]
    for sampler, runs in rows.items():
        cells = [mean_std([r.get(c) for r in runs]) for c in columns]
        cells.append(mean_std([r["timings"]["train"] for r in runs]))
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    opts, overrides = parse_args(argv)
    scenario = next((o.split("=", 1)[1] for o in overrides if o.startswith("scenario=")), "compression")
    data = next((o.split("=", 1)[1] for o in overrides if o.startswith("data=")), "digits_lite")
    out_dir = (ROOT / opts["out"]).resolve()
    extra = sorted(o for o in overrides if not o.startswith(("scenario=", "data=")))
    # runs with other overrides never share (and never reuse) each other's results
    tag = f"-{hashlib.sha1(' '.join(extra).encode()).hexdigest()[:8]}" if extra else ""
    runs_dir = out_dir / "runs" / f"{scenario}-{data}{tag}"
    rows: dict[str, list[dict]] = {}
    for sampler in opts["samplers"]:
        for seed in opts["seeds"]:
            kept = run_kept([f"sampler={sampler}", f"seed={seed}", "logger=csv", *overrides], runs_dir / f"{sampler}-seed{seed}.json")
            if kept is None:
                return 1
            rows.setdefault(sampler, []).append(kept)
    title = f"{scenario} on {data}, seeds {opts['seeds']}" + (f" ({' '.join(overrides)})" if overrides else "")
    table = markdown(rows, title)
    print(table)
    stem = out_dir / f"compare_samplers-{scenario}-{data}{tag}"
    write_text_atomic(stem.with_suffix(".md"), table)
    write_json_atomic({"title": title, "overrides": overrides, "runs": rows}, stem.with_suffix(".json"))
    print(f"written {stem}.md and {stem}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
