"""Figures that show what a sampler did, readable without the logs.

Pure functions: arrays in, `matplotlib.figure.Figure` out. They never touch
pyplot, so they change no global backend and are safe in workers and tests; the
PNG is rendered by the Agg canvas that `Figure.savefig` uses.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

#: at most this many pool points are drawn (a random subset; the proxy set is drawn in full up to the same limit).
MAX_POINTS = 20_000

#: figure name -> file name, so the callback, the results file and the tests agree.
PROJECTION_PNG = "sampling_projection.png"
COMPOSITION_PNG = "sampling_composition.png"


def pca_2d(features: np.ndarray, *, max_fit_rows: int = MAX_POINTS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Projection on the top two principal axes (fitted on a subsample, so it stays cheap on large pools).

    Returns (coords float32 [N, 2], explained variance ratio [2]).
    """
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"features must be a non-empty [N, d] array, got shape {x.shape}.")
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= max_fit_rows else x[rng.choice(len(x), max_fit_rows, replace=False)]
    mean = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # d == 1: pad so callers always get two columns
        axes = np.vstack([axes, np.zeros_like(axes)])
        s = np.concatenate([s, [0.0]])
    # a deterministic sign, so the same data always looks the same
    axes = axes * np.where(axes[np.arange(2), np.abs(axes).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    var = s**2
    explained = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    return ((x - mean) @ axes.T).astype(np.float32), explained.astype(np.float64)


def domain_colors(n_domains: int) -> list:
    """tab10 (tab20 beyond ten domains): distinct, colour-blind-tolerant, and the same in both figures."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n_domains <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n_domains)]


def _domain_label(name: str, is_client: bool) -> str:
    return f"{name} (client)" if is_client else name


def _bold_client_legend(legend, client_label: str) -> None:
    for text in legend.get_texts():
        if text.get_text().startswith(client_label):
            text.set_fontweight("bold")


def projection_figure(
    coords: np.ndarray,
    domains: np.ndarray,
    domain_names: list[str],
    client_domain: str,
    selected: np.ndarray,
    *,
    assignments: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    title: str = "",
    footer: str = "",
    explained: np.ndarray | None = None,
    max_points: int = MAX_POINTS,
    seed: int = 0,
) -> Figure:
    """The pool in 2-D: left, shaded by the CC score of each point's cluster; right, by domain, with the proxy set marked.

    Without `assignments`/`scores` (samplers that do not cluster) only the domain panel is drawn.
    """
    coords = np.asarray(coords, dtype=np.float32)
    domains = np.asarray(domains, dtype=np.int64)
    selected = np.asarray(selected, dtype=np.int64)
    n = len(coords)
    rng = np.random.default_rng(seed)
    shown = np.arange(n) if n <= max_points else np.sort(rng.choice(n, max_points, replace=False))
    sel_shown = selected if len(selected) <= max_points else np.sort(rng.choice(selected, max_points, replace=False))
    all_selected = len(selected) == n
    client_index = domain_names.index(client_domain) if client_domain in domain_names else -1
    colors = domain_colors(len(domain_names))
    has_scores = assignments is not None and scores is not None

    fig = Figure(figsize=(15.5, 6.8) if has_scores else (8.5, 6.8), layout="constrained")
    axes = fig.subplots(1, 2 if has_scores else 1, squeeze=False)[0]
    xlabel, ylabel = "PC 1", "PC 2"
    if explained is not None:
        xlabel, ylabel = f"PC 1 ({explained[0]:.0%} of variance)", f"PC 2 ({explained[1]:.0%} of variance)"

    if has_scores:
        ax = axes[0]
        scores = np.asarray(scores, dtype=np.float64)
        point_score = scores[np.asarray(assignments, dtype=np.int64)[shown]]
        zero = point_score <= 0
        ax.scatter(coords[shown][zero, 0], coords[shown][zero, 1], s=4, c="0.85", linewidths=0, rasterized=True)
        norm = Normalize(vmin=0.0, vmax=max(float(scores.max()), 1e-9))
        order = np.argsort(point_score[~zero], kind="stable")  # high scores drawn on top
        pts = coords[shown][~zero][order]
        mappable = ax.scatter(
            pts[:, 0], pts[:, 1], s=6, c=point_score[~zero][order], cmap="magma_r", norm=norm, linewidths=0, rasterized=True
        )
        fig.colorbar(mappable, ax=ax, label="CC score $v_r$ of the point's cluster (client votes)", shrink=0.85)
        # label the clusters that took most of the votes at their members' mean
        assignments = np.asarray(assignments, dtype=np.int64)
        for r in np.argsort(-scores, kind="stable")[:5]:
            if scores[r] <= 0:
                break
            centre = coords[assignments == r].mean(axis=0)
            ax.annotate(
                f"r={r}: {scores[r]:.0f}", centre, fontsize=8, ha="center", va="bottom",
                bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.5", "alpha": 0.85},
            )
        if not all_selected:
            ax.scatter(coords[sel_shown, 0], coords[sel_shown, 1], s=10, marker="x", c="black", linewidths=0.6, alpha=0.6)
        ax.legend(
            handles=[
                Line2D([], [], ls="", marker="o", ms=5, mfc="0.85", mec="none", label="cluster with no votes"),
                Line2D([], [], ls="", marker="x", ms=6, mec="black", label=f"selected ({len(selected):,})"),
            ],
            loc="best", fontsize=8, framealpha=0.9,
        )
        ax.set_title("Pool clusters shaded by the client's CC scores")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)

    ax = axes[-1]
    handles = []
    for d, name in enumerate(domain_names):
        mask = domains[shown] == d
        ax.scatter(coords[shown][mask, 0], coords[shown][mask, 1], s=4, color=colors[d], alpha=0.25, linewidths=0, rasterized=True)
    for d, name in enumerate(domain_names):
        in_sel = sel_shown[domains[sel_shown] == d]
        n_sel = int(np.sum(domains[selected] == d))
        is_client = d == client_index
        if not all_selected and len(in_sel):
            ax.scatter(
                coords[in_sel, 0], coords[in_sel, 1], s=30 if is_client else 18, color=colors[d],
                marker="*" if is_client else "o", edgecolors="black", linewidths=0.4 if not is_client else 0.6,
            )
        handles.append(
            Line2D([], [], ls="", marker="*" if is_client else "o", ms=9 if is_client else 7, mfc=colors[d], mec="black",
                   label=f"{_domain_label(name, is_client)}: {n_sel:,} selected / {int(np.sum(domains == d)):,} in pool")
        )
    legend = ax.legend(handles=handles, title="domain", loc="best", fontsize=8, title_fontsize=9, framealpha=0.9)
    _bold_client_legend(legend, f"{client_domain} (client)")
    ax.set_title("Pool by domain (faint); proxy set (outlined)" if not all_selected else "Pool by domain (all of it is the proxy set)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)

    if title:
        fig.suptitle(title, fontsize=13)
    if footer:
        fig.text(0.5, -0.01, footer, ha="center", va="top", fontsize=10, family="monospace",
                 bbox={"boxstyle": "round,pad=0.4", "fc": "0.96", "ec": "0.6"})
    return fig


def composition_figure(
    proxy_counts: np.ndarray,
    pool_counts: np.ndarray,
    domain_names: list[str],
    client_domain: str,
    *,
    title: str = "",
    footer: str = "",
) -> Figure:
    """Share of each domain in the proxy set next to its share of the pool: one glance shows where the budget went."""
    proxy = np.asarray(proxy_counts, dtype=np.float64)
    pool = np.asarray(pool_counts, dtype=np.float64)
    proxy_share = proxy / proxy.sum() if proxy.sum() > 0 else np.zeros_like(proxy)
    pool_share = pool / pool.sum() if pool.sum() > 0 else np.zeros_like(pool)
    colors = domain_colors(len(domain_names))
    y = np.arange(len(domain_names))[::-1]
    fig = Figure(figsize=(7.5, 1.2 + 0.55 * len(domain_names)), layout="constrained")
    ax = fig.subplots()
    h = 0.38
    ax.barh(y + h / 2, proxy_share, height=h, color=colors, edgecolor="black", linewidth=0.5, label="proxy set")
    ax.barh(y - h / 2, pool_share, height=h, color=colors, alpha=0.35, hatch="//", edgecolor="0.4", linewidth=0.5,
            label="pool (base rate)")
    for yi, share, count in zip(y, proxy_share, proxy):
        ax.text(share + 0.01, yi + h / 2, f"{share:.1%} ({int(count):,})", va="center", fontsize=8)
    for yi, share in zip(y, pool_share):
        ax.text(share + 0.01, yi - h / 2, f"{share:.1%}", va="center", fontsize=7, color="0.35")
    ax.set_yticks(y, [_domain_label(n, n == client_domain) for n in domain_names])
    for label in ax.get_yticklabels():
        if label.get_text().endswith("(client)"):
            label.set_fontweight("bold")
    if client_domain in domain_names:
        ax.axhspan(y[domain_names.index(client_domain)] - 0.5, y[domain_names.index(client_domain)] + 0.5,
                   color="gold", alpha=0.15, zorder=0)
    ax.set_xlim(0, min(1.0, max(proxy_share.max(initial=0), pool_share.max(initial=0)) + 0.22))
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    ax.set_xlabel("share of samples")
    ax.legend(
        handles=[Patch(fc="0.45", ec="black", lw=0.5, label="proxy set"),
                 Patch(fc="0.45", alpha=0.35, hatch="//", ec="0.4", lw=0.5, label="pool (base rate)")],
        loc="lower right", fontsize=8,
    )
    if title:
        ax.set_title(title, fontsize=11)
    if footer:
        fig.text(0.5, -0.02, footer, ha="center", va="top", fontsize=8, family="monospace")
    return fig


def save_figure_atomic(fig: Figure, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Render through the project's one atomic writer: a reader never sees half an image, and the mode is the umask's."""
    from ecos_pl.atomic import write_atomic

    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))
