"""A fleet of devices: how the proxy set holds up as the client is split over N devices, local vs distributed noise,
and how much of the budget one forging device takes (issue 29, item 5; selection only, no training).

    uv run python benchmarks/fleet.py --part digits   # train.py's pipeline on digits_lite: N = 1, 10, 100, one per sample
    uv run python benchmarks/fleet.py --part scale    # synthetic features: 1,000 and 10,000 devices of 50 samples
    uv run python benchmarks/fleet.py --part forge    # one forging device among 3, 10, 100, plain and under a secure sum
    uv run python benchmarks/fleet.py --part train    # train.py runs (student trained): N = 1, 10, 100, one per sample
    uv run python benchmarks/fleet.py --part flower   # 100 devices through Flower's simulation with SecAgg+

Each part writes benchmarks/results/fleet-<part>.json and .md. `--seeds` and `--n` shrink a part. What is
measured is the proxy set's in-domain share (the pool's base rate on digits_lite is 0.084); `--part train` adds the
client-test accuracy of the student trained on it: whole `train.py` runs (compression, the default φ), each kept as its
results JSON under benchmarks/results/runs/fleet-train-<data>/ so an interrupted part resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ecos_pl.atomic import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _sigma(score_privacy: dict, key: str) -> float:
    """σ per count, `key` "device_sigma" or "sum_sigma"; one client's report has only its `noise_sigma`."""
    return score_privacy.get(key) or score_privacy.get("noise_sigma", 0)


def _runs(args) -> Path:
    """Where the `train.py` runs of parts train and flower are kept (one results JSON each)."""
    runs = args.out / "runs" / f"fleet-train-{args.data}"
    runs.mkdir(parents=True, exist_ok=True)
    return runs


def _fleet_run(runs: Path, n: int, noise: str, seed: int) -> Path:
    """Part train's results file for N devices (-1: one per sample); part flower reads its distributed runs."""
    return runs / f"ecos-n{n}-{noise}-seed{seed}.json"


def _pipeline(overrides):
    import hydra

    from ecos_pl.flower.run_config import train_config

    return hydra.utils.instantiate(train_config(overrides).datamodule.pipeline)


def part_digits(args) -> list[dict]:
    """train.py's protocol (data, φ, sampler, ε = 0.58) with the client split over N devices."""
    rows = []
    n_train = None
    for seed in args.seeds:
        for n in args.n:
            for noise in ("local", "distributed"):
                if n == 1 and noise == "distributed":
                    continue
                for unit in args.units:
                    base = [f"data={args.data}", f"seed={seed}", f"budget={args.budget}", "datamodule.pipeline.cache_dir=null", *args.override]
                    if n == -1:  # one device per sample
                        n_train = n_train or len(_pipeline(base).data.client_train)
                    devices = n_train if n == -1 else n
                    p = _pipeline(base + [f"clients={devices}", f"client.noise={noise}", f"client.unit={unit}"])
                    start = time.perf_counter()
                    _, report = p.select()
                    sp = report.score_privacy or {}
                    rows.append({"data": args.data, "seed": seed, "devices": devices, "noise": noise, "unit": unit,
                                 "in_domain": round(report.in_domain_fraction, 4), "device_sigma": round(_sigma(sp, "device_sigma"), 3),
                                 "sum_sigma": round(_sigma(sp, "sum_sigma"), 3), "bytes_up_per_device": report.bytes_up // devices,
                                 "bytes_down_per_device": report.bytes_down, "seconds": round(time.perf_counter() - start, 2)})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def part_train(args) -> list[dict]:
    """Whole `train.py` runs (compression: the student trained on the proxy set, tested on the client's test split)
    with the client split over N devices, local vs distributed noise at the fleet's ε; one row per (N, noise), mean ±
    std over the seeds."""
    from compare_samplers import mean_std, run_kept

    runs = _runs(args)
    n_train, one_client = None, {}
    rows, points = [], []
    for n in args.n:
        for noise in ("local", "distributed"):
            if n == 1 and noise == "distributed":
                continue
            results = []
            for seed in args.seeds:
                base = [f"data={args.data}", "scenario=compression", f"seed={seed}", *args.override]
                if n == -1:
                    n_train = n_train or len(_pipeline(base).data.client_train)
                devices = n_train if n == -1 else n
                fleet = [f"clients={devices}", f"client.noise={noise}"] if devices > 1 else []
                kept = run_kept(base + fleet, _fleet_run(runs, n, noise, seed))
                if kept is None:
                    raise SystemExit(f"a train.py run failed: {' '.join(base + fleet)}")
                results.append(kept)
            if devices == 1:
                one_client = {r["seed"]: r["client_test_acc"] for r in results}
            paired = [r["client_test_acc"] - one_client[r["seed"]] for r in results if r["seed"] in one_client] if n != 1 else []
            rows.append({"data": args.data, "devices": devices, "noise": noise if devices > 1 else "one client",
                         "seeds": len(results),
                         "client_test_acc": mean_std([r["client_test_acc"] for r in results]),
                         "acc_minus_one_client": mean_std(paired) if paired else "–",
                         "in_domain": mean_std([r["in_domain_fraction"] for r in results]),
                         "sum_sigma": mean_std([round(_sigma(r["score_privacy"], "sum_sigma"), 3) for r in results]),
                         "bytes_up_per_device": results[0]["bytes_up"] // devices,
                         "selection_seconds": mean_std([round(sum(r["timings"][k] for k in ("features", "compress", "score", "select")), 2) for r in results]),
                         "proxy_set_sha1_seed1": results[0]["proxy_set_sha1"][:12]})
            points.append((devices, rows[-1]["noise"], [r["client_test_acc"] for r in results], [r["in_domain_fraction"] for r in results],
                           float(np.mean([round(_sigma(r["score_privacy"], "sum_sigma"), 3) for r in results]))))
            print(json.dumps(rows[-1]), flush=True)
    _plot_train(points, args.out / f"{args.name or 'fleet-train'}.png", args.data)
    if args.out == RESULTS and args.data == "digits_lite" and args.seeds == [1, 2, 3]:
        _readme_table(points)
    return rows


#: the README's fleet table lives between these lines, written by `--part train` (digits_lite, seeds 1-3)
README_START, README_END = "<!-- fleet table: benchmarks/fleet.py --part train -->", "<!-- end of fleet table -->"


def _readme_table(points) -> None:
    from results_md import write_readme_block

    def cell(noise, devices):
        p = [q for q in points if q[0] == devices and q[1] == noise]
        if not p:
            return "–"
        acc, ind = p[0][2], p[0][3]
        return f"{100 * np.mean(acc):.1f} ± {100 * np.std(acc, ddof=1):.1f} / {np.mean(ind):.3f}"

    lines = ["| devices | one client or local noise: accuracy (%) / in-domain | distributed noise, secure sum | σ in the sum (local / distributed) |",
             "|---|---|---|---|"]
    sigma = {(q[0], q[1]): q[4] for q in points}
    for devices in sorted({q[0] for q in points}):
        local = "one client" if devices == 1 else "local"
        lines.append(f"| {devices}{' (one per sample)' if devices > 100 else ''} | {cell(local, devices)} | {cell('distributed', devices)} | "
                     f"{sigma[(devices, local)]:.1f} / {sigma.get((devices, 'distributed'), float('nan')):.1f} |".replace(" / nan", ""))
    write_readme_block(ROOT / "README.md", README_START, README_END, "\n".join(lines))


def _plot_train(points, path: Path, data: str) -> None:
    """Accuracy and in-domain share against the number of devices, local vs distributed noise, N = 1 as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, k, label in ((axes[0], 2, "client test accuracy"), (axes[1], 3, "in-domain share of the proxy set")):
        for noise, colour in (("one client", "black"), ("local", "tab:red"), ("distributed", "tab:blue")):
            xs = [p[0] for p in points if p[1] == noise]
            if not xs:
                continue
            means = [float(np.mean(p[k])) for p in points if p[1] == noise]
            sds = [float(np.std(p[k], ddof=1)) if len(p[k]) > 1 else 0.0 for p in points if p[1] == noise]
            if noise == "one client":
                ax.axhline(means[0], color=colour, ls="--", lw=1, label="N = 1")
                continue
            ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, color=colour, label=f"{noise} noise")
        ax.set_xscale("log")
        ax.set_xlabel("devices N (client split over)")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"a fleet at the fleet's ε = 0.58 ({data}, compression; mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def part_flower(args) -> list[dict]:
    """Whole `train.py` runs with `transport=flower`: N devices in Flower's simulation (Ray), distributed noise, the
    centroids round summed by SecAgg+; wall time, and whether the proxy set is the in-process secure sum's."""
    from compare_samplers import run_kept

    runs = _runs(args)
    rows = []
    for n in args.n:
        for seed in args.seeds:
            base = [f"data={args.data}", "scenario=compression", f"seed={seed}", *args.override, f"clients={n}", "client.noise=distributed"]
            file = runs / f"flower-n{n}-seed{seed}.json"
            start = time.perf_counter()
            flower = run_kept(base + ["transport=flower", "datamodule.pipeline.reuse_selection=false"], file)
            if flower is None:
                raise SystemExit(f"the Flower run failed: {' '.join(base)} transport=flower")
            if "wall_seconds" not in flower:  # a fresh run: its whole time (Ray's start and stop, the student's training)
                flower["wall_seconds"] = round(time.perf_counter() - start, 1)
                write_json_atomic({**json.loads(file.read_text()), "wall_seconds": flower["wall_seconds"]}, file)  # its config_sha1 kept
            in_process = run_kept(base, _fleet_run(runs, n, "distributed", seed))  # part train's run, kept
            rows.append({"data": args.data, "seed": seed, "devices": n, "transport": "flower + SecAgg+",
                         "client_test_acc": round(flower["client_test_acc"], 4), "in_domain": round(flower["in_domain_fraction"], 4),
                         "round_seconds": round(flower["timings"]["score"], 1),  # the simulation: Ray up, SecAgg+'s stages, down
                         "in_process_round_seconds": round((in_process or {}).get("timings", {}).get("score", float("nan")), 2),
                         "wall_seconds": flower["wall_seconds"],  # the whole train.py run, the student's training included
                         "bytes_up_per_device": flower["bytes_up"] // n,
                         "same_proxy_set_as_in_process": flower["proxy_set_sha1"] == (in_process or {}).get("proxy_set_sha1")})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _synthetic(rng, n_pool=100_000, dim=64, components=100, client_share=0.05, spread=0.5):
    means = rng.standard_normal((components, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    weights = np.full(components, (1 - client_share) / (components - 1))
    weights[0] = client_share
    comp = rng.choice(components, size=n_pool, p=weights)
    sigma = spread / math.sqrt(dim)
    pool = means[comp] + sigma * rng.standard_normal((n_pool, dim)).astype(np.float32)

    def client(n):
        return (means[0] + sigma * rng.standard_normal((n, dim))).astype(np.float32)

    return pool.astype(np.float32), comp, client


def part_scale(args) -> list[dict]:
    """The protocol alone: devices of 50 samples each on synthetic features (pool 100,000, 100 components, 5 % the
    client's); in-domain share of the proxy set and the round's time."""
    from ecos_pl.protocol.parties import ECOSClient
    from ecos_pl.protocol.samplers import ECOSSampler
    from ecos_pl.protocol.secure_sum import SecureSumExchange
    from ecos_pl.protocol.exchange import InProcessExchange
    from ecos_pl.protocol.settings import Allocation, Clustering

    rows = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)
        pool, comp, client = _synthetic(rng)
        for devices in args.n:
            data = client(50 * devices)
            shards = np.array_split(data, devices)
            for noise in ("one client", "local", "distributed"):
                if noise == "one client":
                    clients = [ECOSClient(data, epsilon=0.58, seed=seed)]
                    exchange = InProcessExchange(clients)
                else:
                    clients = [ECOSClient(s, epsilon=0.58, seed=seed * 100_000 + i, noise=noise, min_answers=devices)
                               for i, s in enumerate(shards)]
                    exchange = (SecureSumExchange if noise == "distributed" else InProcessExchange)(clients)
                sampler = ECOSSampler(Clustering(n_centroids=args.centroids), Allocation(client_cap=None))
                start = time.perf_counter()
                selection = sampler.sample(pool, exchange, args.budget, seed)
                rows.append({"seed": seed, "devices": devices, "noise": noise, "samples": len(data),
                             "in_domain": round(float(np.mean(comp[selection.indices] == 0)), 4),
                             "round_seconds": round(time.perf_counter() - start, 2)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def part_forge(args) -> list[dict]:
    """One forging device among N on digits_lite: it claims `forged` votes for the pool cluster the honest devices gave
    the fewest (exact) votes; the share of the budget that cluster then takes. Plain answers (the cloud's default cap,
    2 × the median of the others' totals) and a secure sum (distributed noise; the forger's value enters the sum)."""
    from ecos_pl.protocol.messages import ScoresMessage
    from ecos_pl.protocol.secure_sum import SecureSumExchange

    rows = []
    for n in args.n:
        for mode in ("plain", "secure sum"):
            for forged in (300, 2**20, 1e9):
                if mode == "secure sum" and forged > 2**31:
                    continue  # SecAgg+'s modulus: a forger's value is any integer below it
                noise = "local" if mode == "plain" else "distributed"
                p = _pipeline([f"data={args.data}", "seed=1", f"budget={args.budget}", "datamodule.pipeline.cache_dir=null", f"clients={n}",
                               f"client.noise={noise}", *args.override])
                cloud = p.sampler.cloud(p.pool_features, p.seed)
                message = cloud.compress()
                clients = p.clients()
                exact = sum(c.counts(message) for c in clients)
                target = int(np.lexsort((-cloud.clusters.sizes, exact))[0])  # fewest honest votes, the largest such
                forger = np.zeros(message.n_centroids)
                forger[target] = forged
                honest = clients[1:]
                if mode == "plain":
                    answers = [c.score(message) for c in honest] + [ScoresMessage(forger.astype(np.float32))]
                    selection = cloud.select(answers, p.budget)
                else:
                    total = np.maximum(sum(c.share(message) for c in honest) + forger, 0)
                    selection = cloud.select(ScoresMessage(total.astype(np.float32)), p.budget)
                share = float(np.mean(cloud.clusters.assignments[selection] == target))
                fresh = p.clients()  # the honest devices above spent their score budget on this round
                without = p.sampler.sample(p.pool_features, fresh if mode == "plain" else SecureSumExchange(fresh),
                                           p.budget, p.seed)  # the same clusters (the same seed), no forger
                honest_share = float(np.mean(cloud.clusters.assignments[without.indices] == target))
                rows.append({"devices": n, "mode": mode, "forged": forged, "target_share": round(share, 4),
                             "target_share_without_forger": round(honest_share, 4), "fair_share": round(1 / n, 4),
                             "within_fair_share_plus_0.10": share <= 1 / n + 0.10})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def _mean_over_seeds(rows: list[dict]) -> list[dict]:
    """Part digits' rows averaged over the seeds: the in-domain share per (devices, noise, unit), mean ± sd."""
    from scipy import stats

    groups: dict[tuple, list[tuple[int, float]]] = {}
    for r in rows:
        groups.setdefault((r["devices"], r["noise"], r["unit"]), []).append((r["seed"], r["in_domain"]))
    one = {seed: v for (d, _, u), runs in groups.items() if d == 1 for seed, v in runs}
    out = []
    for (d, n, u), runs in groups.items():
        v = [x for _, x in runs]
        diff = [x - one[seed] for seed, x in runs if seed in one] if d != 1 else []
        half = stats.t.ppf(0.975, len(diff) - 1) * np.std(diff, ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else None
        out.append({"devices": d, "noise": n, "unit": u, "seeds": len(v), "in_domain": f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}",
                    "minus_one_client_paired_95ci": "–" if half is None else
                    f"{np.mean(diff):+.3f} [{np.mean(diff) - half:+.3f}, {np.mean(diff) + half:+.3f}]"})
    return out


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("digits", "scale", "forge", "train", "flower"), required=True)
    parser.add_argument("--data", default="digits_lite")
    parser.add_argument("--n", type=int, nargs="+", help="devices (-1: one per client sample)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--units", nargs="+", default=["sample"])
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--centroids", type=int, default=128, help="R (part scale)")
    parser.add_argument("--override", nargs="*", default=[], help="more train.py overrides, e.g. phi=pca")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="the results' file name (default fleet-<part>)")
    args = parser.parse_args(argv)
    args.n = args.n or {"digits": [1, 10, 100, -1], "scale": [1000, 10000], "forge": [3, 10, 100], "train": [1, 10, 100, -1], "flower": [100]}[args.part]
    start = time.perf_counter()
    rows = {"digits": part_digits, "scale": part_scale, "forge": part_forge, "train": part_train, "flower": part_flower}[args.part](args)
    command = "uv run python benchmarks/fleet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"fleet-{args.part}"
    write_text_atomic(args.out / f"{name}.json", json.dumps(out, indent=2) + "\n")
    summary = "\n" + table(_mean_over_seeds(rows)) if args.part == "digits" and len(args.seeds) > 1 else ""
    write_text_atomic(args.out / f"{name}.md", f"`{command}` ({out['seconds']} s)\n\n" + table(rows) + summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
