"""One run from a composed config: data module (which runs the protocol), scenario module, fit, test, results.

`train.py` and the benchmarks call `run_experiment`; nothing here parses the command line.
"""

from __future__ import annotations

import logging
import math
import re
import time

from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from ecos_pl.config_schema import check_against_data, validate_config
from ecos_pl.cpu_kernels import pin_cpu_kernels
from ecos_pl.interrupt import stage
from ecos_pl.scenarios import build_module

log = logging.getLogger(__name__)

def _instantiate_group(node) -> list:
    """Every entry of a config group that has a `_target_` (callbacks: {name: {...}}, or a single logger)."""
    if not node:
        return []
    if "_target_" in node:
        return [hydra.utils.instantiate(node)]
    return [hydra.utils.instantiate(v) for v in node.values() if v and "_target_" in v]


def make_trainer_factory(cfg: DictConfig):
    """Trainers for auxiliary fits (the simulated teacher): same hardware settings, no logger, no checkpoints."""

    def make_trainer(label: str = "", **overrides) -> pl.Trainer:
        stage(f"training {label or 'an auxiliary model'}")
        # single device: under DDP rank zero trains the teacher before the other ranks start, and they find it cached
        bars = [c for c in _instantiate_group(cfg.get("callbacks")) if isinstance(c, pl.callbacks.ProgressBar)]
        _label_bars(bars, label)
        kwargs = {"logger": False, "enable_checkpointing": False, "check_val_every_n_epoch": None,
                  "devices": 1, "strategy": "auto", "num_nodes": 1, "callbacks": bars, **overrides}
        return hydra.utils.instantiate(cfg.trainer, **kwargs)

    return make_trainer


def _label_bars(callbacks: list, label: str, predict_label: str | None = None) -> None:
    """Name the fit on the progress bar (`callbacks.progress_bar`, rich or plain): teacher, student, φ extraction."""
    for c in callbacks:
        if isinstance(c, pl.callbacks.ProgressBar) and hasattr(c, "predict_label"):
            c.label = label
            if predict_label:
                c.predict_label = predict_label


def _trainer_callbacks(cfg: DictConfig, loggers: list) -> list:
    """The configured callbacks; a learning-rate monitor only when there is a logger to send it to."""
    callbacks = _instantiate_group(cfg.get("callbacks"))
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.LearningRateMonitor)]
    return callbacks


def loggable_config(cfg: DictConfig) -> dict:
    """The config as loggers should record it: interpolations resolved, and no key that only copies another.

    `datamodule.budget: ${budget}` and the like are wiring; logging them would show every
    setting twice. Keys that do not resolve outside Hydra's app (`${hydra:...}`) stay as written.
    """
    def walk(node):
        out = {}
        for key in node.keys():
            if OmegaConf.is_interpolation(node, key) and _PLAIN_REFERENCE.fullmatch(str(node._get_node(key)._value())):
                continue
            value = node._get_node(key)
            if isinstance(value, DictConfig):
                out[key] = walk(value)
                continue
            try:
                out[key] = OmegaConf.to_container(OmegaConf.create({"v": node[key]}), resolve=True)["v"]
            except Exception:  # noqa: BLE001 - an interpolation only Hydra's app can resolve
                out[key] = str(value._value())
        return out

    return walk(cfg)


_PLAIN_REFERENCE = re.compile(r"\$\{[A-Za-z_][\w.]*\}")


def evaluate_student(cfg: DictConfig) -> dict:
    """A saved student (`ckpt_path=<run>/student.safetensors`) on the client's test split of the configured data and seed."""
    from ecos_pl.protocol.errors import ECOSInputError
    from ecos_pl.scenarios.compression import evaluate_accuracy
    from ecos_pl.scenarios.teacher import load_classifier

    validate_config(cfg)
    check_backbones(cfg)
    if not cfg.get("ckpt_path"):
        raise ECOSInputError("ckpt_path must name a student file, e.g. ckpt_path=outputs/<run>/student.safetensors.")
    datamodule = hydra.utils.instantiate(cfg.datamodule)
    with _pixel_limit(cfg):
        data = datamodule.load_data()
    model = load_classifier(cfg.ckpt_path, cfg.backbone.student, data.num_classes, cfg.backbone.get("input_size"), param="ckpt_path")
    accuracy = evaluate_accuracy(model, datamodule.test_dataloader(), data.num_classes)
    return {"data": cfg.data.name, "seed": int(cfg.seed), "student": str(cfg.ckpt_path), "n_client_test": len(data.client_test),
            "client_test_acc": accuracy}


def _write_outputs(cfg: DictConfig, trainer: pl.Trainer, datamodule, module, data) -> dict:
    """proxy_set.csv and the student (safetensors, ONNX) in the run's folder, on rank zero, and as W&B artifacts."""
    folder = cfg.trainer.get("default_root_dir")
    if not cfg.get("save_outputs", True) or not folder or not trainer.is_global_zero:
        return {}
    from ecos_pl.outputs import save_student, write_proxy_set_csv

    folder = Path(folder)
    written = {"proxy_set_csv": str(write_proxy_set_csv(datamodule, folder / "proxy_set.csv"))}
    meta = {"scenario": cfg.scenario.name, "data": cfg.data.name, "seed": int(cfg.seed),
            "image_size": int(data.client_test.images.shape[1]), "proxy_set_sha1": datamodule.report["proxy_set_sha1"]}
    written.update({f"student_{kind}": path for kind, path in save_student(module.model, folder, meta).items()})
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            import wandb

            artifact = wandb.Artifact(f"ecos-{cfg.scenario.name}-seed{cfg.seed}", type="model", metadata=meta)
            for path in written.values():
                artifact.add_file(path)
            logger.experiment.log_artifact(artifact)
    return written


def close_loggers() -> None:
    """Finish the W&B run, so that the next job of a sweep starts its own (the template's `close_loggers`)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def training_steps(cfg: DictConfig, world_size: int = 1) -> int | None:
    """Optimizer steps when `scenario.train_length=budget`: `epochs` passes over a budget-sized set, for every sampler.

    Comparing samplers at equal epochs gives `full` (the whole pool) about |Q|/B
    times the optimizer steps of a proxy set; at equal steps every sampler gets
    the same training compute and differs only in what it trains on.
    None (`train_length=epochs`) keeps `trainer.max_epochs` over each sampler's own set.
    """
    mode = cfg.scenario.get("train_length", "epochs")
    if mode not in ("budget", "epochs"):
        raise ValueError(f"scenario.train_length must be 'budget' or 'epochs', got {mode!r}.")
    if mode == "epochs":
        return None
    batches = math.ceil(int(cfg.budget) / (int(cfg.datamodule.batch_size) * max(1, world_size)))
    return int(cfg.scenario.epochs) * batches


def run_experiment(cfg: DictConfig, *, validated: bool = False) -> dict:
    """One job: its W&B run is finished when it ends, so each job of a sweep (`-m seed=1,2`) logs into its own.
    `validated`: the caller has run `validate_config` on this config already (train.py, before its heavy imports)."""
    try:
        with _pixel_limit(cfg):
            return _run(cfg, validated)
    finally:
        close_loggers()


def _pixel_limit(cfg: DictConfig):
    """`data.max_image_pixels` for every image file this run decodes (`ecos_pl.data.images.pixel_limit`)."""
    from ecos_pl.data.images import MAX_IMAGE_PIXELS, pixel_limit

    return pixel_limit(OmegaConf.select(cfg, "data.max_image_pixels", default=MAX_IMAGE_PIXELS), "data.max_image_pixels")


def check_backbones(cfg: DictConfig) -> None:
    """`backbone.teacher` and `backbone.student` name timm models (a tag, `resnet18.a1_in1k`, is allowed)."""
    import difflib

    import timm

    from ecos_pl.protocol.errors import ECOSInputError

    for key in ("backbone.teacher", "backbone.student"):
        name = OmegaConf.select(cfg, key)
        if name is None or (isinstance(name, str) and timm.is_model(name)):
            continue
        close = difflib.get_close_matches(str(name), timm.list_models(), n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise ECOSInputError(f"{key}={name!r} is not a timm model name{hint}; any name of timm.list_models() works.")


def probe_trainer(cfg: DictConfig) -> pl.Trainer:
    """The configured trainer, built once before any data: an accelerator this machine lacks, a device count it
    cannot give, a strategy or precision Lightning does not know, are one sentence naming the trainer's keys."""
    from ecos_pl.bad_input import one_line
    from ecos_pl.protocol.errors import ECOSInputError

    try:
        return hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                                       default_root_dir=None)  # a probe writes nothing (and needs no Hydra app to resolve it)
    except Exception as err:  # noqa: BLE001 - Lightning says what is wrong (MisconfigurationException, ValueError, ImportError)
        cause = err
        while cause.__cause__ is not None:  # hydra's instantiate wraps the constructor's error
            cause = cause.__cause__
        keys = ", ".join(f"trainer.{k}={OmegaConf.select(cfg, f'trainer.{k}')}" for k in ("accelerator", "devices", "strategy", "precision")
                         if OmegaConf.select(cfg, f"trainer.{k}") is not None)
        raise ECOSInputError(f"the trainer cannot run here ({keys}): {one_line(cause).rstrip('.')}.") from None


def _run(cfg: DictConfig, validated: bool = False) -> dict:
    if not validated:
        validate_config(cfg)  # types and ranges, before anything is built
    pin_cpu_kernels(cfg.get("cpu_kernels", "native"))  # before torch's first CPU operation in a fresh process
    check_backbones(cfg)
    world_size = probe_trainer(cfg).world_size  # the hardware, before any data are built
    pl.seed_everything(cfg.seed, workers=True)
    stage("loading the data")
    datamodule = hydra.utils.instantiate(cfg.datamodule)
    datamodule.prepare_data()
    data = datamodule.load_data()  # the protocol itself runs in setup(), inside fit, once the ranks exist
    sampler = datamodule.sampler
    check_against_data(cfg, len(data.pool), uses_budget=sampler.uses_budget, uses_centroids=hasattr(sampler, "n_centroids"))
    datamodule.pipeline.check_privacy_budget()  # before the teacher trains and before the client releases anything
    make_trainer = make_trainer_factory(cfg)
    stage("building the scenario")
    module, extra = build_module(cfg, datamodule, make_trainer)

    loggers = _instantiate_group(cfg.get("logger"))
    callbacks = _trainer_callbacks(cfg, loggers)
    _label_bars(callbacks, f"{cfg.scenario.name}: {cfg.backbone.student}", f"φ of {len(data.pool):,} pool images")
    # equal compute for every sampler, whatever the size of its training set: a step budget instead of epochs
    steps = training_steps(cfg, world_size)
    limits = {} if steps is None else {"max_steps": steps, "max_epochs": -1}
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, **limits)
    # the pool's φ features, extracted on every device of this trainer (DDP: the processes start here, once)
    # and cached on disk; setup(), inside fit, opens them. Nothing runs when they are cached or not needed.
    stage("extracting the pool's features")
    datamodule.predict_pool_features(trainer)
    pl.seed_everything(cfg.seed, workers=True)
    stage(f"training the student ({cfg.scenario.name}; the protocol runs at its start)")
    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))  # ckpt_path: resume a fit
    train_seconds = time.perf_counter() - start
    # the validation split (what benchmarks choose settings by), then the client's test split, once
    stage("testing the student")
    validated = trainer.validate(module, datamodule=datamodule, verbose=False) if data.client_val is not None else None
    tested = trainer.test(module, datamodule=datamodule, verbose=False)
    stage("writing the student and the proxy set")
    extra["outputs"] = _write_outputs(cfg, trainer, datamodule, module, data)

    report = datamodule.report
    results = {
        "scenario": cfg.scenario.name,
        "sampler": datamodule.selection.sampler,
        "data": cfg.data.name,
        "client_domain": data.client_domain,
        "seed": int(cfg.seed),
        "budget": sampler.given_budget(int(cfg.budget)),
        "client_test_acc": float(tested[0]["test/acc"]),
        "client_val_acc": float(validated[0]["val/acc"]) if validated else None,
        "teacher_test_acc": extra.pop("teacher_test_acc", None),
        "train_steps": int(trainer.global_step),
        "n_trained": report.get("n_trained", report["n_selected"]),
        "world_size": trainer.world_size,
        # the protocol's report and the labeller's fields, as they name them (nothing is dropped by a key list)
        **{k: _finite_or_none(v) for k, v in report.items()},
        "timings": {**report["timings"], "train": train_seconds},
        **{k: v for c in callbacks for k, v in getattr(c, "outputs", {}).items()},  # callbacks.SamplingDiagnostics
        **extra,
    }
    for logger in trainer.loggers:
        logger.log_hyperparams(loggable_config(cfg))
        logger.log_metrics({f"result/{k}": v for k, v in _flat_numbers(results).items()})
        logger.save()  # trainer.test has finalized them: CSVLogger writes its file only on save()
    return results


def _finite_or_none(v):
    """JSON has no infinity: an unbounded ε (a release without noise) is written as null."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _flat_numbers(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_numbers(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and math.isfinite(v):
            out[f"{prefix}{k}"] = v
    return out


def _privacy_text(privacy: dict | None) -> str:
    if not privacy:
        return "nothing released"
    if privacy["mechanism"] == "none":
        return "exact counts (no DP guarantee)"
    delta = f", δ = {privacy['delta']:g}" if privacy["delta"] else ""
    return f"{privacy['mechanism']}, ε = {privacy['epsilon']:g}{delta}, σ = {privacy['noise_sigma']:.3g}"


def results_table(results: dict):
    """A rich table of the numbers a reader looks for first."""
    from rich.table import Table

    table = Table(title=f"ECOS · {results['scenario']} · {results['data']} · sampler={results['sampler']} · seed={results['seed']}")
    table.add_column("quantity")
    table.add_column("value", justify="right")

    def fmt(v):
        if v is None:
            return "—"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    rows = [
        ("client test accuracy", results["client_test_acc"]),
        ("client validation accuracy", results["client_val_acc"]),
        ("teacher test accuracy", results["teacher_test_acc"]),
        ("proxy set size / budget", f"{results['n_selected']} / {fmt(results['budget'])}"),
        ("in-domain fraction (pool base rate)", f"{fmt(results['in_domain_fraction'])} ({results['pool_in_domain_fraction']:.4f})"),
        ("proxy set by domain", " · ".join(f"{d} {n}" for d, n in results["composition_by_domain"].items() if n) or "—"),
        ("centroids R", results["n_centroids"]),
        ("bytes down / up", f"{results['bytes_down']} / {results['bytes_up']}"),
        ("client scoring multiply-adds", results["client_score_macs"]),
        ("scores' privacy", _privacy_text(results.get("score_privacy"))),
    ]
    rows += [(name, results[key]) for key, name in (
        ("labels_bought", "labels bought (annotators)"),
        ("labels_none", "labels \"none\" (dropped)"),
        ("pseudo_label_acc", "pseudo-label accuracy (vs pool truth)"),
        ("labels_dropped", "pseudo-labels dropped (under threshold)"),
        ("label_bytes_down", "label round bytes down"),
        ("label_bytes_up", "label round bytes up"),
        ("exchange_epsilon", "ε of the whole exchange (at label_delta)"),
        ("n_unlabelled", "unlabelled pool samples (FixMatch)"),
        ("unlabelled_in_domain_fraction", "unlabelled in-domain fraction"),
    ) if key in results]
    rows += [("training samples / optimizer steps", f"{results['n_trained']} / {results['train_steps']}")]
    rows += [(f"time: {k} (s)", float(v)) for k, v in results["timings"].items()]
    for name, value in rows:
        table.add_row(name, fmt(value))
    return table
