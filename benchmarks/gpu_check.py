"""The GPU check: the code paths that only run on a CUDA machine, which CI (no GPU) never runs.

    bash benchmarks/gpu_check.sh [--out benchmarks/results/gpu_check.json] [--deadline S] [--small] [--cpu-only]

Stages, each in a child process with its own timeout (so one hung stage cannot eat a lease):

* train / gpu, train / ddp: the main job (`train.py scenario=compression logger=csv`, an empty
  cache of its own) on `trainer=gpu`, then on `trainer=ddp` (every visible GPU, `devices=-1`);
  wall s is the whole process, the metric the student's client test accuracy (`results_file`);
* k-means / gpu, k-means / cpu: `compress()` (faiss's GPU `Kmeans`, or the CPU kernel of
  `ecos_pl/protocol/kernels.py`) on `protocol_scale.py`'s 1M × 512 pool, R = 1000; wall s is
  `compress()` (k-means and the exact assignment), the metric its mean squared distance;
* φ / gpu, φ / cpu: the app's φ (`conf/phi/random_cnn.yaml`) through `predict_pool_features`
  (Lightning's `trainer.predict`) on 100k (GPU) or 20k (CPU) random 32 × 32 images, after a
  warm-up of two batches; the metric is images/s.

Without CUDA the GPU stages are "skipped: no CUDA" (with `--cpu-only`, "skipped: --cpu-only")
and the CPU stages run; `--small` shrinks every size (what tests/test_gpu_check.py runs). Prints one table,
writes the JSON, and exits 1 if any stage failed or timed out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.protocol_scale import Log, finish  # noqa: E402

#: seconds each stage may run (cut further by --deadline)
TIMEOUTS = {"train": 180, "kmeans": 120, "phi": 90}
#: (stage, device) in the order they run: the main job first, it matters most
STAGES = [("train", "gpu"), ("train", "ddp"), ("kmeans", "cpu"), ("kmeans", "gpu"), ("phi", "gpu"), ("phi", "cpu")]
#: results of train.py kept in the check's JSON
TRAIN_KEYS = ("client_test_acc", "client_val_acc", "teacher_test_acc", "world_size", "train_steps", "n_selected",
              "in_domain_fraction", "timings")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    p.add_argument("--small", action="store_true", help="tiny sizes (tests, CI): debug=smoke, a 20k × 64 pool, 512 images")
    p.add_argument("--cpu-only", action="store_true", help="skip the GPU stages even where CUDA is available")
    p.add_argument("--deadline", type=float, default=None, help="seconds for the whole check; later stages get what is left")
    p.add_argument("--logs", type=Path, default=None, help="keep each stage's output here (default: a temporary folder)")
    p.add_argument("--train-args", nargs="*", default=[], help="extra train.py overrides (e.g. debug=smoke)")
    p.add_argument("--kmeans-n", type=int, default=1_000_000)
    p.add_argument("--kmeans-dim", type=int, default=512)
    p.add_argument("--centroids", type=int, default=1000)
    p.add_argument("--phi-n", type=int, default=100_000, help="images for φ on GPU")
    p.add_argument("--phi-cpu-n", type=int, default=20_000, help="images for φ on CPU")
    p.add_argument("--seed", type=int, default=1)
    # a child process runs one stage and writes its result here
    p.add_argument("--stage", choices=["kmeans", "phi"], help=argparse.SUPPRESS)
    p.add_argument("--device", choices=["cpu", "gpu"], help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.small:
        args.train_args = ["debug=smoke", "data=digits_lite", *args.train_args]
        args.kmeans_n, args.kmeans_dim, args.centroids, args.phi_n, args.phi_cpu_n = 20_000, 64, 32, 512, 512
    return args


# --------------------------------------------------------------------------- stages in a child process


def kmeans_stage(args: argparse.Namespace, gpu: bool) -> dict:
    import faiss
    import numpy as np

    from benchmarks.protocol_scale import make_data
    from benchmarks.protocol_scale import parse_args as scale_args
    from ecos_pl.protocol.compress import compress

    if gpu and not hasattr(faiss, "StandardGpuResources"):  # before the pool is generated: say why, at once
        raise RuntimeError(f"faiss {faiss.__version__} has no GPU support (a CPU-only build: {faiss.__file__})")
    if gpu and faiss.get_num_gpus() == 0:
        raise RuntimeError(f"faiss {faiss.__version__} sees no GPU (faiss.get_num_gpus() == 0)")
    scale = scale_args(["--n", str(args.kmeans_n), "--dim", str(args.kmeans_dim), "--centroids", str(args.centroids),
                        "--budget", "1", "--json", os.devnull, "--seed", str(args.seed)])
    pool = make_data(scale, Log())["pool"]
    t0 = time.perf_counter()
    _, clusters = compress(pool, args.centroids, seed=args.seed, niter=scale.niter,
                           max_points_per_centroid=scale.max_points_per_centroid, use_gpu=gpu)
    wall = time.perf_counter() - t0
    objective = float(np.mean(clusters.sq_distances, dtype=np.float64))
    return {"wall_s": wall, "metric": f"mean sq. dist {objective:.4f}, {clusters.kmeans_iterations} iters",
            "values": {"mean_sq_distance": objective, "kmeans_iterations": int(clusters.kmeans_iterations),
                       "n": args.kmeans_n, "dim": args.kmeans_dim, "centroids": args.centroids,
                       "faiss_version": faiss.__version__, "faiss_gpus": int(faiss.get_num_gpus())}}


def phi_stage(args: argparse.Namespace, gpu: bool) -> dict:
    import numpy as np
    import pytorch_lightning as pl
    import torch

    from benchmarks.cloud_pipeline import make_phi
    from ecos_pl.feature_cache import cache_entry
    from ecos_pl.feature_predict import predict_pool_features

    n = args.phi_n if gpu else args.phi_cpu_n
    # random 32 × 32 RGB images, digits5_lite's size: φ's cost does not depend on what the pixels show
    images = np.random.default_rng(args.seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
    phi = make_phi("random_cnn", args.seed).fit(images)
    trainer = pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with tempfile.TemporaryDirectory(prefix="gpu_check-phi-") as tmp:

        def extract(rows, name):
            path, meta = cache_entry(tmp, phi, f"gpu_check-{name}", "float32")
            return predict_pool_features(trainer, phi, rows, path, meta, dtype="float32")

        extract(images[: 2 * phi.batch_rows], "warmup")  # CUDA context, cuDNN's choices, the first allocations
        info = extract(images, "timed")
    rate = n / info["seconds"]
    return {"wall_s": info["seconds"], "metric": f"{rate:,.0f} img/s",
            "values": {"images_per_s": rate, "n": n, "image_size": 32, "batch": int(phi.batch_rows),
                       "device": str(trainer.strategy.root_device), "torch_threads": torch.get_num_threads()}}


def child_main(args: argparse.Namespace) -> None:
    result = {"kmeans": kmeans_stage, "phi": phi_stage}[args.stage](args, args.device == "gpu")
    args.result.write_text(json.dumps(result))


# --------------------------------------------------------------------------- the parent: run, time out, tabulate


def last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def run_child(cmd: list[str], log: Path, timeout: float) -> str | None:
    """Run `cmd` (its own process group) with output to `log`; None if it exited 0, else why not."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # DDP's ranks too
            proc.wait()
            return f"failed: timed out after {timeout:.0f} s"
    return None if code == 0 else f"failed (exit {code}): {last_line(log)}"


def stage_row(stage: str, device: str, status: str, **fields) -> dict:
    """One row of the table and the JSON; every row has every key."""
    return {"stage": stage, "device": device, "status": status, "wall_s": None, "metric": "", "values": {},
            "process_s": None, "command": None, "log": None, **fields}


def run_stage(stage: str, device: str, args: argparse.Namespace, work: Path, logs: Path, timeout: float) -> dict:
    log = logs / f"{stage}-{device}.log"
    result = work / f"{stage}-{device}.json"
    if stage == "train":
        cmd = [sys.executable, "train.py", "scenario=compression", f"trainer={device}", "logger=csv",
               f"cache_dir={work / ('cache-' + device)}", f"hydra.run.dir={work / ('run-' + device)}",
               f"results_file={result}", *args.train_args]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--device", device, "--result", str(result),
               "--kmeans-n", str(args.kmeans_n), "--kmeans-dim", str(args.kmeans_dim), "--centroids", str(args.centroids),
               "--phi-n", str(args.phi_n), "--phi-cpu-n", str(args.phi_cpu_n), "--seed", str(args.seed)]
    t0 = time.perf_counter()
    failure = run_child(cmd, log, timeout)
    if failure is None and not result.is_file():
        failure = f"failed: exited 0 without writing {result.name}: {last_line(log)}"
    row = stage_row(stage, device, failure or "ok", process_s=time.perf_counter() - t0, command=" ".join(cmd[1:]),
                    log=str(log))
    if failure is None:
        out = json.loads(result.read_text())
        if stage == "train":
            values = {k: out.get(k) for k in TRAIN_KEYS}
            teacher = values["teacher_test_acc"]
            out = {"wall_s": row["process_s"], "values": values,
                   "metric": f"student acc {values['client_test_acc']:.4f}"
                             + (f" (teacher {teacher:.4f})" if teacher is not None else "")}
        row.update(out)
    return row


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    m = result["machine"]
    table = Table(title=f"GPU check on {m['gpu'] or 'no GPU'} · torch {m['torch']} · {m['cpu_count']} CPUs")
    for col in ("stage", "device", "status", "wall s", "metric"):
        table.add_column(col, justify="right" if col == "wall s" else "left", overflow="fold")
    for r in result["stages"]:
        table.add_row(r["stage"], r["device"], r["status"], "" if r["wall_s"] is None else f"{r['wall_s']:.2f}", r["metric"])
    Console(width=160).print(table)


def probe_cuda(cpu_only: bool) -> tuple[str | None, dict]:
    """(why the GPU stages are skipped, or None; the machine). `--cpu-only` does not import torch (a faster CI check)."""
    from importlib.metadata import version

    machine = {"gpu": None, "gpus": 0, "cuda": None, "torch": version("torch"), "lightning": version("pytorch-lightning"),
               "python": platform.python_version(), "cpu_count": os.cpu_count(), "host": platform.node()}
    if cpu_only:
        return "--cpu-only", machine
    import torch

    if not torch.cuda.is_available():
        return "no CUDA", machine
    machine.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return None, machine


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stage:
        child_main(args)
        return 0
    log = Log()
    reason, machine = probe_cuda(args.cpu_only)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("stage", "device", "result")}
    end = None if args.deadline is None else time.perf_counter() + args.deadline
    stages = []
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        logs = args.logs or Path(tmp) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for stage, device in STAGES:
            left = TIMEOUTS[stage] if end is None else min(TIMEOUTS[stage], end - time.perf_counter())
            if device != "cpu" and reason:
                row = stage_row(stage, device, f"skipped: {reason}")
            elif left < 10:
                row = stage_row(stage, device, "failed: no time left (--deadline)")
            else:
                log(f"{stage} / {device} (timeout {left:.0f} s)")
                row = run_stage(stage, device, args, Path(tmp), logs, left)
                log(f"{stage} / {device}: {row['status']}")
            stages.append(row)
    ok = not any(r["status"].startswith("failed") for r in stages)
    result = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": " ".join(sys.argv), "machine": machine,
              "config": config, "stages": stages, "ok": ok}
    finish(result, args.out, print_table, log)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
