"""What a newcomer's first run costs, measured the way a newcomer meets it: a fresh clone, the README's first
command from nothing, each stage timed from the run's own progress lines, and the size of `.venv`.

    uv run python benchmarks/first_run.py [--cold-uv-cache] [--out benchmarks/results/first_run.json] [--readme]

Steps, in a temporary folder: `git clone` of this checkout's HEAD; `uv sync` (the install `uv run` does on its first
call; with `--cold-uv-cache` uv's cache is an empty folder, so every wheel is downloaded as on a new machine); the
size of `.venv`; then `uv run python train.py scenario=compression` with an empty `ECOS_CACHE` and its output
redirected to a file (so the run logs plain progress lines), timed whole and per stage. Prints one table, writes
the JSON, and with `--readme` rewrites the README's first-run line between its markers. ECOS_CPU_LOCK=PATH holds
an exclusive flock on PATH for the whole measurement (a shared machine's other work would distort it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.compare_samplers import cpu_lock  # noqa: E402
from benchmarks.results_md import write_readme_block  # noqa: E402

#: the README's first-run sentence lives between these lines, rewritten by `--readme`
START, END = "<!-- first run: benchmarks/first_run.py -->", "<!-- end of first run -->"
#: (stage, pattern over the run's log) for the stages the run's progress lines time
STAGES = (
    ("data", r"built \S+ \(.*?\) in (\d+\.\d+) s"),
    ("φ fit", r"fitting φ .*: done in (\d+\.\d+) s"),
    ("teacher", r"teacher: .*training finished after \d+ steps in (\S+)"),
    ("pool φ features", r"φ features of the [\d,]+ pool images: done in (\d+\.\d+) s"),
    ("selection", r"choosing the proxy set .*: done in (\d+\.\d+) s"),
    ("student", r"^(?!teacher).*: training finished after \d+ steps in (\S+)"),
    ("test", r"testing finished in (\S+)"),
)


def seconds(text: str) -> float:
    """'12.3' (seconds), '45s' or '3m07s' as seconds."""
    if m := re.fullmatch(r"(\d+)m(\d+)s", text):
        return 60 * int(m[1]) + int(m[2])
    return float(text.rstrip("s"))


def stage_times(log: str) -> dict[str, float]:
    """Each stage's seconds from the run's log (a stage that ran more than once: the sum; one that did not: absent)."""
    out: dict[str, float] = {}
    for line in log.splitlines():
        for stage, pattern in STAGES:
            if m := re.search(pattern, line.split("] - ", 1)[-1]):
                out[stage] = round(out.get(stage, 0.0) + seconds(m[1]), 1)
    return out


def tree_bytes(path: Path) -> int:
    """Bytes on disk under `path` (`du`'s count: hard links into uv's cache counted once)."""
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def measure(cold_uv_cache: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="ecos-first-run-") as tmp:
        tmp = Path(tmp)
        clone, env = tmp / "ecos-pl", {**os.environ, "ECOS_CACHE": str(tmp / "cache"), "WANDB_MODE": "offline"}
        env.pop("VIRTUAL_ENV", None)
        if cold_uv_cache:
            env["UV_CACHE_DIR"] = str(tmp / "uv-cache")
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        t0 = time.perf_counter()
        subprocess.run(["uv", "sync", "-q"], cwd=clone, env=env, check=True)
        install = time.perf_counter() - t0
        venv = tree_bytes(clone / ".venv")
        log_path = tmp / "run.log"
        t0 = time.perf_counter()
        with log_path.open("w") as log:
            run = subprocess.run(["uv", "run", "python", "train.py", "scenario=compression",
                                  f"results_file={tmp / 'results.json'}"], cwd=clone, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
        total = time.perf_counter() - t0
        text = log_path.read_text()
        if run.returncode != 0:
            raise SystemExit(f"first_run: train.py failed (exit {run.returncode}):\n{text[-3000:]}")
        results = json.loads((tmp / "results.json").read_text())
        gaps = _longest_silence(text)
        shutil.copy(log_path, ROOT / "benchmarks" / "results" / "first_run.log")
    return {"cold_uv_cache": cold_uv_cache, "install_s": round(install, 1), "venv_gb": round(venv / 1e9, 2),
            "run_s": round(total, 1), "stages_s": stage_times(text), "longest_silence_s": gaps,
            "client_test_acc": results["client_test_acc"], "teacher_test_acc": results.get("teacher_test_acc"),
            "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def _longest_silence(log: str) -> float | None:
    """The longest gap between two timestamped log lines (Hydra's `[YYYY-mm-dd HH:MM:SS,mmm]` prefix)."""
    stamps = [time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000
              for m in re.finditer(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]", log, flags=re.M)]
    return round(max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0), 1) if len(stamps) > 1 else None


def sentence(r: dict) -> str:
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in r["stages_s"].items())
    return (f"Measured by `benchmarks/first_run.py` ({r['date']}, {r['cpus']} CPU cores, a fresh clone, "
            f"{'an empty uv cache' if r['cold_uv_cache'] else 'uv cache warm'}, empty `ECOS_CACHE`): install "
            f"**{r['install_s']:.0f} s**, `.venv` **{r['venv_gb']:.1f} GB**; the main job **{r['run_s']:.0f} s** "
            f"({stages}); student {r['client_test_acc']:.4f}, teacher {r['teacher_test_acc']:.4f}; "
            f"output redirected to a file, the longest gap between two log lines was {r['longest_silence_s']} s.")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold-uv-cache", action="store_true", help="install into an empty uv cache (downloads all)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "first_run.json")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's first-run line")
    args = parser.parse_args(argv)
    with cpu_lock():
        result = measure(args.cold_uv_cache)
    print(f"| stage | seconds |\n|---|---|\n| install (uv sync) | {result['install_s']} |")
    for stage, value in result["stages_s"].items():
        print(f"| {stage} | {value} |")
    print(f"| main job, whole | {result['run_s']} |\n\n.venv: {result['venv_gb']} GB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if args.readme:
        write_readme_block(ROOT / "README.md", START, END, sentence(result))
    return result


if __name__ == "__main__":
    main()
