"""benchmarks/gpu_check.sh in its CPU-safe mode (what CI can run): GPU stages skipped, CPU stages run, one table,
the JSON's shape, exit 0; and a stage that fails or hangs is a failed row, not a hung check."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
KEYS = {"stage", "device", "status", "wall_s", "metric", "values", "process_s", "command", "log"}


def test_cpu_only_small_runs_the_cpu_stages_and_skips_the_gpu_ones(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--small", "--cpu-only", "--out", str(out),
           "--logs", str(tmp_path / "logs"), "--deadline", "120"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for column in ("stage", "device", "status", "wall s", "metric"):
        assert column in proc.stdout
    result = json.loads(out.read_text())
    assert result["ok"] is True and result["machine"]["gpu"] is None
    rows = {(r["stage"], r["device"]): r for r in result["stages"]}
    assert list(rows) == [("train", "gpu"), ("train", "ddp"), ("kmeans", "cpu"), ("kmeans", "gpu"), ("phi", "gpu"), ("phi", "cpu")]
    assert all(set(r) == KEYS for r in rows.values())
    for key, row in rows.items():
        if key[1] == "cpu":
            assert row["status"] == "ok" and row["wall_s"] > 0 and row["metric"], row
            assert Path(row["log"]).is_file()
        else:
            assert row["status"] == "skipped: --cpu-only" and row["wall_s"] is None
    assert rows["kmeans", "cpu"]["values"]["n"] == 20000 and rows["kmeans", "cpu"]["values"]["mean_sq_distance"] > 0
    assert rows["phi", "cpu"]["values"]["images_per_s"] > 0 and rows["phi", "cpu"]["values"]["device"] == "cpu"


def test_a_failing_or_hung_stage_is_a_failed_row(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    boom = gc.run_child([sys.executable, "-c", "raise SystemExit('no GPU here: boom')"], tmp_path / "boom.log", 30)
    assert boom == "failed (exit 1): no GPU here: boom"
    hung = gc.run_child([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "hung.log", 1)
    assert hung == "failed: timed out after 1 s"
