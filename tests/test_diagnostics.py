"""Sampling diagnostics: what reaches W&B (read back from the offline run files), the CSV log, the PNGs.

Also the progress-bar edits: chunked pool assignment and φ with a bar give the
same numbers as without.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from callbacks import SamplingDiagnostics
from callbacks.sampling_diagnostics import CLUSTERS_CSV, SCALARS_CSV, score_concentration
from datamodules import ECOSDataModule
from ecos_pl import plots
from ecos_pl.data.digits_lite import DigitsLite
from ecos_pl.phi import PCAPixels
from ecos_pl.protocol.samplers import make_sampler
from ecos_pl.protocol.settings import ScorePrivacy

compress_mod = importlib.import_module("ecos_pl.protocol.compress")  # the package re-exports the function of the same name

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUDGET, R = 120, 16


def _cache_dir(tmp_path_factory) -> Path:
    """Share the session's data cache when conftest set one, so digits_lite is built once."""
    env = os.environ.get("ECOS_CACHE")
    return Path(env) / "data" if env else tmp_path_factory.mktemp("digits-cache")


def _datamodule(tmp_path_factory, sampler: str, **kwargs) -> ECOSDataModule:
    dm = ECOSDataModule.from_parts(
        DigitsLite(seed=1, cache_dir=_cache_dir(tmp_path_factory)), PCAPixels(n_components=16, seed=1),
        make_sampler(sampler, **kwargs), budget=BUDGET, seed=1, batch_size=32, score_privacy=ScorePrivacy(epsilon=None),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def ecos_dm(tmp_path_factory):
    return _datamodule(tmp_path_factory, "ecos", n_centroids=R)


def _assert_png(path) -> None:
    path = Path(path)
    assert path.is_file() and path.stat().st_size > 5_000, path
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"


# ----------------------------------------------------------------- reading an offline W&B run


def _wandb_records(path: Path):
    """Records of a `.wandb` file: a LevelDB-style log (32 KiB blocks, 7-byte chunk headers) of protobuf Records.

    wandb >= 0.18 (wandb-core) writes no `wandb-summary.json` for offline runs; history and
    summary live only in this file.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B run file"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in the block for a header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding at the end of a block
            pos += -pos % block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _read_offline_run(save_dir: Path) -> dict:
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    run = runs[0]
    (run_file,) = run.glob("run-*.wandb")
    history, summary = {}, {}
    for record in _wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        items = record.history.item if kind == "history" else record.summary.update if kind == "summary" else []
        target = history if kind == "history" else summary
        for item in items:
            target["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(item.value_json)
    return {"dir": run, "history": history, "summary": summary}


# ----------------------------------------------------------------- end to end through a Trainer


def test_wandb_offline_run_holds_diagnostics_and_images(ecos_dm, tmp_path, monkeypatch):
    import pytorch_lightning as pl
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    from ecos_pl.models import ImageClassifier
    from ecos_pl.scenarios.compression import DistillationModule

    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "out"
    logger = WandbLogger(
        project="ecos-pl-test", name="diagnostics", offline=True, save_dir=str(tmp_path), log_model=False,
        settings=wandb.Settings(console="off", x_disable_stats=True, disable_git=True, save_code=False),
    )
    pl.seed_everything(0)
    module = DistillationModule(ImageClassifier("test_resnet", 10), arch="test_resnet", num_classes=10)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0,
        logger=logger, callbacks=[diagnostics := SamplingDiagnostics(out)], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    try:
        trainer.fit(module, datamodule=ecos_dm)
    finally:
        logger.experiment.finish()
        wandb.teardown()  # wandb-core writes the run file out when its service stops, not at finish()
    run = _read_offline_run(tmp_path)
    summary, history = run["summary"], run["history"]
    report = ecos_dm.report

    # the numbers a reader looks for first, with the values the protocol reported
    assert summary["sampling/in_domain_fraction"] == pytest.approx(report["in_domain_fraction"])
    assert summary["sampling/bytes_down"] == report["bytes_down"] > 0
    assert summary["sampling/bytes_up"] == report["bytes_up"] > 0
    assert "sampling/epsilon" not in summary  # no noise was added
    for step in ("features", "compress", "score", "select"):
        assert summary[f"sampling/timings/{step}"] == pytest.approx(report["timings"][step])
    assert sum(summary[f"sampling/composition/{d}"] for d in ecos_dm.data.domain_names) == BUDGET
    assert 1 <= summary["sampling/scores/clusters_for_90pct"] <= summary["sampling/scores/nonzero_clusters"] <= R
    # tables, histogram, bar charts and images were logged (once)
    assert history["sampling/clusters/_type"] == "table-file" and history["sampling/clusters/nrows"] == R
    assert history["sampling/composition_by_domain/nrows"] == len(ecos_dm.data.domain_names)
    assert history["sampling/scores_histogram/_type"] == "histogram"
    assert sum(history["sampling/scores_histogram/values"]) == R
    assert any(k.startswith("sampling/allocation_by_cluster") for k in history)
    for name in ("projection", "composition"):
        assert history[f"sampling/figures/{name}/_type"] == "image-file"
        _assert_png(run["dir"] / "files" / history[f"sampling/figures/{name}/path"])
    table = json.loads((run["dir"] / "files" / history["sampling/clusters/path"]).read_text())
    cols = table["columns"]
    rows = [dict(zip(cols, row)) for row in table["data"]]
    assert sum(r["score"] for r in rows) == len(ecos_dm.data.client_train)  # every client sample votes once
    assert sum(r["allocation"] for r in rows) == BUDGET
    assert all(r["selected"] == r["allocation"] for r in rows)

    # the PNGs in the output folder, and their paths in the callback's outputs (the results file includes them)
    assert set(diagnostics.outputs["figures"]) == {"projection", "composition"}
    for path in diagnostics.outputs["figures"].values():
        _assert_png(path)
        assert Path(path).parent == out


# ----------------------------------------------------------------- without W&B


def test_csv_logger_and_files_keep_the_same_numbers(ecos_dm, tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    logger = CSVLogger(save_dir=str(tmp_path), name="csv")
    result = SamplingDiagnostics(tmp_path / "out", figure=False).log_diagnostics(
        ecos_dm, [logger], step=0, output_dir=tmp_path / "out")
    logger.save()
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        metrics = next(csv.DictReader(f))
    report = ecos_dm.report
    assert float(metrics["sampling/in_domain_fraction"]) == pytest.approx(report["in_domain_fraction"])
    assert int(float(metrics["sampling/bytes_up"])) == report["bytes_up"]
    assert int(float(metrics["sampling/bytes_down"])) == report["bytes_down"]
    assert float(metrics["sampling/timings/compress"]) == pytest.approx(report["timings"]["compress"])
    assert "sampling/epsilon" not in metrics

    with open(result["files"]["clusters_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == R
    assert sum(int(r["size"]) for r in rows) == len(ecos_dm.data.pool)
    assert sum(float(r["score"]) for r in rows) == len(ecos_dm.data.client_train)
    assert [int(r["allocation"]) for r in rows] == list(ecos_dm.selection.diagnostics["allocation"])
    # the clusters ECOS spent the budget on are mostly the client's domain; the rest are not
    share = np.array([float(r["pool_in_domain_share"]) for r in rows])
    alloc = np.array([int(r["allocation"]) for r in rows])
    assert np.average(share, weights=alloc) > 2 * report["pool_in_domain_fraction"]
    with open(tmp_path / "out" / SCALARS_CSV) as f:
        scalars = {r["key"]: r["value"] for r in csv.DictReader(f)}
    assert float(scalars["in_domain_fraction"]) == pytest.approx(report["in_domain_fraction"])
    assert scalars["epsilon"] == ""  # written, empty: no noise
    assert sum(result["composition_by_class"].values()) == BUDGET


def test_no_logger_random_sampler_still_writes_pngs_and_csv(tmp_path_factory, tmp_path):
    dm = _datamodule(tmp_path_factory, "random")
    trainer = SimpleNamespace(is_global_zero=True, datamodule=dm, loggers=[], global_step=0, default_root_dir=str(tmp_path))
    (callback := SamplingDiagnostics(output_dir=None)).on_train_start(trainer, None)  # falls back to default_root_dir
    for name in (plots.PROJECTION_PNG, plots.COMPOSITION_PNG):
        _assert_png(tmp_path / name)
    assert (tmp_path / SCALARS_CSV).is_file()
    assert not (tmp_path / CLUSTERS_CSV).exists()  # random has no clusters
    assert callback.outputs["figures"]["projection"] == str(tmp_path / plots.PROJECTION_PNG)


def test_logs_once_and_only_on_rank_zero(ecos_dm, tmp_path):
    callback = SamplingDiagnostics(tmp_path, figure=False)
    trainer = SimpleNamespace(is_global_zero=False, datamodule=ecos_dm, loggers=[], global_step=0, default_root_dir=str(tmp_path))
    callback.on_train_start(trainer, None)
    assert not (tmp_path / SCALARS_CSV).exists()
    trainer.is_global_zero = True
    callback.on_train_start(trainer, None)
    assert (tmp_path / SCALARS_CSV).is_file()
    (tmp_path / SCALARS_CSV).unlink()
    callback.on_train_start(trainer, None)  # a second start (e.g. another fit) does not log again
    assert not (tmp_path / SCALARS_CSV).exists()


# ----------------------------------------------------------------- pieces


def test_score_concentration():
    peaked = score_concentration(np.array([0.0, 10.0, 0.0, 0.0]))
    assert peaked["effective_clusters"] == pytest.approx(1.0) and peaked["top1_share"] == 1.0
    assert peaked["clusters_for_90pct"] == 1 and peaked["nonzero_clusters"] == 1
    flat = score_concentration(np.ones(4))
    assert flat["effective_clusters"] == pytest.approx(4.0) and flat["clusters_for_90pct"] == 4
    assert score_concentration(np.zeros(3))["effective_clusters"] == 0.0


def test_plots_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(300, 8)).astype(np.float32)
    feats[:, 0] *= 5  # the first axis must come out first
    coords, explained = plots.pca_2d(feats)
    assert coords.shape == (300, 2) and explained[0] > explained[1] > 0
    assert np.corrcoef(coords[:, 0], feats[:, 0])[0, 1] > 0.99  # deterministic sign
    domains = rng.integers(0, 3, 300)
    assign = rng.integers(0, 5, 300)
    fig = plots.projection_figure(coords, domains, ["a", "b", "c"], "b", np.arange(0, 300, 7), assignments=assign,
                                  scores=np.array([0, 3, 9, 0, 1.0]), title="t", footer="f")
    _assert_png(plots.save_figure_atomic(fig, tmp_path / "p.png"))
    (domain_ax,) = [ax for ax in fig.axes if ax.get_title().startswith("Pool by domain")]
    legend_texts = [t.get_text() for t in domain_ax.get_legend().get_texts()]
    assert any(t.startswith("b (client)") for t in legend_texts)
    fig = plots.composition_figure([1, 5, 0], [100, 10, 50], ["a", "b", "c"], "b", title="t")
    _assert_png(plots.save_figure_atomic(fig, tmp_path / "c.png"))


def test_chunked_assignment_is_identical(monkeypatch):
    """The progress-bar path must not change which cluster any pool sample falls in, nor its distance."""
    import faiss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3 * 4096 + 7, 16)).astype(np.float32)
    c = rng.normal(size=(24, 16)).astype(np.float32)
    old = faiss.cvar.distance_compute_blas_threshold
    monkeypatch.setattr(compress_mod, "ASSIGN_CHUNK_BLOCKS", 1)
    try:
        faiss.cvar.distance_compute_blas_threshold = 20  # all rows on the BLAS path, as on a large pool
        chunks = compress_mod._assignment_chunks(len(x))
        assert chunks[0] == (0, 4096) and chunks[-1][1] == len(x) and len(chunks) == 3  # short tail folded in
        want = compress_mod.nearest_centroid(x, c, use_gpu=False)
        got = compress_mod.nearest_centroid_chunked(x, c)
    finally:
        faiss.cvar.distance_compute_blas_threshold = old
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])

    monkeypatch.setattr(compress_mod, "_show_progress", lambda n: True)  # spinner + bar, forced
    shown = compress_mod.compress(x[:5000], 8, seed=3, use_gpu=False)
    monkeypatch.setattr(compress_mod, "_show_progress", lambda n: False)
    plain = compress_mod.compress(x[:5000], 8, seed=3, use_gpu=False)
    np.testing.assert_array_equal(shown[0].centroids, plain[0].centroids)
    np.testing.assert_array_equal(shown[1].assignments, plain[1].assignments)
    np.testing.assert_array_equal(shown[1].sq_distances, plain[1].sq_distances)


def test_phi_progress_bar_changes_nothing():
    from ecos_pl.phi import TimmFeatures

    images = np.random.default_rng(0).integers(0, 256, size=(20, 32, 32, 3), dtype=np.uint8)
    with_bar = TimmFeatures("test_resnet", seed=0, batch_size=8, device="cpu", progress=True).transform(images)
    without = TimmFeatures("test_resnet", seed=0, batch_size=8, device="cpu", progress=False).transform(images)
    np.testing.assert_allclose(with_bar, without, rtol=1e-5, atol=1e-6)
