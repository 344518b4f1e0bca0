"""What the sampler did, sent to every logger once when training starts, so nobody has to read logs to see it.

W&B gets tables, histograms, bar charts and the figures; any other logger (CSV,
TensorBoard) gets the scalars through `log_metrics`; and whatever the loggers,
the per-cluster vectors and the scalars are written as CSV files and the figures
as PNGs in `output_dir`, so `logger=none` loses nothing.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger

from ecos_pl import plots
from ecos_pl.atomic import write_text_atomic
from ecos_pl.data.base import NONE_LABEL

log = logging.getLogger(__name__)

PREFIX = "sampling/"
CLUSTERS_CSV = "cluster_diagnostics.csv"
SCALARS_CSV = "sampling_diagnostics.csv"
CLUSTER_COLUMNS = ["cluster", "size", "score", "allocation", "selected", "pool_in_domain_share", "dominant_domain"]


def score_concentration(scores: np.ndarray) -> dict[str, float]:
    """How peaked the client's votes are: a few numbers that say whether ECOS found a narrow target."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, None)
    total = float(s.sum())
    out = {"total": total, "nonzero_clusters": int(np.count_nonzero(s))}
    if total <= 0:
        return {**out, "effective_clusters": 0.0, "top1_share": 0.0, "clusters_for_90pct": 0}
    p = np.sort(s / total)[::-1]
    nz = p[p > 0]
    out["effective_clusters"] = float(np.exp(-(nz * np.log(nz)).sum()))  # perplexity of the vote distribution
    out["top1_share"] = float(p[0])
    out["clusters_for_90pct"] = int(np.searchsorted(np.cumsum(p), 0.9 - 1e-12) + 1)
    return out


def sampling_diagnostics(datamodule) -> dict:
    """Everything the callback reports, as plain Python values (also usable without a Trainer).

    Keys: `scalars` (flat name -> number or None), `domains` and `classes` (rows of
    the proxy set's composition), `clusters` (per-cluster rows, None for samplers that
    do not cluster).
    """
    data, sel, report = datamodule.data, datamodule.selection, datamodule.report
    if data is None or sel is None:
        raise RuntimeError("sampling diagnostics need a data module whose setup() has run (no proxy set yet).")
    pool = data.pool
    proxy_domains = pool.domains[sel.indices]
    proxy_labels = pool.labels[sel.indices]
    n_sel = max(int(sel.n_selected), 1)

    domains = []
    for d, name in enumerate(data.domain_names):
        count, pool_count = int(np.sum(proxy_domains == d)), int(np.sum(pool.domains == d))
        domains.append({
            "domain": name, "proxy_count": count, "proxy_share": count / n_sel,
            "pool_count": pool_count, "pool_share": pool_count / max(len(pool), 1), "client": name == data.client_domain,
        })
    class_names = [*data.class_names, "none"]
    class_ids = [*range(len(data.class_names)), NONE_LABEL]
    classes = [
        {"class": name, "proxy_count": int(np.sum(proxy_labels == c)), "proxy_share": float(np.sum(proxy_labels == c)) / n_sel}
        for name, c in zip(class_names, class_ids)
    ]

    scalars: dict = {
        "in_domain_fraction": report.get("in_domain_fraction"),
        "pool_in_domain_fraction": report.get("pool_in_domain_fraction"),
        "n_selected": int(sel.n_selected),
        "n_pool": len(pool),
        "n_centroids": sel.n_centroids,
        "bytes_down": int(sel.bytes_down),
        "bytes_up": int(sel.bytes_up),
        "client_score_macs": int(sel.client_macs),
        "epsilon": sel.epsilon,  # None: exact counts (or nothing asked)
    }
    scalars.update({f"timings/{k}": float(v) for k, v in (report.get("timings") or sel.timings).items()})
    scalars.update({f"composition/{row['domain']}": row["proxy_count"] for row in domains})
    scalars.update({f"class_composition/{row['class']}": row["proxy_count"] for row in classes})

    clusters = None
    diag = sel.diagnostics or {}
    if "scores" in diag:
        scores = np.asarray(diag["scores"], dtype=np.float64)
        allocation = np.asarray(diag["allocation"], dtype=np.int64)
        sizes = np.asarray(diag["cluster_sizes"], dtype=np.int64)
        assign = np.asarray(diag["assignments"], dtype=np.int64)
        r = len(scores)
        selected = np.bincount(assign[sel.indices], minlength=r)
        in_domain = np.bincount(assign, weights=(pool.domains == data.client_domain_index).astype(np.float64), minlength=r)
        by_domain = np.zeros((r, len(data.domain_names)), dtype=np.int64)
        np.add.at(by_domain, (assign, pool.domains), 1)
        clusters = [
            {
                "cluster": c, "size": int(sizes[c]), "score": float(scores[c]), "allocation": int(allocation[c]),
                "selected": int(selected[c]), "pool_in_domain_share": float(in_domain[c] / sizes[c]) if sizes[c] else 0.0,
                "dominant_domain": data.domain_names[int(by_domain[c].argmax())] if sizes[c] else "",
            }
            for c in range(r)
        ]
        scalars.update({f"scores/{k}": v for k, v in score_concentration(scores).items()})
        scalars["allocation/nonzero_clusters"] = int(np.count_nonzero(allocation))
        scalars["allocation/max"] = int(allocation.max(initial=0))
    return {"scalars": scalars, "domains": domains, "classes": classes, "clusters": clusters}


def _numeric(scalars: dict) -> dict[str, float]:
    """Only finite numbers: loggers reject None (no ε) and NaN."""
    return {
        k: v for k, v in scalars.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _footer(diag: dict, datamodule) -> str:
    s = diag["scalars"]
    eps, noise = s["epsilon"], (datamodule.report.get("score_privacy") or {}).get("mechanism", "added")
    budget = datamodule.pipeline.sampler_budget
    lines = [
        f"sampler={datamodule.selection.sampler}   R={s['n_centroids'] if s['n_centroids'] is not None else '-'}   "
        f"budget={budget if budget is not None else '-'}   selected {s['n_selected']:,} of {s['n_pool']:,} pool samples",
        f"in-domain fraction {_pct(s['in_domain_fraction'])} (pool base rate {_pct(s['pool_in_domain_fraction'])})   "
        f"bytes down {s['bytes_down']:,}   bytes up {s['bytes_up']:,}   "
        f"ε={'none (exact counts)' if eps is None else f'{eps:g} ({noise} noise)'}",
    ]
    if "scores/total" in s:
        lines.append(
            f"scores: {s['scores/nonzero_clusters']} of {len(diag['clusters'])} clusters got votes; "
            f"90% of the votes in {s['scores/clusters_for_90pct']}; top cluster {_pct(s['scores/top1_share'])}; "
            f"effective clusters {s['scores/effective_clusters']:.1f}"
        )
    return "\n".join(lines)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


class SamplingDiagnostics(pl.Callback):
    """Logs the sampler's diagnostics once, from rank zero, when training starts.

    `output_dir` receives `sampling_projection.png`, `sampling_composition.png`,
    `cluster_diagnostics.csv` and `sampling_diagnostics.csv` (default: the trainer's
    `default_root_dir`). Their paths, and the composition by class, stay in `outputs`
    (the run's results include them). The projection needs the pool's φ features: it is
    drawn only when they are at hand (computed, or in the feature cache); φ never runs here.
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, figure: bool = True, max_points: int = plots.MAX_POINTS):
        self.output_dir = output_dir
        self.figure = figure
        self.max_points = max_points
        self._done = False
        #: what the run's results include: figure and file paths, composition by class, score concentration
        self.outputs: dict = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._done or not trainer.is_global_zero:
            return
        self._done = True
        datamodule = trainer.datamodule
        if datamodule is None or getattr(datamodule, "selection", None) is None:
            log.warning("SamplingDiagnostics: the trainer has no ECOS data module with a proxy set; nothing logged.")
            return
        self.log_diagnostics(datamodule, trainer.loggers, step=trainer.global_step,
                             output_dir=self.output_dir or trainer.default_root_dir)

    def log_diagnostics(self, datamodule, loggers, *, step: int = 0, output_dir: str | os.PathLike = ".") -> dict:
        """Compute, write files, send to the loggers; returns what `sampling_diagnostics` returned plus file paths."""
        out = Path(output_dir)
        diag = sampling_diagnostics(datamodule)
        files = {"scalars_csv": str(write_text_atomic(
            out / SCALARS_CSV, _csv([{"key": k, "value": v} for k, v in diag["scalars"].items()], ["key", "value"])))}
        if diag["clusters"] is not None:
            files["clusters_csv"] = str(write_text_atomic(out / CLUSTERS_CSV, _csv(diag["clusters"], CLUSTER_COLUMNS)))
        figures = self._figures(datamodule, diag, out) if self.figure else {}
        self.outputs = {"figures": figures, "diagnostics_files": files,
                        "composition_by_class": {row["class"]: row["proxy_count"] for row in diag["classes"]}}
        if "scores/total" in diag["scalars"]:
            self.outputs["score_concentration"] = {
                k.split("/", 1)[1]: v for k, v in diag["scalars"].items() if k.startswith("scores/")}

        scalars = {PREFIX + k: v for k, v in _numeric(diag["scalars"]).items()}
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, diag, figures, scalars, step)
            else:
                logger.log_metrics(scalars, step=step)
        return {**diag, **self.outputs, "files": files}

    def _figures(self, datamodule, diag: dict, out: Path) -> dict[str, str]:
        data, sel = datamodule.data, datamodule.selection
        figures = {}
        features = datamodule.pipeline.pool_features_at_hand()
        if features is None:
            log.info("SamplingDiagnostics: the pool's φ features are neither computed nor cached; no projection figure.")
        else:
            coords, explained = plots.pca_2d(features, max_fit_rows=self.max_points, seed=datamodule.seed)
            d = sel.diagnostics or {}
            fig = plots.projection_figure(
                coords, data.pool.domains, data.domain_names, data.client_domain, sel.indices,
                assignments=d.get("assignments"), scores=d.get("scores"),
                title=f"What {sel.sampler} selected · {data.name} · client domain '{data.client_domain}'",
                footer=_footer(diag, datamodule), explained=explained, max_points=self.max_points, seed=datamodule.seed,
            )
            figures["projection"] = str(plots.save_figure_atomic(fig, out / plots.PROJECTION_PNG))
        s = diag["scalars"]
        fig = plots.composition_figure(
            [r["proxy_count"] for r in diag["domains"]], [r["pool_count"] for r in diag["domains"]],
            data.domain_names, data.client_domain,
            title=f"Proxy set by domain · sampler={sel.sampler} · in-domain {_pct(s['in_domain_fraction'])}",
            footer=f"bytes down {s['bytes_down']:,} · bytes up {s['bytes_up']:,} · {s['n_selected']:,} selected",
        )
        figures["composition"] = str(plots.save_figure_atomic(fig, out / plots.COMPOSITION_PNG))
        return figures

    @staticmethod
    def _log_wandb(logger: WandbLogger, diag: dict, figures: dict, scalars: dict, step: int) -> None:
        import wandb

        def table(rows: list[dict]) -> "wandb.Table":
            columns = list(rows[0]) if rows else []
            return wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])

        payload = dict(scalars)
        payload[PREFIX + "composition_by_domain"] = table(diag["domains"])
        payload[PREFIX + "composition_by_class"] = table(diag["classes"])
        if diag["clusters"] is not None:
            clusters = table(diag["clusters"])
            scores = np.array([row["score"] for row in diag["clusters"]])
            payload[PREFIX + "clusters"] = clusters
            payload[PREFIX + "scores_histogram"] = wandb.Histogram(scores, num_bins=min(64, max(len(scores), 1)))
            payload[PREFIX + "scores_by_cluster"] = wandb.plot.bar(clusters, "cluster", "score", title="CC score per cluster")
            payload[PREFIX + "allocation_by_cluster"] = wandb.plot.bar(
                clusters, "cluster", "allocation", title="budget allocation per cluster")
        for name, path in figures.items():
            payload[f"{PREFIX}figures/{name}"] = wandb.Image(path, caption=Path(path).name)
        payload["trainer/global_step"] = step  # WandbLogger's step metric, so these line up with the training curves
        experiment = logger.experiment
        experiment.log(payload)
        experiment.summary.update(scalars)  # scalars stay in the run's overview even after later logs
