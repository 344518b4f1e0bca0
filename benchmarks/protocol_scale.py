"""How ECOS's protocol core scales: compress, score and select on a large synthetic pool.

    uv run python benchmarks/protocol_scale.py --n 1000000 --dim 512 --centroids 1000 --budget 10000 \
        --json benchmarks/results/protocol_scale_1m.json
    uv run python benchmarks/protocol_scale.py --n 200000 --dim 512 --centroids 256 --budget 2000 \
        --json benchmarks/results/protocol_scale_200k.json --reference

The pool is a mixture of `--components` Gaussian components whose means lie on the
unit sphere; the client's component (component 0) holds `--client-share` of the
pool and the client holds `--client-size` samples of it. Rows are L2-normalised,
like φ's output, and generated in float32 chunks from a seeded
`np.random.default_rng`, so the process holds about N·D·4 bytes of features.

The timed part is the project's real code path: `ECOSCloud(...)` + `compress()`
("compress"), `ECOSClient(...)` + `score()` ("score"), `ECOSCloud.select()`
("select"). Peak memory is the process's peak resident set (`ru_maxrss`) measured
right after the protocol ran, and `extra_rss_mb` is that minus the feature matrix.

`--reference` also runs the same protocol written plainly with scikit-learn and
numpy on the same data: `sklearn.cluster.KMeans` on every pool row (n_init=1,
`max_iter` equal to our `--niter`, sklearn's default tol; init k-means++, sklearn's
default, or `--reference-init random`, faiss's own init: on float32 features
sklearn's k-means++ is slow, as it computes its distances in float64), a
`NearestNeighbors` search for each client sample's centroid, the same
`allocate_budget`, and a k-center greedy inside each cluster that builds the
cluster's full pairwise distance matrix. All sizes are MiB (2**20 bytes).

The floor: the same run times a float32 SGEMM of the assignment's shape
([chunk rows, D] @ [D, R]) with numpy and with torch, before and after the
protocol, and takes the best rate as the machine's GEMM rate. Each stage's
multiply-adds are counted (k-means: iterations run × training rows × R × D;
assignment: N × R × D; score: client × R × D; select: for each cluster, picks ×
members × D, one matrix-vector product per k-center pick), and its time is
compared with those FLOPs at the GEMM rate: `ratio` = seconds / floor seconds.
Select is a chain of matrix-vector products, bound by memory, not by the GEMM rate.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ecos_pl.atomic import write_json_atomic  # noqa: E402
from ecos_pl.protocol import ECOSClient, ECOSCloud, allocate_budget  # noqa: E402
from ecos_pl.protocol.compress import _assignment_chunks  # noqa: E402

MIB = 2**20
#: rows generated per chunk: 16384 × 512 float32 temporaries are 32 MiB
GEN_CHUNK_ROWS = 16384


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, required=True, help="pool size N")
    p.add_argument("--dim", type=int, required=True, help="feature dimension D")
    p.add_argument("--centroids", type=int, required=True, help="number of centroids R")
    p.add_argument("--budget", type=int, required=True, help="proxy-set budget B")
    p.add_argument("--json", type=Path, required=True, help="where to write the results (atomically)")
    p.add_argument("--reference", action="store_true", help="also run the plain scikit-learn/numpy protocol")
    p.add_argument(
        "--reference-init",
        choices=["k-means++", "random"],
        default="k-means++",
        help="the reference KMeans's init: sklearn's default k-means++, or random rows as faiss does",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--components", type=int, default=100, help="Gaussian components in the pool")
    p.add_argument("--client-share", type=float, default=0.05, help="share of the pool in the client's component")
    p.add_argument("--client-size", type=int, default=2000, help="client samples (all from its component)")
    p.add_argument("--spread", type=float, default=0.5, help="expected noise norm relative to the unit-norm means")
    p.add_argument("--niter", type=int, default=20, help="k-means iterations (ours and the reference's cap)")
    p.add_argument(
        "--max-points-per-centroid", type=int, default=64, help="k-means trains on at most this many points per centroid"
    )
    args = p.parse_args(argv)
    if not 0 < args.client_share < 1:
        p.error("--client-share must be in (0, 1)")
    if args.components < 2:
        p.error("--components must be at least 2")
    return args


class Log:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.start:7.1f}s] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    """Peak resident set of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _unit_rows_inplace(block: np.ndarray) -> None:
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    block /= np.maximum(norms, 1e-12)[:, None]


def make_data(args: argparse.Namespace, log: Log) -> dict:
    """Pool [N, D] float32 unit rows, its component labels, and the client's [client_size, D] rows."""
    rng = np.random.default_rng(args.seed)
    k, d = args.components, args.dim
    means = rng.standard_normal((k, d), dtype=np.float32)
    _unit_rows_inplace(means)
    weights = np.full(k, (1.0 - args.client_share) / (k - 1))
    weights[0] = args.client_share
    component = rng.choice(k, size=args.n, p=weights).astype(np.int32)
    sigma = np.float32(args.spread / np.sqrt(d))
    pool = np.empty((args.n, d), dtype=np.float32)
    for lo in range(0, args.n, GEN_CHUNK_ROWS):
        hi = min(lo + GEN_CHUNK_ROWS, args.n)
        block = pool[lo:hi]
        rng.standard_normal(out=block, dtype=np.float32)
        block *= sigma
        block += means[component[lo:hi]]
        _unit_rows_inplace(block)
        if args.n >= 10 * GEN_CHUNK_ROWS and (lo // GEN_CHUNK_ROWS) % 16 == 0:
            log(f"generating pool: {hi:,}/{args.n:,} rows")
    client = rng.standard_normal((args.client_size, d), dtype=np.float32) * sigma + means[0]
    _unit_rows_inplace(client)
    return {"pool": pool, "component": component, "client": client}


def run_ecos(data: dict, args: argparse.Namespace, log: Log) -> dict:
    """The project's real code path; every step timed on its own."""
    log(f"compress: k-means, R={args.centroids}, niter={args.niter}, "
        f"max_points_per_centroid={args.max_points_per_centroid}, then assigning {args.n:,} rows")
    t0 = time.perf_counter()
    cloud = ECOSCloud(
        data["pool"],
        args.centroids,
        seed=args.seed,
        niter=args.niter,
        max_points_per_centroid=args.max_points_per_centroid,
    )
    message = cloud.compress()
    t1 = time.perf_counter()
    log(f"compress done in {t1 - t0:.1f}s; score: {args.client_size:,} client samples")
    client = ECOSClient(data["client"], seed=args.seed)
    reply = client.score(message)
    t2 = time.perf_counter()
    log(f"score done in {t2 - t1:.2f}s; select: budget {args.budget:,}")
    indices = cloud.select(reply, args.budget)
    t3 = time.perf_counter()
    log(f"select done in {t3 - t2:.1f}s")
    assert cloud.pool_features is data["pool"], "ECOSCloud copied an already-normalised float32 pool"
    n, d, r = args.n, args.dim, args.centroids
    n_train = min(n, r * args.max_points_per_centroid)
    iterations = int(cloud.clusters.kmeans_iterations)
    macs = {
        "kmeans": iterations * n_train * r * d,
        "assign": n * r * d,
        "score": args.client_size * r * d,
        "select": int(np.sum(cloud.allocation * cloud.clusters.sizes)) * d,
    }
    return {
        "kmeans_iterations": iterations,
        "kmeans_training_rows": n_train,
        "gflop": {k: 2 * v / 1e9 for k, v in macs.items()},
        "compress_s": t1 - t0,
        "score_s": t2 - t1,
        "select_s": t3 - t2,
        "total_s": t3 - t0,
        "n_selected": int(len(indices)),
        "in_domain_fraction": float(np.mean(data["component"][indices] == 0)) if len(indices) else 0.0,
        "bytes_down": int(message.nbytes),
        "bytes_up": int(reply.nbytes),
        "scored_clusters": int(np.count_nonzero(reply.scores)),
    }


def gemm_rates(rows: int, dim: int, n_centroids: int, *, torch_too: bool, repeats: int = 5) -> dict:
    """GFLOP/s of a float32 [rows, dim] @ [dim, n_centroids] product, best of `repeats`, per library."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((rows, dim), dtype=np.float32)
    b = rng.standard_normal((dim, n_centroids), dtype=np.float32)
    flop = 2.0 * rows * dim * n_centroids

    def best(run) -> float:
        run()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        return flop / min(times) / 1e9

    out = np.empty((rows, n_centroids), dtype=np.float32)
    rates = {"numpy": best(lambda: np.matmul(a, b, out=out))}
    if torch_too:
        import torch

        ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
        rates["torch"] = best(lambda: torch.mm(ta, tb, out=tout))
    return rates


def floor_ratios(result: dict) -> dict:
    """Per stage and in total: achieved GFLOP/s and seconds over the FLOPs' time at the GEMM rate."""
    rate = result["gemm_gflops"]
    gflop = result["gflop"]
    stages = {
        "compress": (result["compress_s"], gflop["kmeans"] + gflop["assign"]),
        "score": (result["score_s"], gflop["score"]),
        "select": (result["select_s"], gflop["select"]),
        "total": (result["total_s"], sum(gflop.values())),
    }
    return {
        name: {"seconds": s, "gflop": g, "gflops": g / s, "floor_s": g / rate, "ratio": s / (g / rate)}
        for name, (s, g) in stages.items()
    }


def dense_kcenter(x: np.ndarray, k: int, first: int) -> np.ndarray:
    """k-center greedy from the full [n, n] squared-distance matrix (the textbook way)."""
    sq = np.einsum("ij,ij->i", x, x)
    dist = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    chosen = [first]
    min_dist = dist[first].copy()
    min_dist[first] = -np.inf
    for _ in range(1, k):
        c = int(np.argmax(min_dist))
        chosen.append(c)
        np.minimum(min_dist, dist[c], out=min_dist)
        min_dist[c] = -np.inf
    return np.asarray(chosen, dtype=np.int64)


def run_reference(data: dict, args: argparse.Namespace, log: Log) -> dict:
    """The same protocol in plain scikit-learn + numpy: full-data KMeans, dense k-center."""
    from sklearn.cluster import KMeans
    from sklearn.neighbors import NearestNeighbors

    pool = data["pool"]
    log(f"reference: sklearn KMeans ({args.reference_init}, n_init=1, max_iter={args.niter}) on all {args.n:,} rows")
    t0 = time.perf_counter()
    km = KMeans(
        n_clusters=args.centroids, init=args.reference_init, n_init=1, max_iter=args.niter, random_state=args.seed
    ).fit(pool)
    labels = km.labels_.astype(np.int64)
    centers = km.cluster_centers_.astype(np.float32)
    t1 = time.perf_counter()
    log(f"reference k-means done in {t1 - t0:.1f}s ({km.n_iter_} iterations)")
    nearest = NearestNeighbors(n_neighbors=1).fit(centers).kneighbors(data["client"], return_distance=False)[:, 0]
    scores = np.bincount(nearest, minlength=args.centroids).astype(np.float64)
    t2 = time.perf_counter()
    sizes = np.bincount(labels, minlength=args.centroids)
    allocation = allocate_budget(scores, sizes, args.budget)
    picked = []
    for r in np.flatnonzero(allocation):
        members = np.flatnonzero(labels == r)
        x = pool[members]
        first = int(np.argmin(((x - centers[r]) ** 2).sum(axis=1)))
        picked.append(members[dense_kcenter(x, int(allocation[r]), first)])
    indices = np.sort(np.concatenate(picked)) if picked else np.empty(0, dtype=np.int64)
    t3 = time.perf_counter()
    log(f"reference select done in {t3 - t2:.1f}s")
    return {
        "reference_compress_s": t1 - t0,
        "reference_score_s": t2 - t1,
        "reference_select_s": t3 - t2,
        "reference_total_s": t3 - t0,
        "reference_kmeans_iterations": int(km.n_iter_),
        "reference_n_selected": int(len(indices)),
        "reference_in_domain_fraction": float(np.mean(data["component"][indices] == 0)) if len(indices) else 0.0,
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    c = result["config"]
    table = Table(title=f"ECOS protocol at N={c['n']:,}, D={c['dim']}, R={c['centroids']}, B={c['budget']:,}")
    table.add_column("")
    table.add_column("ECOS", justify="right")
    has_ref = "reference_total_s" in result
    if has_ref:
        table.add_column("reference (sklearn/numpy)", justify="right")

    def row(label, ours, ref=None):
        table.add_row(label, ours, *([ref if ref is not None else "—"] if has_ref else []))

    f = lambda key, fmt="{:.2f}": fmt.format(result[key]) if key in result else None  # noqa: E731
    row("compress s", f("compress_s"), f("reference_compress_s"))
    row("score s", f("score_s", "{:.3f}"), f("reference_score_s", "{:.3f}"))
    row("select s", f("select_s"), f("reference_select_s"))
    row("total s", f("total_s"), f("reference_total_s"))
    row("peak RSS MiB", f("peak_rss_mb", "{:.0f}"), f("reference_peak_rss_mb", "{:.0f}"))
    row("feature matrix MiB", f("feature_matrix_mb", "{:.0f}"))
    row("extra RSS MiB", f("extra_rss_mb", "{:.0f}"))
    row("in-domain fraction", f("in_domain_fraction", "{:.4f}"), f("reference_in_domain_fraction", "{:.4f}"))
    row("proxy set size", f("n_selected", "{:,}"), f("reference_n_selected", "{:,}"))
    if has_ref:
        row("speedup", f("speedup", "{:.1f}×"))
    console = Console(stderr=True)
    console.print(table)
    rates = ", ".join(f"{k} {v:.0f}" for k, v in result["gemm_gflops_by_library"].items())
    floor = Table(title=f"Against the GEMM floor: {result['gemm_gflops']:.0f} GFLOP/s (SGEMM {result['gemm_shape']}; {rates})")
    for col in ("stage", "s", "GFLOP", "GFLOP/s", "floor s", "× floor"):
        floor.add_column(col, justify="right" if col != "stage" else "left")
    for name, st in result["floor"].items():
        floor.add_row(name, f"{st['seconds']:.2f}", f"{st['gflop']:.1f}", f"{st['gflops']:.1f}", f"{st['floor_s']:.2f}",
                      f"{st['ratio']:.2f}")
    console.print(floor)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    log = Log()
    import faiss

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config.update(
        faiss_version=faiss.__version__,
        faiss_gpus=int(faiss.get_num_gpus()),
        omp_threads=int(faiss.omp_get_max_threads()),
        cpu_count=os.cpu_count(),
        load_average_at_start=list(os.getloadavg()),
    )
    log(f"generating {args.n:,} × {args.dim} pool ({args.components} components, client share {args.client_share})")
    data = make_data(args, log)
    generate_s = time.perf_counter() - log.start
    feature_mb = data["pool"].nbytes / MIB
    result = {"config": config, "generate_s": generate_s, "feature_matrix_mb": feature_mb}
    (lo, hi), *_ = _assignment_chunks(args.n, args.centroids)
    shape = (hi - lo, args.dim, args.centroids)
    log(f"GEMM floor: SGEMM [{shape[0]}, {shape[1]}] @ [{shape[1]}, {shape[2]}], numpy")
    before = gemm_rates(*shape, torch_too=False)
    result.update(run_ecos(data, args, log))
    result["peak_rss_mb"] = peak_rss_mb()
    result["extra_rss_mb"] = result["peak_rss_mb"] - feature_mb
    log("GEMM floor again after the protocol, numpy and torch")
    after = gemm_rates(*shape, torch_too=True)
    result["gemm_shape"] = f"[{shape[0]}, {shape[1]}] @ [{shape[1]}, {shape[2]}]"
    result["gemm_gflops_by_library"] = {
        "numpy_before": before["numpy"], "numpy_after": after["numpy"], "torch_after": after["torch"]
    }
    result["gemm_gflops"] = max(result["gemm_gflops_by_library"].values())
    result["floor"] = floor_ratios(result)
    if args.reference:
        result.update(run_reference(data, args, log))
        result["reference_peak_rss_mb"] = peak_rss_mb()
        result["speedup"] = result["reference_total_s"] / result["total_s"]
    return finish(result, args.json, print_table, log)


def finish(result: dict, path: Path, table, log: Log) -> dict:
    """The end every benchmark here shares: load average, JSON (atomically), the table, where it went."""
    result["load_average_at_end"] = list(os.getloadavg())
    write_json_atomic(result, path)
    table(result)
    log(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
