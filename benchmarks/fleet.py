"""A fleet of devices: how the proxy set holds up as the client is split over N devices, local vs distributed noise,
and how much of the budget one forging device takes (issue 29, item 5; selection only, no training).

    uv run python benchmarks/fleet.py --part digits   # train.py's pipeline on digits_lite: N = 1, 10, 100, one per sample
    uv run python benchmarks/fleet.py --part scale    # synthetic features: 1,000 and 10,000 devices of 50 samples
    uv run python benchmarks/fleet.py --part forge    # one forging device among 3, 10, 100, plain and under a secure sum

Each part writes benchmarks/results/fleet-<part>.json and .md. `--seeds` and `--n` shrink a part. What is
measured is the proxy set's in-domain share (the pool's base rate on digits_lite is 0.084): the client-test accuracy
of a student trained on it needs `train.py ... clients=N client.noise=...` runs, which this script does not start.
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

from ecos_pl.atomic import write_atomic  # noqa: E402


def write_text_atomic(path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text), binary=False)


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
                                 "in_domain": round(report.in_domain_fraction, 4), "device_sigma": round(sp.get("device_sigma", 0), 3),
                                 "sum_sigma": round(sp.get("sum_sigma", 0), 3), "bytes_up_per_device": report.bytes_up // devices,
                                 "bytes_down_per_device": report.bytes_down, "seconds": round(time.perf_counter() - start, 2)})
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
                without = p.sampler.sample(p.pool_features, clients if mode == "plain" else SecureSumExchange(clients),
                                           p.budget, p.seed)  # the same clusters (the same seed), no forger
                honest_share = float(np.mean(cloud.clusters.assignments[without.indices] == target))
                rows.append({"devices": n, "mode": mode, "forged": forged, "target_share": round(share, 4),
                             "target_share_without_forger": round(honest_share, 4), "fair_share": round(1 / n, 4)})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("digits", "scale", "forge"), required=True)
    parser.add_argument("--data", default="digits_lite")
    parser.add_argument("--n", type=int, nargs="+", help="devices (-1: one per client sample)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--units", nargs="+", default=["sample"])
    parser.add_argument("--budget", type=int, default=400)
    parser.add_argument("--centroids", type=int, default=128, help="R (part scale)")
    parser.add_argument("--override", nargs="*", default=[], help="more train.py overrides, e.g. phi=pca")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="the results' file name (default fleet-<part>)")
    args = parser.parse_args(argv)
    args.n = args.n or {"digits": [1, 10, 100, -1], "scale": [1000, 10000], "forge": [3, 10, 100]}[args.part]
    start = time.perf_counter()
    rows = {"digits": part_digits, "scale": part_scale, "forge": part_forge}[args.part](args)
    command = "uv run python benchmarks/fleet.py " + " ".join(sys.argv[1:] if argv is None else argv)
    out = {"command": command, "seconds": round(time.perf_counter() - start, 1), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"fleet-{args.part}"
    write_text_atomic(args.out / f"{name}.json", json.dumps(out, indent=2) + "\n")
    write_text_atomic(args.out / f"{name}.md", f"`{command}` ({out['seconds']} s)\n\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
