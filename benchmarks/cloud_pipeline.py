"""The cloud's whole path on a 100k-image pool: decode → φ (trainer.predict) → compress → score → select.

    uv run python benchmarks/cloud_pipeline.py --n 100000 --json benchmarks/results/cloud_pipeline_100k.json

The pool is digits_lite's (4,480 images, 8.4% in the client's domain) tiled to
`--n` images, each copy shifted by a seeded random offset of up to 2 pixels and
its brightness scaled by a seeded factor in [0.9, 1.1], so no two rows are
equal. Untimed setup writes them as PNG files into a temporary folder; the timed
stages are then the project's own code:

* decode: `ecos_pl.data.images.decode_all` (PIL, as `data=folders` decodes a tree);
* φ: `ecos_pl.feature_predict.predict_pool_features` through Lightning's
  `trainer.predict` (accelerator auto: a GPU when there is one), the app's φ
  (`conf/phi/<--phi>.yaml`), written to a feature cache file in the app's dtype;
* compress, score, select: `ECOSCloud` / `ECOSClient` as `protocol_scale.py` times
  them (scores without noise: the mechanism's cost is negligible), on the cached features;
  the client's φ is timed on its own.

The JSON and table give seconds per stage, φ's images/s, and a projection to
`--project` images: decode, φ and select scale linearly; compress is k-means on at
most R × max_points_per_centroid rows (fixed) plus the assignment (linear), split
by their multiply-adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.protocol_scale import Log, finish, peak_rss_mb  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="pool images after tiling")
    p.add_argument("--json", type=Path, required=True, help="where to write the results (atomically)")
    p.add_argument("--phi", default="random_cnn", help="a conf/phi/*.yaml name (the app's default: random_cnn)")
    p.add_argument("--centroids", type=int, default=1000, help="R")
    p.add_argument("--budget", type=int, default=10_000, help="B")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (README: 20 from 100k samples up)")
    p.add_argument("--max-points-per-centroid", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--project", type=int, default=1_000_000, help="pool size to project the costs to")
    p.add_argument("--workdir", type=Path, default=None, help="folder for the PNG tree and features (default: a temporary one)")
    args = p.parse_args(argv)
    if args.n < 1 or args.centroids < 1 or args.budget < 1:
        p.error("--n, --centroids and --budget must be positive")
    return args


def tiled_pool(images: np.ndarray, domains: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` images: the pool repeated, each copy shifted (≤ 2 px) and brightness-scaled ([0.9, 1.1]), seeded."""
    rng = np.random.default_rng(seed)
    src = np.arange(n) % len(images)
    shifts = rng.integers(-2, 3, size=(n, 2))
    gains = rng.uniform(0.9, 1.1, size=n).astype(np.float32)
    out = np.empty((n, *images.shape[1:]), dtype=np.uint8)
    for i in range(n):
        shifted = np.roll(images[src[i]], tuple(shifts[i]), axis=(0, 1))
        out[i] = np.clip(shifted.astype(np.float32) * gains[i], 0, 255).astype(np.uint8)
    return out, domains[src]


def write_png_tree(images: np.ndarray, folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        name = f"{i // 10000:03d}/{i:07d}.png"
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / name)
        names.append(name)
    return names


def make_phi(name: str, seed: int):
    import hydra
    from omegaconf import OmegaConf

    spec = OmegaConf.load(ROOT / "conf" / "phi" / f"{name}.yaml")
    spec.seed = seed
    return hydra.utils.instantiate(spec)


def run(args: argparse.Namespace, workdir: Path, log: Log) -> dict:
    import pytorch_lightning as pl
    import torch

    from ecos_pl.data.digits_lite import build_digits_lite
    from ecos_pl.data.images import decode_all
    from ecos_pl.feature_cache import cache_entry
    from ecos_pl.feature_predict import predict_pool_features
    from ecos_pl.protocol import ECOSClient, ECOSCloud

    data = build_digits_lite(seed=args.seed)
    size = data.pool.images.shape[1]
    log(f"setup: tiling the {len(data.pool):,}-image pool to {args.n:,} and writing PNGs to {workdir}")
    pool, domains = tiled_pool(data.pool.images, data.pool.domains, args.n, args.seed)
    names = write_png_tree(pool, workdir / "pool")
    del pool

    r = {}
    log("decode")
    t0 = time.perf_counter()
    images, ok, failed = decode_all(workdir / "pool", names, size)
    r["decode_s"] = time.perf_counter() - t0
    assert ok.all(), failed[:3]

    phi = make_phi(args.phi, args.seed).fit(images)
    trainer = pl.Trainer(
        accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    path, meta = cache_entry(workdir / "cache", phi, f"cloud_pipeline-{args.n}-{args.seed}", "auto")
    log(f"φ ({args.phi}) through trainer.predict on {trainer.strategy.root_device}")
    info = predict_pool_features(trainer, phi, images, path, meta)
    r["phi_s"] = info["seconds"]
    r["phi_images_per_s"] = args.n / info["seconds"]
    features = np.load(path, mmap_mode="r")
    r["feature_dtype"], r["feature_dim"] = str(features.dtype), int(features.shape[1])

    log("compress")
    t0 = time.perf_counter()
    cloud = ECOSCloud(
        features, args.centroids, seed=args.seed, niter=args.niter, max_points_per_centroid=args.max_points_per_centroid
    )
    message = cloud.compress()
    r["compress_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    client_features = phi.transform(data.client_train.images)
    r["client_phi_s"] = time.perf_counter() - t0
    log("score")
    t0 = time.perf_counter()
    reply = ECOSClient(client_features, seed=args.seed).score(message)
    r["score_s"] = time.perf_counter() - t0
    log("select")
    t0 = time.perf_counter()
    picked = cloud.select(reply, args.budget)
    r["select_s"] = time.perf_counter() - t0

    d, k = int(features.shape[1]), args.centroids
    n_train = min(args.n, k * args.max_points_per_centroid)
    kmeans_macs = int(cloud.clusters.kmeans_iterations) * n_train * k * d
    assign_macs = args.n * k * d
    scale = args.project / args.n
    r["projected"] = {
        "n": args.project,
        "decode_s": r["decode_s"] * scale,
        "phi_s": r["phi_s"] * scale,
        "compress_s": r["compress_s"] * (kmeans_macs + assign_macs * scale) / (kmeans_macs + assign_macs),
        "score_s": r["score_s"],
        "select_s": r["select_s"] * scale,
    }
    r["projected"]["total_s"] = sum(v for key, v in r["projected"].items() if key.endswith("_s"))
    r["total_s"] = sum(r[key] for key in ("decode_s", "phi_s", "compress_s", "client_phi_s", "score_s", "select_s"))
    in_domain = domains == data.client_domain_index
    r.update(
        n_selected=int(len(picked)),
        pool_in_domain_fraction=float(in_domain.mean()),
        in_domain_fraction=float(in_domain[picked].mean()) if len(picked) else 0.0,
        kmeans_iterations=int(cloud.clusters.kmeans_iterations),
        device=str(trainer.strategy.root_device),
        gpu_name=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        torch_threads=torch.get_num_threads(),
        peak_rss_mb=peak_rss_mb(),
    )
    return r


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c, p = result["config"], result["projected"]
    table = Table(title=f"Cloud pipeline: {c['n']:,} images, φ={c['phi']}, R={c['centroids']}, B={c['budget']:,} "
                        f"on {result['device']}")  # fmt: skip
    for col in ("stage", "s", f"projected to {p['n']:,} s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    table.add_row("decode (PIL)", f"{result['decode_s']:.2f}", f"{p['decode_s']:.1f}")
    table.add_row(f"φ trainer.predict ({result['phi_images_per_s']:,.0f} img/s)", f"{result['phi_s']:.2f}", f"{p['phi_s']:.1f}")
    table.add_row("compress", f"{result['compress_s']:.2f}", f"{p['compress_s']:.1f}")
    table.add_row("client φ (client side)", f"{result['client_phi_s']:.2f}", "—")
    table.add_row("score (client side)", f"{result['score_s']:.3f}", f"{p['score_s']:.3f}")
    table.add_row("select", f"{result['select_s']:.2f}", f"{p['select_s']:.1f}")
    table.add_row("total", f"{result['total_s']:.2f}", f"{p['total_s']:.1f}")
    table.add_row("in-domain fraction (pool)", f"{result['in_domain_fraction']:.3f} ({result['pool_in_domain_fraction']:.3f})", "")
    table.add_row("peak RSS MiB", f"{result['peak_rss_mb']:.0f}", "")
    Console(stderr=True).print(table)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log = Log()
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(cpu_count=os.cpu_count(), load_average_at_start=list(os.getloadavg()))
    with tempfile.TemporaryDirectory(prefix="cloud_pipeline-") as tmp:
        workdir = Path(tmp) if args.workdir is None else args.workdir
        result = {"config": config, **run(args, workdir, log)}
    return finish(result, args.json, print_table, log)


if __name__ == "__main__":
    main()
